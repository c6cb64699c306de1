//! Delta downloads (docs/bundle.md, "Delta") against file-backed slots and
//! the loopback HTTP server (common/server.rs, which honours
//! `Range: bytes=A-B` and can play a server without Range support): the
//! chunks the running slot (A) or the target slot (B) already hold are not
//! downloaded, the others are fetched by Range, and the slot ends up
//! byte-identical to what a full download writes.

mod common;

use agent::prepare::{prepare_with, PrepareError, PrepareRequest, Prepared};
use agent::progress::Progress;
use bootctl::record::{self, SlotState};
use bootctl::Slot;
use common::server::{Fault, Served, Server};
use common::{bundle, quick_retry, request, synthetic_chunk, synthetic_image, Bundle, Node, Rng};
use std::sync::atomic::AtomicBool;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 48;
const IMAGE: usize = CHUNKS * CHUNK + 777;
/// Slots are larger than the image: bytes past it are left alone.
const SLOT: usize = IMAGE + 3 * CHUNK;
const IMG: &str = "/os/os-2.img.zst";
const MANIFEST: &str = "/os/os-2.manifest.json";
/// Chunks of the new image that no slot holds.
const CHANGED: [usize; 3] = [5, 22, 40];

/// The running image (v1) and the new one (v2): v2 is v1 with the
/// [`CHANGED`] chunks rewritten and chunk 30 moved to 31.
fn images() -> (Vec<u8>, Bundle) {
    let v1 = synthetic_image(IMAGE, 1);
    let mut v2 = v1.clone();
    let mut rng = Rng::new(2);
    for k in CHANGED {
        v2[k * CHUNK..(k + 1) * CHUNK].copy_from_slice(&synthetic_chunk(&mut rng, CHUNK));
    }
    v2.copy_within(30 * CHUNK..31 * CHUNK, 31 * CHUNK);
    (v1, bundle(v2, CHUNK, "2"))
}

fn serve(b: &Bundle) -> Server {
    let server = Server::start();
    server.put(IMG, b.zst.clone());
    server.put(MANIFEST, b.meta.manifest.clone().into_bytes());
    server
}

/// A node running `v1` in slot A, slot B holding `inactive` then `0xEE` up
/// to [`SLOT`].
fn node(v1: &[u8], inactive: &[u8]) -> Node {
    let mut b = inactive.to_vec();
    b.resize(SLOT, 0xEE);
    let mut a = v1.to_vec();
    a.resize(SLOT, 0);
    Node::with_images(a, &b)
}

fn run(node: &Node, req: &PrepareRequest) -> (Result<Prepared, PrepareError>, Progress) {
    let progress = Progress::default();
    let result = prepare_with(
        &node.cfg,
        req,
        &progress,
        &AtomicBool::new(false),
        &quick_retry(),
    );
    (result, progress)
}

/// Slot B holds exactly the image, and nothing past it was written.
fn assert_holds(node: &Node, b: &Bundle) {
    let slot = node.slot_b();
    assert!(slot[..IMAGE] == b.image[..], "slot B holds the new image");
    assert!(slot[IMAGE..].iter().all(|&x| x == 0xEE), "past the image");
    assert_eq!(node.record_b().digest, b.meta.digest);
    node.assert_not_armed();
}

/// Serves `b` and upgrades `node` to it, which must succeed with slot B
/// holding `b`; the server, for what it sent.
fn upgrade(node: &Node, b: &Bundle) -> Server {
    let server = serve(b);
    run(node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap();
    assert_holds(node, b);
    server
}

/// Compressed extent of chunk k's frame.
fn frame(b: &Bundle, k: usize) -> (u64, u64) {
    let (z, n) = b.meta.frames[k];
    (z, z + n)
}

/// Whether some ranged response sent all of chunk k's frame.
fn fetched(b: &Bundle, served: &[Served], k: usize) -> bool {
    let (start, end) = frame(b, k);
    served
        .iter()
        .any(|s| s.status == 206 && s.start <= start && s.start + s.sent >= end)
}

#[test]
fn a_delta_upgrade_lands_byte_identical_to_a_full_one() {
    let (v1, b) = images();
    // Slot B holds the start of v1: chunks 0-9 but 5 are in place already.
    let delta_node = node(&v1, &v1[..10 * CHUNK]);
    let server = serve(&b);
    let (result, progress) = run(&delta_node, &request(server.url(IMG), &b.meta.digest));
    result.unwrap();
    assert_holds(&delta_node, &b);
    let served = server.served(IMG);
    let sent = server.sent(IMG);
    assert!(
        served.iter().all(|s| s.status == 206 && s.end.is_some()),
        "only bounded Range requests: {served:?}"
    );
    assert!(served.len() <= CHANGED.len(), "{served:?}");
    for k in CHANGED {
        assert!(fetched(&b, &served, k), "chunk {k} not fetched: {served:?}");
    }
    let changed: u64 = CHANGED
        .iter()
        .map(|&k| frame(&b, k).1 - frame(&b, k).0)
        .sum();
    assert!(
        sent >= changed && sent < b.meta.compressed_size / 3,
        "{sent} bytes sent for {changed} bytes of changed frames (full: {})",
        b.meta.compressed_size
    );
    assert_eq!(progress.snapshot().fetched, sent);

    // The same upgrade without the delta: the same bytes in the slot.
    let mut full_node = node(&v1, &v1[..10 * CHUNK]);
    full_node.cfg.delta = false;
    let server = serve(&b);
    run(&full_node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap();
    assert_eq!(server.sent(IMG), b.meta.compressed_size);
    assert!(
        full_node.slot_b() == delta_node.slot_b(),
        "delta and full differ"
    );
}

#[test]
fn a_corrupt_local_chunk_is_fetched_instead_of_copied() {
    let (v1, b) = images();
    // Chunk 12 of the running slot has rotted: its digest no longer matches.
    let mut rotten = v1.clone();
    rotten[12 * CHUNK + 100] ^= 1;
    let node = node(&rotten, &[]);
    let server = upgrade(&node, &b);
    let served = server.served(IMG);
    assert!(fetched(&b, &served, 12), "chunk 12 not fetched: {served:?}");
    assert!(server.sent(IMG) < b.meta.compressed_size / 2);
}

#[test]
fn a_local_chunk_that_changes_after_the_scan_is_fetched_instead_of_copied() {
    let (v1, b) = images();
    let node = node(&v1, &[]);
    // The scan finds chunk 17 in slot A; then a byte of it changes (a disk
    // that rots, a stale index): the copy's own hash must catch it.
    *agent::prepare::delta_fault::FLIP_AFTER_SCAN.lock().unwrap() =
        Some((node.cfg.root_a.clone(), 17 * CHUNK as u64 + 5));
    let server = serve(&b);
    run(&node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap();
    assert!(
        agent::prepare::delta_fault::FLIP_AFTER_SCAN
            .lock()
            .unwrap()
            .is_none(),
        "the fault did not fire"
    );
    let slot = node.slot_b();
    assert!(slot[..IMAGE] == b.image[..], "slot B holds the new image");
    assert_eq!(node.record_b().digest, b.meta.digest);
    let served = server.served(IMG);
    assert!(fetched(&b, &served, 17), "chunk 17 not fetched: {served:?}");
}

#[test]
fn a_server_without_range_support_falls_back_to_a_full_download() {
    let (v1, b) = images();
    let node = node(&v1, &[]);
    let server = serve(&b);
    server.fault_always(IMG, Fault::IgnoreRange);
    run(&node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap();
    assert_holds(&node, &b);
    let served = server.served(IMG);
    assert_eq!(
        served
            .iter()
            .map(|s| (s.status, s.sent))
            .collect::<Vec<_>>(),
        vec![(200, b.meta.compressed_size)],
        "one whole download"
    );
}

#[test]
fn a_restart_mid_delta_continues_from_its_checkpoint() {
    let (v1, b) = images();
    let node = node(&v1, &[]);
    let server = serve(&b);
    // The first run (chunk 5) arrives; the second (chunk 22) breaks half-way
    // and then the server answers 503 until the prepare gives up, with its
    // checkpoint saved, as an agent stopped mid-delta would have it.
    let (z, end) = frame(&b, 22);
    server.fault(IMG, Fault::Pass);
    server.fault(IMG, Fault::DropAfter((end - z) / 2));
    server.fault(IMG, Fault::Status(503));
    server.fault(IMG, Fault::Status(503));
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    let err = result.expect_err("the first prepare gives up");
    assert!(
        matches!(err, PrepareError::Http { status: 503, .. }),
        "{err}"
    );
    let checkpoint = node.cfg.state_dir.join("os-agent/resume");
    let saved = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(saved.contains("\nchunk=22\n"), "{saved}");
    let before = server.served(IMG).len();

    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    result.unwrap();
    assert_holds(&node, &b);
    let again = &server.served(IMG)[before..];
    assert_eq!(
        (again[0].status, again[0].start),
        (206, z),
        "continued at chunk 22: {again:?}"
    );
    assert!(!fetched(&b, again, 5), "chunk 5 fetched again: {again:?}");
    let changed: u64 = CHANGED
        .iter()
        .map(|&k| frame(&b, k).1 - frame(&b, k).0)
        .sum();
    let sent = server.sent(IMG);
    assert!(
        sent <= changed + (end - z) / 2 + b.meta.compressed_size / 10,
        "{sent} bytes sent in all for {changed} bytes of changed frames"
    );
    assert!(!checkpoint.exists(), "the checkpoint outlived the download");
}

#[test]
fn a_file_pinned_by_its_sha256_is_downloaded_whole() {
    // The sha256 covers the compressed file: skipping frames would leave it
    // unchecked (docs/decisions.md, "Delta downloads").
    let (v1, b) = images();
    let node = node(&v1, &[]);
    let server = serve(&b);
    let sha = oci::digest::sha256(&b.zst);
    run(&node, &request(server.url(IMG), &sha)).0.unwrap();
    assert_holds(&node, &b);
    assert_eq!(server.sent(IMG), b.meta.compressed_size);
    assert_eq!(server.served(IMG).len(), 1);
}

/// Records slot A as holding `v1` and saves v1's manifest as its chunk
/// index, as the agent does once it has verified an image in a slot.
fn record_running(node: &Node, v1: &[u8]) {
    let b1 = bundle(v1.to_vec(), CHUNK, "1");
    let m = wire::manifest::Manifest::parse(&b1.meta.manifest).unwrap();
    let rec = m.slot_record(Slot::A, SlotState::Good, 1);
    record::write(&node.cfg.state_dir, &rec).unwrap();
    agent::prepare::save_index(&node.cfg.state_dir, Slot::A, &m);
}

fn scanned(node: &Node) -> bool {
    let scanned = agent::prepare::delta_fault::SCANNED.lock().unwrap();
    scanned.contains(&node.cfg.root_a)
}

#[test]
fn the_running_slot_is_looked_up_in_its_saved_index_not_read() {
    let (v1, b) = images();
    let node = node_with_running_record(&v1);
    let server = upgrade(&node, &b);
    assert!(
        !scanned(&node),
        "slot A was read although its index matches its record"
    );
    let served = server.served(IMG);
    for k in CHANGED {
        assert!(fetched(&b, &served, k), "chunk {k} not fetched: {served:?}");
    }
    assert!(server.sent(IMG) < b.meta.compressed_size / 3, "{served:?}");

    // Without the index, the same upgrade reads slot A to find its chunks.
    let node = node_with_running_record(&v1);
    std::fs::remove_file(agent::prepare::index_path(&node.cfg.state_dir, Slot::A)).unwrap();
    upgrade(&node, &b);
    assert!(scanned(&node), "slot A was not scanned without an index");
}

fn node_with_running_record(v1: &[u8]) -> Node {
    let node = node(v1, &[]);
    record_running(&node, v1);
    node
}

#[test]
fn an_index_that_no_longer_matches_the_slot_costs_a_fetch_not_a_wrong_byte() {
    let (v1, b) = images();
    // The index says chunk 12 is in slot A, but its bytes have rotted since.
    let mut rotten = v1.clone();
    rotten[12 * CHUNK + 100] ^= 1;
    let node = node(&rotten, &[]);
    record_running(&node, &v1);
    let server = upgrade(&node, &b);
    assert!(!scanned(&node));
    let served = server.served(IMG);
    assert!(fetched(&b, &served, 12), "chunk 12 not fetched: {served:?}");

    // An index of another image than the record names is not used: the
    // slot is scanned.
    let node = node_with_running_record(&v1);
    let other = bundle(synthetic_image(IMAGE, 5), CHUNK, "1");
    let m = wire::manifest::Manifest::parse(&other.meta.manifest).unwrap();
    agent::prepare::save_index(&node.cfg.state_dir, Slot::A, &m);
    upgrade(&node, &b);
    assert!(scanned(&node), "an index of another image was used");
}

#[test]
fn a_prepare_saves_the_index_of_what_it_verified_and_drops_it_before_rewriting() {
    let (v1, b) = images();
    let node = node(&v1, &[]);
    let index = agent::prepare::index_path(&node.cfg.state_dir, Slot::B);
    let server = serve(&b);
    run(&node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap();
    let saved = wire::manifest::Manifest::parse(&std::fs::read_to_string(&index).unwrap()).unwrap();
    assert_eq!(saved.image_digest.to_string(), b.meta.digest);
    assert_eq!(saved.chunks.len(), CHUNKS + 1);

    // Another image for slot B whose download fails: the slot was touched,
    // so its index is gone along with its record.
    let mut v3 = b.image.clone();
    v3[..CHUNK].copy_from_slice(&synthetic_chunk(&mut Rng::new(9), CHUNK));
    let other = bundle(v3, CHUNK, "3");
    let server = Server::start();
    server.put(MANIFEST, other.meta.manifest.clone().into_bytes());
    server.fault_always(IMG, Fault::Status(404));
    let mut req = request(server.url(IMG), &other.meta.digest);
    req.version = Some("3".into());
    assert!(run(&node, &req).0.is_err());
    assert!(
        !index.exists(),
        "the index of the image slot B no longer holds survived"
    );
    assert_eq!(node.record_b().digest, "");
}
