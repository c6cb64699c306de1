//! The read-back verification against a medium that garbles a byte after it
//! was written: the write path's own fault seam (`prepare::fault`, debug
//! builds) flips one byte in the slot file behind its back, and the prepare
//! must fail at the read-back with nothing recorded or armed. In a test binary
//! of its own: the seam is process-wide.
#![cfg(debug_assertions)]

mod common;

use agent::prepare::{fault, prepare_with, PrepareError, PrepareRequest, Tls};
use agent::progress::Progress;
use bootctl::record::SlotState;
use common::server::Server;
use common::{bundle, quick_retry, synthetic_image, Node};
use std::sync::atomic::{AtomicBool, Ordering};

const CHUNK: usize = 64 << 10;
const IMAGE: usize = 10 * CHUNK + 12_345;

#[test]
fn a_byte_garbled_after_it_was_written_fails_the_read_back() {
    let node = Node::new(1 << 20);
    let b = bundle(synthetic_image(IMAGE, 11), CHUNK, "2");
    let server = Server::start();
    server.put("/os-2.img.zst", b.zst.clone());
    server.put("/os-2.manifest.json", b.meta.manifest.clone().into_bytes());
    let req = PrepareRequest {
        url: server.url("/os-2.img.zst"),
        digest: b.meta.digest.clone(),
        version: Some("2".into()),
        tls: Tls::default(),
        allow_http: true,
    };
    let run = || {
        prepare_with(
            &node.cfg,
            &req,
            &Progress::default(),
            &AtomicBool::new(false),
            &quick_retry(),
        )
    };
    // A byte in the middle of chunk 5: written, verified as streamed, then
    // garbled on the medium before the read-back reaches it.
    let at = 5 * CHUNK as u64 + 777;
    fault::FLIP_AFTER_WRITE.store(at, Ordering::Relaxed);
    let err = run().expect_err("a garbled slot must not verify");
    assert_eq!(
        fault::FLIP_AFTER_WRITE.load(Ordering::Relaxed),
        u64::MAX,
        "the seam did not fire: the test proved nothing"
    );
    assert!(matches!(err, PrepareError::VerifyFailed { .. }), "{err}");
    assert!(err.to_string().contains("reads back as"), "{err}");
    assert_eq!(node.slot_b()[at as usize], b.image[at as usize] ^ 0x40);
    node.assert_untouched();

    // The same request on a medium that keeps what it is given lands.
    let done = run().unwrap();
    assert_eq!(done.digest, b.meta.digest);
    assert_eq!(node.record_b().state, SlotState::Written);
    assert!(node.slot_b()[..IMAGE] == b.image[..]);
}
