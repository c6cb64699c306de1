//! The OCI source against a loopback server that serves the distribution
//! API's read paths as files (anonymous, as a registry without auth does) and
//! injects faults (common/server.rs): resume with Range inside the layer blob
//! with the layer's sha256 still checked over the whole stream, and every way
//! the registry's content can be wrong, each failing with the active slot
//! untouched. The real registry (docker-registry, TLS, tokens, skopeo) is
//! exercised in tests/tests/registry_pull.rs.

mod common;

use agent::prepare::{prepare_with, PrepareError, PrepareRequest};
use agent::progress::Progress;
use bootctl::record::SlotState;
use common::server::{Fault, Server};
use common::{bundle, quick_retry, synthetic_image, Bundle, Node};
use oci::artifact::{BundleArtifact, Descriptor, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE};
use oci::digest::sha256;
use std::sync::atomic::AtomicBool;

const CHUNK: usize = 64 << 10;
const IMAGE: usize = 10 * CHUNK + 4_321;
const SLOT: u64 = 1 << 20;

/// A bundle published as the artifact at `/v2/os/…`; returns the server,
/// the manifest's digest and the layer's path.
struct Published {
    server: Server,
    digest: String,
    layer_path: String,
    b: Bundle,
}

fn artifact(b: &Bundle, layer_digest: &str) -> Vec<u8> {
    BundleArtifact {
        config: Descriptor::new(
            CONFIG_MEDIA_TYPE,
            &sha256(b.meta.manifest.as_bytes()),
            b.meta.manifest.len() as u64,
        ),
        layer: Descriptor::new(LAYER_MEDIA_TYPE, layer_digest, b.zst.len() as u64),
        annotations: vec![],
    }
    .to_json()
}

fn publish_with(b: Bundle, manifest: Vec<u8>) -> Published {
    let server = Server::start();
    let digest = sha256(&manifest);
    server.put("/v2/os/manifests/2", manifest.clone());
    server.put(&format!("/v2/os/manifests/{digest}"), manifest);
    let config = b.meta.manifest.clone().into_bytes();
    server.put(&format!("/v2/os/blobs/{}", sha256(&config)), config);
    let layer_path = format!("/v2/os/blobs/{}", sha256(&b.zst));
    server.put(&layer_path, b.zst.clone());
    Published {
        server,
        digest,
        layer_path,
        b,
    }
}

fn publish() -> Published {
    let b = bundle(synthetic_image(IMAGE, 7), CHUNK, "2");
    let manifest = artifact(&b, &sha256(&b.zst));
    publish_with(b, manifest)
}

fn host(server: &Server) -> String {
    server.url("").trim_start_matches("http://").to_owned()
}

fn request(p: &Published, reference: &str, digest: &str) -> PrepareRequest {
    common::request(format!("oci://{}/{reference}", host(&p.server)), digest)
}

fn run(node: &Node, req: &PrepareRequest) -> Result<agent::prepare::Prepared, PrepareError> {
    common::prepare(node, req)
}

fn assert_written(node: &Node, p: &Published) {
    assert_eq!(&node.slot_b()[..IMAGE], &p.b.image[..]);
    let rec = node.record_b();
    assert_eq!(rec.state, SlotState::Written);
    assert_eq!(rec.digest, p.b.meta.digest);
    assert_eq!(rec.version, "2");
    node.assert_not_armed();
}

#[test]
fn a_dropped_layer_download_resumes_and_the_layer_digest_still_verifies() {
    let p = publish();
    let cut = p.b.meta.frames[3].0 + 1000;
    p.server.fault(&p.layer_path, Fault::DropAfter(cut));
    p.server
        .fault(&p.layer_path, Fault::DropAfter(CHUNK as u64 / 3));
    let node = Node::new(SLOT);
    let done = run(&node, &request(&p, "os:2", &p.digest)).unwrap();
    assert_eq!(done.digest, p.b.meta.digest);
    assert_written(&node, &p);
    let starts: Vec<u64> = p
        .server
        .served(&p.layer_path)
        .iter()
        .map(|s| s.start)
        .collect();
    assert_eq!(starts.len(), 3, "two drops, three requests: {starts:?}");
    assert_eq!(starts[0], 0);
    assert_eq!(
        starts[1],
        p.b.meta.frame_start(cut),
        "resumed at the last verified chunk"
    );
    assert!(starts[2] >= starts[1], "{starts:?}");
}

/// The bundle manifest is the config blob the pinned OCI manifest names, so
/// chunks may come from the running slot: only the missing frame travels,
/// by a blob Range request, and the slot still verifies.
#[test]
fn a_delta_fetches_only_the_missing_frames_by_blob_range() {
    let p = publish();
    let mut running = p.b.image.clone();
    running[4 * CHUNK..5 * CHUNK].fill(7);
    let node = Node::with_images(running, &vec![0xEE; SLOT as usize]);
    let done = run(&node, &request(&p, "os:2", &p.digest)).unwrap();
    assert_eq!(done.digest, p.b.meta.digest);
    assert_written(&node, &p);
    let (z, n) = p.b.meta.frames[4];
    let served: Vec<_> = p
        .server
        .served(&p.layer_path)
        .iter()
        .map(|s| (s.status, s.start, s.end, s.sent))
        .collect();
    assert_eq!(served, vec![(206, z, Some(z + n - 1), n)]);
}

#[test]
fn pinned_by_reference_digest_or_image_blake3() {
    let p = publish();
    let node = Node::new(SLOT);
    run(&node, &request(&p, &format!("os@{}", p.digest), "")).unwrap();
    assert_written(&node, &p);
    let node = Node::new(SLOT);
    run(&node, &request(&p, "os:2", &p.b.meta.digest)).unwrap();
    assert_written(&node, &p);
}

#[test]
fn a_tag_alone_is_refused_before_anything_is_fetched() {
    let p = publish();
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, "os:2", "")).unwrap_err();
    assert!(matches!(e, PrepareError::BadRequest { .. }), "{e}");
    assert!(e.to_string().contains("a tag can move"), "{e}");
    assert!(p.server.served("/v2/os/manifests/2").is_empty());
    node.assert_untouched();
}

#[test]
fn a_layer_whose_bytes_are_not_its_digest_is_refused_after_streaming() {
    let b = bundle(synthetic_image(IMAGE, 7), CHUNK, "2");
    // The manifest names a layer digest the served bytes do not have; chunk
    // digests (from the config) all match, so only the sha256 can tell.
    let wrong = sha256(b"not the layer");
    let manifest = artifact(&b, &wrong);
    let p = publish_with(b, manifest);
    p.server
        .put(&format!("/v2/os/blobs/{wrong}"), p.b.zst.clone());
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, "os:2", &p.digest)).unwrap_err();
    assert!(matches!(e, PrepareError::LayerMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&wrong), "{e}");
    node.assert_untouched();
}

#[test]
fn a_manifest_that_is_not_its_pinned_digest_is_refused() {
    let p = publish();
    let other = sha256(b"another manifest");
    p.server.put(
        &format!("/v2/os/manifests/{other}"),
        artifact(&p.b, &sha256(&p.b.zst)),
    );
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, &format!("os@{other}"), "")).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, PrepareError::Registry { .. }), "{text}");
    assert!(text.contains(&other) && text.contains(&p.digest), "{text}");
    node.assert_untouched();
}

#[test]
fn a_config_blob_with_the_wrong_bytes_is_refused() {
    let p = publish();
    let config = p.b.meta.manifest.clone().into_bytes();
    let tampered = String::from_utf8(config.clone())
        .unwrap()
        .replace(r#""os_version":"2""#, r#""os_version":"3""#);
    assert_ne!(
        tampered.as_bytes(),
        &config[..],
        "the tampering changed nothing"
    );
    p.server.put(
        &format!("/v2/os/blobs/{}", sha256(&config)),
        tampered.into_bytes(),
    );
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, "os:2", &p.digest)).unwrap_err();
    assert!(matches!(e, PrepareError::Registry { .. }), "{e}");
    assert!(e.to_string().contains("expected"), "{e}");
    node.assert_untouched();
}

#[test]
fn a_blake3_pin_that_is_not_the_bundle_is_refused() {
    let p = publish();
    let node = Node::new(SLOT);
    let other = format!("blake3:{}", blake3::hash(b"other").to_hex());
    let e = run(&node, &request(&p, "os:2", &other)).unwrap_err();
    assert!(
        matches!(
            e,
            PrepareError::ManifestMismatch {
                field: "image_digest",
                ..
            }
        ),
        "{e}"
    );
    node.assert_untouched();
}

#[test]
fn a_container_image_is_not_a_bundle() {
    let b = bundle(synthetic_image(IMAGE, 7), CHUNK, "2");
    let manifest = String::from_utf8(artifact(&b, &sha256(&b.zst)))
        .unwrap()
        .replace(
            CONFIG_MEDIA_TYPE,
            "application/vnd.oci.image.config.v1+json",
        )
        .into_bytes();
    let p = publish_with(b, manifest);
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, "os:2", &p.digest)).unwrap_err();
    assert!(e.to_string().contains("unsupported media type"), "{e}");
    node.assert_untouched();
}

#[test]
fn an_unknown_tag_and_a_registry_error_fail_cleanly() {
    let p = publish();
    let node = Node::new(SLOT);
    let e = run(&node, &request(&p, "os:9", &p.b.meta.digest)).unwrap_err();
    assert!(matches!(e, PrepareError::Registry { .. }), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
    node.assert_untouched();
    p.server
        .fault_always("/v2/os/manifests/2", Fault::Status(503));
    let e = run(&node, &request(&p, "os:2", &p.b.meta.digest)).unwrap_err();
    assert!(matches!(e, PrepareError::Http { status: 503, .. }), "{e}");
    assert_eq!(
        p.server.served("/v2/os/manifests/2").len(),
        3,
        "retried 5xx"
    );
    node.assert_untouched();
}

/// Runs a prepare, sets its cancel flag after `after`, returns the result
/// and how long the prepare took after the cancel.
fn cancelled_after(
    node: &Node,
    req: &PrepareRequest,
    after: std::time::Duration,
) -> (
    Result<agent::prepare::Prepared, PrepareError>,
    std::time::Duration,
) {
    let cancel = AtomicBool::new(false);
    std::thread::scope(|s| {
        let job = s.spawn(|| {
            prepare_with(
                &node.cfg,
                req,
                &Progress::default(),
                &cancel,
                &quick_retry(),
            )
        });
        std::thread::sleep(after);
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let at = std::time::Instant::now();
        let result = job.join().unwrap();
        (result, at.elapsed())
    })
}

#[test]
fn a_cancel_does_not_wait_for_a_silent_registry() {
    let long = std::time::Duration::from_secs(60);
    for (path, fault) in [
        ("manifest", Fault::StallAfter(0, long)),
        ("layer", Fault::StallAfter(CHUNK as u64 * 2, long)),
    ] {
        let p = publish();
        let mut node = Node::new(SLOT);
        // Only the cancel can end the wait quickly.
        node.cfg.read_timeout = long;
        let at = if path == "manifest" {
            "/v2/os/manifests/2".to_owned()
        } else {
            p.layer_path.clone()
        };
        p.server.fault_always(&at, fault);
        let req = request(&p, "os:2", &p.b.meta.digest);
        let (result, took) = cancelled_after(&node, &req, std::time::Duration::from_millis(800));
        let e = result.expect_err(path);
        assert!(matches!(e, PrepareError::Cancelled { .. }), "{path}: {e}");
        assert!(
            took < std::time::Duration::from_secs(3),
            "{path}: the cancel took {took:?}"
        );
        node.assert_not_armed();
    }
}
