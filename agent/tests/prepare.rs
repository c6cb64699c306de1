//! The write path end to end against file-backed slots and a loopback HTTP
//! server with fault injection (common/server.rs). After every failure the
//! active slot is byte-for-byte unchanged, nothing is armed, slot B is not
//! recorded as holding an image, and the error names the cause.

mod common;

use agent::prepare::{prepare_with, PrepareError, PrepareRequest, Prepared};
use agent::progress::Progress;
use bootctl::record::SlotState;
use bootctl::Slot;
use common::server::{Fault, Server};
use common::{
    bundle, manifest_naming, quick_retry, request, synthetic_image, verity_bundle, Bundle, Node,
};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const CHUNK: usize = 64 << 10;
const IMAGE: usize = 10 * CHUNK + 12_345;
const SLOT: u64 = 1 << 20;
const IMG: &str = "/os/os-2.img.zst";
const MANIFEST: &str = "/os/os-2.manifest.json";

fn serve(b: &Bundle, with_manifest: bool) -> Server {
    let server = Server::start();
    server.put(IMG, b.zst.clone());
    if with_manifest {
        server.put(MANIFEST, b.meta.manifest.clone().into_bytes());
    }
    server
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

/// Runs a prepare that must fail; checks nothing was harmed and returns the message.
fn fails(node: &Node, req: &PrepareRequest) -> (PrepareError, String) {
    let (result, _) = run(node, req);
    let err = result.expect_err("prepare should fail");
    node.assert_untouched();
    let msg = err.to_string();
    (err, msg)
}

fn assert_landed(node: &Node, b: &Bundle, done: Prepared) {
    assert_eq!(
        done,
        Prepared {
            slot: Slot::B,
            version: "2".into(),
            digest: b.meta.digest.clone(),
            size: IMAGE as u64,
            source: String::new(),
            verity: None,
        }
    );
    let slot = node.slot_b();
    assert!(slot[..IMAGE] == b.image[..], "slot B holds the image");
    assert!(
        slot[IMAGE..].iter().all(|&x| x == 0xEE),
        "bytes past the image untouched"
    );
    let rec = node.record_b();
    assert_eq!(
        (
            rec.state,
            rec.version.as_str(),
            rec.digest.as_str(),
            rec.size
        ),
        (
            SlotState::Written,
            "2",
            b.meta.digest.as_str(),
            IMAGE as u64
        )
    );
    assert!(rec.written_at > 1_600_000_000);
    // Preparing never arms: the boot state and slot A are as before.
    node.assert_not_armed();
}

fn image() -> Bundle {
    bundle(synthetic_image(IMAGE, 7), CHUNK, "2")
}

#[test]
fn a_good_image_lands_in_the_inactive_slot_with_its_manifest() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    let (result, progress) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_landed(&node, &b, result.unwrap());
    let p = progress.snapshot();
    assert_eq!(
        (p.bytes, p.total, p.fetched, p.percent),
        (
            IMAGE as u64,
            IMAGE as u64,
            b.meta.compressed_size,
            Some(100.0)
        )
    );
    assert_eq!(server.served(IMG).len(), 1);
}

#[test]
fn a_good_image_without_a_manifest_and_from_a_file_url() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, false);
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_landed(&node, &b, result.unwrap());
    assert_eq!(server.served(MANIFEST)[0].status, 404);

    let node = Node::new(SLOT);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("os-2.img.zst"), &b.zst).unwrap();
    std::fs::write(dir.path().join("os-2.manifest.json"), &b.meta.manifest).unwrap();
    let url = format!("file://{}/os-2.img.zst", dir.path().display());
    let (result, _) = run(
        &node,
        &PrepareRequest {
            allow_http: false,
            ..request(url, &b.meta.digest)
        },
    );
    assert_landed(&node, &b, result.unwrap());
}

/// A dropped connection resumes with a Range request at the frame of the
/// first chunk not yet verified: verified chunks are not fetched again.
fn resumes_after_a_drop(with_manifest: bool) {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, with_manifest);
    let cut = b.meta.frames[4].0 + b.meta.frames[4].1 / 2;
    server.fault(IMG, Fault::DropAfter(cut));
    let (result, progress) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_landed(&node, &b, result.unwrap());
    let served = server.served(IMG);
    let resume_at = b.meta.frame_start(cut);
    assert_eq!(resume_at, b.meta.frames[4].0);
    assert_eq!(
        served
            .iter()
            .map(|s| (s.start, s.status, s.sent))
            .collect::<Vec<_>>(),
        vec![
            (0, 200, cut),
            (resume_at, 206, b.meta.compressed_size - resume_at)
        ]
    );
    assert_eq!(
        progress.snapshot().fetched,
        b.meta.compressed_size + cut - resume_at
    );
}

#[test]
fn a_dropped_connection_resumes_at_the_last_verified_chunk() {
    resumes_after_a_drop(true);
}

#[test]
fn without_a_manifest_a_dropped_connection_resumes_at_the_current_frame() {
    resumes_after_a_drop(false);
}

#[test]
fn repeated_drops_still_finish_while_each_attempt_makes_progress() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    // More drops than retries, but every attempt verifies at least one chunk.
    server.fault_always(IMG, Fault::DropAfter(2 * b.meta.frames[0].1 + 100));
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_landed(&node, &b, result.unwrap());
    assert!(server.served(IMG).len() > 3);
}

#[test]
fn a_server_that_stalls_once_is_resumed_and_one_that_keeps_stalling_is_reported() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    server.fault(
        IMG,
        Fault::StallAfter(b.meta.frames[2].0 + 10, Duration::from_secs(3)),
    );
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_landed(&node, &b, result.unwrap());
    assert_eq!(server.served(IMG)[1].start, b.meta.frames[2].0);

    let node = Node::new(SLOT);
    server.fault_always(IMG, Fault::StallAfter(100, Duration::from_secs(3)));
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::Stalled { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(msg.contains("stalled") && msg.contains(IMG), "{msg}");
}

#[test]
fn http_404_and_500_are_named() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    let (err, msg) = fails(
        &node,
        &request(server.url("/os/missing.img.zst"), &b.meta.digest),
    );
    assert!(
        matches!(err, PrepareError::NotFound { .. }) && msg.contains("missing.img.zst"),
        "{msg}"
    );

    server.fault_always(IMG, Fault::Status(500));
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::Http { status: 500, .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("HTTP 500") && msg.contains("injected"),
        "{msg}"
    );
    assert_eq!(server.served(IMG).len(), 3, "first attempt and two retries");
}

#[test]
fn a_wrong_digest_or_version_is_refused() {
    let (b, node) = (image(), Node::new(SLOT));
    let other = format!("blake3:{}", "0".repeat(64));
    let server = serve(&b, true);
    let (err, msg) = fails(&node, &request(server.url(IMG), &other));
    assert!(
        matches!(
            err,
            PrepareError::ManifestMismatch {
                field: "image_digest",
                ..
            }
        ),
        "{msg}"
    );
    assert_eq!(server.served(IMG).len(), 0, "nothing downloaded");
    let (err, _) = fails(
        &node,
        &PrepareRequest {
            version: Some("3".into()),
            ..request(server.url(IMG), &b.meta.digest)
        },
    );
    assert!(
        matches!(
            err,
            PrepareError::ManifestMismatch {
                field: "os_version",
                ..
            }
        ),
        "{err:?}"
    );

    let server = serve(&b, false);
    let (err, msg) = fails(&node, &request(server.url(IMG), &other));
    assert!(
        matches!(err, PrepareError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains(&b.meta.digest) && msg.contains(&other),
        "{msg}"
    );

    // The manifest agrees with the request but the server has other bytes.
    // A fresh node: slot B above already holds the image's chunks (written
    // before the digest was refused), and a delta would fetch none of them.
    let node = Node::new(SLOT);
    let evil = image_with_chunk_changed(&b, 3);
    let server = serve(&b, true);
    server.put(IMG, evil.zst);
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::ChunkMismatch { chunk: 3, .. }),
        "{msg}"
    );
    let (err, _) = fails(&node, &request("http://x/a.img.zst".into(), "sha1:00"));
    assert!(matches!(err, PrepareError::BadRequest { .. }));
}

/// The same image with one chunk's content changed; frame sizes may differ,
/// so the manifest is not reusable, which is the point.
/// KubeOS's `check_sum` is the sha256 of the file at the URL: it pins the
/// compressed stream, checked over all of it (across a resume), and the
/// record keeps `URL@sha256:…` so the proxy recognises the slot.
#[test]
fn a_sha256_of_the_file_pins_it_with_or_without_a_manifest() {
    for with_manifest in [true, false] {
        let (b, node) = (image(), Node::new(SLOT));
        let server = serve(&b, with_manifest);
        let sha = oci::digest::sha256(&b.zst);
        server.fault(IMG, Fault::DropAfter(b.meta.frames[3].0 + 10));
        let (result, _) = run(&node, &request(server.url(IMG), &sha));
        let done = result.unwrap();
        let source = format!("{}@{sha}", server.url(IMG));
        assert_eq!(done.source, source);
        assert_eq!(node.record_b().source, source);
        assert_landed(
            &node,
            &b,
            Prepared {
                source: String::new(),
                ..done
            },
        );
        assert_eq!(server.served(IMG).len(), 2, "one drop, one resume");
    }
}

#[test]
fn a_wrong_sha256_is_refused_at_the_end_of_the_stream() {
    for with_manifest in [true, false] {
        let (b, node) = (image(), Node::new(SLOT));
        let server = serve(&b, with_manifest);
        let wrong = oci::digest::sha256(b"another file");
        let (err, msg) = fails(&node, &request(server.url(IMG), &wrong));
        assert!(matches!(err, PrepareError::LayerMismatch { .. }), "{msg}");
        assert!(msg.contains(&wrong), "{msg}");
    }
}

fn image_with_chunk_changed(b: &Bundle, chunk: usize) -> Bundle {
    let mut image = b.image.clone();
    image[chunk * CHUNK + 100] ^= 0xFF;
    let evil = bundle(image, CHUNK, "2");
    assert_eq!(
        evil.zst.len(),
        b.zst.len(),
        "the flipped byte must not change the frame size"
    );
    evil
}

#[test]
fn a_truncated_stream_is_named() {
    let (b, node) = (image(), Node::new(SLOT));
    let cut = b.meta.frames[6].0 + 100;
    let server = serve(&b, true);
    server.put(IMG, b.zst[..cut as usize].to_vec());
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::BadManifest { .. }) && msg.contains("compressed_size"),
        "{msg}"
    );

    let server = serve(&b, false);
    server.put(IMG, b.zst[..cut as usize].to_vec());
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::Truncated { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(msg.contains("truncated"), "{msg}");
    // Each retry resumed at the frame the stream broke in.
    assert!(server.served(IMG)[1..]
        .iter()
        .all(|s| s.start == b.meta.frames[6].0));
}

#[test]
fn an_image_larger_than_the_slot_is_refused() {
    let b = image();
    let node = Node::new(IMAGE as u64 - 1);
    let server = serve(&b, true);
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::TooLarge { image: Some(_), .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("does not fit slot B") && msg.contains("root-b"),
        "{msg}"
    );
    assert!(
        node.slot_b().iter().all(|&x| x == 0xEE),
        "refused before writing"
    );

    let server = serve(&b, false);
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::TooLarge { image: None, .. }),
        "{err:?}"
    );
    assert!(msg.contains("larger than slot B"), "{msg}");
    assert_eq!(node.slot_b().len(), IMAGE - 1, "the slot file did not grow");
}

#[test]
fn a_corrupt_zstd_frame_is_named() {
    let b = image();
    let mut zst = b.zst.clone();
    let at = b.meta.frames[5].0 as usize;
    zst[at..at + 4].copy_from_slice(b"JUNK"); // the frame's magic number
    for with_manifest in [true, false] {
        let node = Node::new(SLOT);
        let server = serve(&b, with_manifest);
        server.put(IMG, zst.clone());
        let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
        assert!(matches!(err, PrepareError::Corrupt { .. }), "{err:?}");
        assert!(
            msg.contains("corrupt zstd") && msg.contains(&at.to_string()),
            "{msg}"
        );
        assert_eq!(server.served(IMG).len(), 1, "not retried");
    }
}

#[test]
fn a_full_disk_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let _mount = Tmpfs::mount(&mnt, "256k");
    let root_b = mnt.join("root-b");
    std::fs::File::create(&root_b)
        .unwrap()
        .set_len(SLOT)
        .unwrap(); // sparse: larger than the tmpfs
    let node = Node::with_slot_b(dir, root_b);
    let b = image();
    let server = serve(&b, true);
    let (err, msg) = fails(&node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(&err, PrepareError::Slot { op: "write", source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{err:?}"
    );
    assert!(
        msg.contains("slot B") && msg.contains("No space left"),
        "{msg}"
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn cancel_stops_between_chunks_and_leaves_the_slot_empty() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    server.fault_always(
        IMG,
        Fault::StallAfter(b.meta.frames[3].0, Duration::from_millis(300)),
    );
    let cancel = AtomicBool::new(false);
    let progress = Progress::default();
    let req = request(server.url(IMG), &b.meta.digest);
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        prepare_with(&node.cfg, &req, &progress, &cancel, &quick_retry()).unwrap_err()
    });
    assert!(
        matches!(err, PrepareError::Cancelled { slot: Slot::B }),
        "{err:?}"
    );
    node.assert_untouched();
}

#[test]
fn a_slot_that_grub_may_boot_is_not_written() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    let esp = bootctl::store::Esp::new(&node.cfg.esp);
    esp.update(|s| s.arm_trial(Slot::B, 3)).unwrap();
    let err = run(&node, &request(server.url(IMG), &b.meta.digest))
        .0
        .unwrap_err();
    assert!(
        matches!(err, PrepareError::SlotInUse { slot: Slot::B, .. })
            && err.to_string().contains("trial"),
        "{err}"
    );
    assert!(node.slot_b().iter().all(|&x| x == 0xEE));
    assert!(server.served(IMG).is_empty());
}

#[test]
fn plain_http_needs_allow_http() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, true);
    let (err, msg) = fails(
        &node,
        &PrepareRequest {
            allow_http: false,
            ..request(server.url(IMG), &b.meta.digest)
        },
    );
    assert!(
        matches!(err, PrepareError::PlainHttpRefused { .. }) && msg.contains("flag_safe"),
        "{msg}"
    );
}

/// The bytes of slot B's record file, `None` when there is none.
fn record_b_bytes(node: &Node) -> Option<Vec<u8>> {
    std::fs::read(bootctl::record::record_path(&node.cfg.state_dir, Slot::B)).ok()
}

#[test]
fn a_version_that_would_add_record_lines_is_refused_before_the_slot_is_touched() {
    let (b, node) = (image(), Node::new(SLOT));
    let server = serve(&b, false);
    let before = record_b_bytes(&node);
    for version in [
        "2\nconfirm=initramfs",
        "2\nstate=good",
        "2\r",
        "2\u{0}",
        "2\u{85}x",
    ] {
        let (err, msg) = fails(
            &node,
            &PrepareRequest {
                version: Some(version.into()),
                ..request(server.url(IMG), &b.meta.digest)
            },
        );
        assert!(
            matches!(err, PrepareError::BadRequest { .. }),
            "{version:?}: {err:?}"
        );
        assert!(msg.contains("control character"), "{msg}");
        assert_eq!(
            record_b_bytes(&node),
            before,
            "{version:?}: record B changed"
        );
    }
    assert_eq!(server.served(IMG).len(), 0, "nothing downloaded");
}

#[test]
fn a_manifest_version_that_would_add_record_lines_is_refused() {
    let node = Node::new(SLOT);
    // An unauthenticated manifest beside an image pinned by its BLAKE3: the
    // manifest's version would be recorded when the request names none.
    let b = common::bundle(synthetic_image(IMAGE, 7), CHUNK, "2\nstate=good");
    let server = serve(&b, true);
    let before = record_b_bytes(&node);
    let (err, msg) = fails(
        &node,
        &PrepareRequest {
            version: None,
            ..request(server.url(IMG), &b.meta.digest)
        },
    );
    assert!(matches!(err, PrepareError::BadManifest { .. }), "{err:?}");
    assert!(msg.contains("control character"), "{msg}");
    assert_eq!(record_b_bytes(&node), before);
    assert_eq!(server.served(IMG).len(), 0, "nothing downloaded");
}

/// A bundle big enough that a cut in the middle leaves many chunks on each side.
fn big_bundle(seed: u64) -> Bundle {
    bundle(synthetic_image(40 * CHUNK + 777, seed), CHUNK, "2")
}

fn resume_file(node: &Node) -> std::path::PathBuf {
    node.cfg.state_dir.join("os-agent/resume")
}

/// The first prepare gets 60 % of the file, then only 503s, and gives up.
fn fail_at_sixty_percent(node: &Node, server: &Server, b: &Bundle) -> u64 {
    let cut = b.zst.len() as u64 * 6 / 10;
    server.fault(IMG, Fault::DropAfter(cut));
    // quick_retry: two retries without progress, then it gives up.
    for _ in 0..2 {
        server.fault(IMG, Fault::Status(503));
    }
    let (err, _) = fails(node, &request(server.url(IMG), &b.meta.digest));
    assert!(
        matches!(err, PrepareError::Http { status: 503, .. }),
        "{err}"
    );
    assert!(resume_file(node).exists(), "no checkpoint saved");
    cut
}

#[test]
fn a_download_given_up_continues_in_the_next_prepare_from_its_saved_checkpoint() {
    let node = Node::new(4 << 20);
    let b = big_bundle(21);
    let server = serve(&b, true);
    let cut = fail_at_sixty_percent(&node, &server, &b);
    let before = server.served(IMG).len();

    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    let done = result.unwrap();
    assert_eq!(done.digest, b.meta.digest);
    assert!(node.slot_b()[..b.image.len()] == b.image[..]);
    let again = &server.served(IMG)[before..];
    assert_eq!(again[0].status, 206, "{again:?}");
    assert!(
        again[0].start > cut - 2 * CHUNK as u64 && again[0].start <= cut,
        "continued at {} of a cut at {cut}",
        again[0].start
    );
    let zst = b.zst.len() as u64;
    assert!(
        server.sent(IMG) <= zst * 12 / 10,
        "{} bytes sent for a {zst}-byte file",
        server.sent(IMG)
    );
    assert!(
        !resume_file(&node).exists(),
        "the checkpoint outlived the download"
    );
}

#[test]
fn a_huge_checkpoint_file_is_not_read_whole_and_the_download_starts_over() {
    let node = Node::new(4 << 20);
    let b = big_bundle(23);
    let server = serve(&b, true);
    // A corrupt PERSIST: the checkpoint is 64 GiB of zeros (sparse). Read
    // whole, it would exhaust memory; it is refused after its first bytes.
    std::fs::create_dir_all(resume_file(&node).parent().unwrap()).unwrap();
    std::fs::File::create(resume_file(&node))
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    assert_eq!(result.unwrap().digest, b.meta.digest);
    let served = server.served(IMG);
    assert_eq!((served[0].status, served[0].start), (200, 0), "{served:?}");
    assert!(!resume_file(&node).exists());
}

#[test]
fn a_file_replaced_at_the_same_url_is_downloaded_from_the_start() {
    let node = Node::new(4 << 20);
    let b = big_bundle(22);
    let server = serve(&b, true);
    fail_at_sixty_percent(&node, &server, &b);
    // The same URL serves the file again under a new ETag: what was written
    // may be of another file, so the saved checkpoint cannot be trusted.
    server.put(IMG, b.zst.clone());
    let before = server.served(IMG).len();
    let (result, _) = run(&node, &request(server.url(IMG), &b.meta.digest));
    result.unwrap();
    let again = &server.served(IMG)[before..];
    assert_eq!((again[0].status, again[0].start), (200, 0), "{again:?}");
    assert_eq!(
        again.iter().map(|s| s.sent).sum::<u64>(),
        b.zst.len() as u64
    );
    assert!(node.slot_b()[..b.image.len()] == b.image[..]);
}

#[test]
fn a_checkpoint_of_another_download_is_not_used() {
    let node = Node::new(4 << 20);
    let b = big_bundle(23);
    let server = serve(&b, true);
    fail_at_sixty_percent(&node, &server, &b);
    // Another bundle (another manifest) at another URL: from the start.
    let other = big_bundle(24);
    server.put("/os/other.img.zst", other.zst.clone());
    server.put(
        "/os/other.manifest.json",
        other.meta.manifest.clone().into_bytes(),
    );
    let (result, _) = run(
        &node,
        &request(server.url("/os/other.img.zst"), &other.meta.digest),
    );
    result.unwrap();
    let served = server.served("/os/other.img.zst");
    assert_eq!((served[0].status, served[0].start), (200, 0), "{served:?}");
    assert!(node.slot_b()[..other.image.len()] == other.image[..]);
}

/// Serves `b` with `manifest` beside it; the request pins the image file by
/// its sha256 only (KubeOS's checksum), so nothing vouches for the manifest.
fn serve_pinned(b: &Bundle, manifest: Vec<u8>) -> (Server, PrepareRequest) {
    let server = Server::start();
    server.put(IMG, b.zst.clone());
    server.put(MANIFEST, manifest);
    let req = request(server.url(IMG), &oci::digest::sha256(&b.zst));
    (server, req)
}

#[test]
fn a_manifests_verity_parameters_must_be_those_of_the_tree_the_image_holds() {
    let (b, v) = verity_bundle(CHUNK);
    // The genuine parameters are recorded for os-init.
    let node = Node::new(SLOT);
    let (_server, req) = serve_pinned(&b, manifest_naming(&b, Some(&v)).into_bytes());
    let (result, _) = run(&node, &req);
    assert_eq!(result.unwrap().verity, Some(v.to_arg()));
    assert_eq!(node.record_b().verity, Some(v.to_arg()));
    // A root hash that is not the tree's: before, recorded, and every trial
    // boot of the slot failed in os-init.
    let mut wrong_root = v.clone();
    wrong_root.root_hash[5] ^= 0x10;
    // Another salt, with the root that the tree's top block has under it.
    let mut other_salt = v.clone();
    other_salt.salt[0] ^= 1;
    let top = &b.image[v.hash_offset as usize..][..4096];
    other_salt.root_hash = wire::verity::block_hash(&other_salt.salt, top);
    for (what, bad) in [("root hash", wrong_root), ("salt", other_salt)] {
        let node = Node::new(SLOT);
        let (_server, req) = serve_pinned(&b, manifest_naming(&b, Some(&bad)).into_bytes());
        let (err, msg) = fails(&node, &req);
        assert!(
            matches!(err, PrepareError::BadManifest { .. }),
            "{what}: {msg}"
        );
        assert!(
            msg.contains("dm-verity parameters do not fit the image"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn a_node_that_requires_verity_refuses_an_image_without_a_tree_before_writing() {
    let (b, _) = verity_bundle(CHUNK);
    // The tree left out of an unsigned manifest: a node that does not insist
    // mounts the slot unchecked (docs/security.md).
    let node = Node::new(SLOT);
    let (_server, req) = serve_pinned(&b, manifest_naming(&b, None).into_bytes());
    let (result, _) = run(&node, &req);
    assert_eq!(result.unwrap().verity, None);
    let mut node = Node::new(SLOT);
    node.cfg.require_verity = true;
    let (server, req) = serve_pinned(&b, manifest_naming(&b, None).into_bytes());
    let (err, msg) = fails(&node, &req);
    assert!(matches!(err, PrepareError::BadManifest { .. }), "{msg}");
    assert!(msg.contains("require-verity = yes"), "{msg}");
    assert_eq!(server.served(IMG).len(), 0, "nothing downloaded");
    // Nor without any manifest.
    let server = serve(&b, false);
    let (_, msg) = fails(
        &node,
        &request(server.url(IMG), &oci::digest::sha256(&b.zst)),
    );
    assert!(msg.contains("there is none"), "{msg}");
}

#[test]
fn a_slot_written_without_a_tree_is_not_held_once_verity_is_required() {
    let (b, _) = verity_bundle(CHUNK);
    let mut node = Node::new(SLOT);
    let (server, req) = serve_pinned(&b, manifest_naming(&b, None).into_bytes());
    assert_eq!(run(&node, &req).0.unwrap().verity, None);
    // require-verity set since (a node image that turns it on, a config
    // change): the same request again must not arm the unchecked slot. Before,
    // the slot was held from its record and the check never ran.
    node.cfg.require_verity = true;
    let err = run(&node, &req)
        .0
        .expect_err("the slot without a tree was held");
    node.assert_not_armed();
    let msg = err.to_string();
    assert!(matches!(err, PrepareError::BadManifest { .. }), "{msg}");
    assert!(msg.contains("require-verity = yes"), "{msg}");
    assert_eq!(
        server.served(IMG).len(),
        1,
        "downloaded once, for the first write"
    );
}
