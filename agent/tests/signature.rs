//! Signed bundles (issue 15, docs/signing.md) through the real write path
//! against a loopback HTTP server: a node with trusted keys writes a bundle
//! signed by one of them and refuses, before writing a byte, an unsigned
//! bundle, one signed by another key, a manifest changed after signing, and
//! every bundle when its only key file is damaged. A node without keys takes
//! unsigned bundles as before. After every refusal the active slot, the boot
//! state and slot B's record are untouched and slot B's bytes are unchanged.

mod common;

use agent::prepare::PrepareRequest;
use common::server::Server;
use common::{bundle, manifest_naming, prepare, synthetic_image, verity_bundle, Bundle, Node};
use std::path::PathBuf;
use wire::rpc::Reason;
use wire::signature::SecretKey;

const CHUNK: usize = 64 << 10;
const SLOT: u64 = 1 << 20;
const IMG: &str = "/os/os-2.img.zst";
const MANIFEST: &str = "/os/os-2.manifest.json";
const SIG: &str = "/os/os-2.manifest.json.sig";

fn v2() -> Bundle {
    bundle(synthetic_image(6 * CHUNK + 999, 2), CHUNK, "2")
}

/// A node whose key directories are `DIR/image-keys` and `DIR/node-keys`,
/// holding the public halves of `image` and `node`.
fn node_trusting(image: &[&SecretKey], node: &[&SecretKey]) -> Node {
    let mut n = Node::new(SLOT);
    let dirs: Vec<PathBuf> = ["image-keys", "node-keys"]
        .iter()
        .map(|d| n.dir.path().join(d))
        .collect();
    for (dir, keys) in dirs.iter().zip([image, node]) {
        std::fs::create_dir_all(dir).unwrap();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(dir.join(format!("key{i}.pub")), k.public().to_pem()).unwrap();
        }
    }
    n.cfg.keys_dirs = dirs;
    n
}

fn serve(b: &Bundle, manifest: &str, sig: Option<String>) -> Server {
    let server = Server::start();
    server.put(IMG, b.zst.clone());
    server.put(MANIFEST, manifest.as_bytes().to_vec());
    if let Some(sig) = sig {
        server.put(SIG, sig.into_bytes());
    }
    server
}

fn request(server: &Server, digest: &str) -> PrepareRequest {
    common::request(server.url(IMG), digest)
}

/// The refusal's reason and message; nothing written, nothing armed, and the
/// image itself was never requested.
fn refused(node: &Node, server: &Server, req: &PrepareRequest) -> (Reason, String) {
    let before = node.slot_b();
    let err = prepare(node, req).expect_err("the bundle must be refused");
    node.assert_untouched();
    assert!(node.slot_b() == before, "slot B was written");
    assert!(
        server.served(IMG).is_empty(),
        "the image was fetched before the signature was checked"
    );
    (err.reason(), err.to_string())
}

#[test]
fn a_bundle_signed_by_a_trusted_key_is_written() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let sig = vendor.sign(b.meta.manifest.as_bytes()).to_json();
    let node = node_trusting(&[&vendor], &[]);
    let server = serve(&b, &b.meta.manifest, Some(sig));
    let done = prepare(&node, &request(&server, &b.meta.digest)).unwrap();
    assert_eq!(done.digest, b.meta.digest);
    assert!(node.slot_b()[..b.image.len()] == b.image[..]);
    // KubeOS's check_sum (the file's sha256) with a signed manifest.
    let node = node_trusting(&[], &[&vendor]);
    let sha = format!("sha256:{}", sha256_hex(&b.zst));
    prepare(&node, &request(&server, &sha)).unwrap();
}

#[test]
fn a_rotated_key_in_the_node_directory_is_trusted_beside_the_image_key() {
    let (old, _) = SecretKey::generate().unwrap();
    let (new, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&old], &[&new]);
    let server = serve(
        &b,
        &b.meta.manifest,
        Some(new.sign(b.meta.manifest.as_bytes()).to_json()),
    );
    prepare(&node, &request(&server, &b.meta.digest)).unwrap();
}

#[test]
fn an_unsigned_bundle_is_refused_before_a_byte_is_written() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    let server = serve(&b, &b.meta.manifest, None);
    let (reason, msg) = refused(&node, &server, &request(&server, &b.meta.digest));
    assert_eq!(reason, Reason::Unsigned, "{msg}");
    assert!(msg.contains("no signature beside the manifest"), "{msg}");
    assert!(msg.contains(SIG), "names the signature URL: {msg}");
}

#[test]
fn a_bundle_signed_by_another_key_is_refused() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let (attacker, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    let sig = attacker.sign(b.meta.manifest.as_bytes()).to_json();
    let server = serve(&b, &b.meta.manifest, Some(sig));
    let (reason, msg) = refused(&node, &server, &request(&server, &b.meta.digest));
    assert_eq!(reason, Reason::UntrustedKey, "{msg}");
    assert!(msg.contains(&attacker.public().id()), "{msg}");
    assert!(
        msg.contains(&vendor.public().id()),
        "lists the trusted keys: {msg}"
    );
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let sig = vendor.sign(b.meta.manifest.as_bytes()).to_json();
    // Another image under the signed bundle's name: its own manifest, the
    // original signature.
    let evil = bundle(synthetic_image(6 * CHUNK + 999, 66), CHUNK, "2");
    let node = node_trusting(&[&vendor], &[]);
    let server = serve(&evil, &evil.meta.manifest, Some(sig.clone()));
    let (reason, msg) = refused(&node, &server, &request(&server, &evil.meta.digest));
    assert_eq!(reason, Reason::BadSignature, "{msg}");
    // One byte of whitespace is a change too.
    let server = serve(&b, &format!("{} ", b.meta.manifest), Some(sig));
    let (reason, _) = refused(&node, &server, &request(&server, &b.meta.digest));
    assert_eq!(reason, Reason::BadSignature);
}

#[test]
fn malformed_signatures_are_refused() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    for sig in ["", "{}", "not json", &"x".repeat(5000)] {
        let server = serve(&b, &b.meta.manifest, Some(sig.to_owned()));
        let shown = &sig[..sig.len().min(20)];
        let err = prepare(&node, &request(&server, &b.meta.digest)).expect_err(shown);
        node.assert_untouched();
        assert_eq!(err.reason(), Reason::BadSignature, "{shown:?}: {err}");
    }
}

#[test]
fn a_damaged_key_file_refuses_everything_rather_than_nothing() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    std::fs::write(node.cfg.keys_dirs[0].join("key0.pub"), "garbage").unwrap();
    let server = serve(
        &b,
        &b.meta.manifest,
        Some(vendor.sign(b.meta.manifest.as_bytes()).to_json()),
    );
    let (reason, msg) = refused(&node, &server, &request(&server, &b.meta.digest));
    assert_eq!(reason, Reason::UntrustedKey, "{msg}");
    assert!(
        msg.contains("no trusted key is usable") && msg.contains("key0.pub"),
        "{msg}"
    );
}

#[test]
fn a_signed_node_refuses_an_image_without_a_manifest() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    let server = Server::start();
    server.put(IMG, b.zst.clone());
    let (reason, msg) = refused(&node, &server, &request(&server, &b.meta.digest));
    assert_eq!(reason, Reason::Unsigned, "{msg}");
    assert!(msg.contains("no manifest beside the image"), "{msg}");
}

#[test]
fn a_node_without_keys_takes_unsigned_bundles_as_before() {
    let b = v2();
    let node = node_trusting(&[], &[]);
    let server = serve(&b, &b.meta.manifest, None);
    prepare(&node, &request(&server, &b.meta.digest)).unwrap();
    assert!(server.served(SIG).is_empty(), "no signature is asked for");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    wire::digest::hex(&sha2::Sha256::digest(bytes))
}

/// The bundle as a registry artifact at `/v2/os/…` (the loopback server
/// serves the distribution API's read paths as files); `sig` goes in the
/// manifest's signature annotation, as `os-image oci` puts it there.
fn publish(b: &Bundle, sig: Option<String>) -> (Server, String) {
    use oci::artifact::{
        BundleArtifact, Descriptor, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, SIGNATURE,
    };
    use oci::digest::sha256;
    let manifest = BundleArtifact {
        config: Descriptor::new(
            CONFIG_MEDIA_TYPE,
            &sha256(b.meta.manifest.as_bytes()),
            b.meta.manifest.len() as u64,
        ),
        layer: Descriptor::new(LAYER_MEDIA_TYPE, &sha256(&b.zst), b.zst.len() as u64),
        annotations: sig.map(|s| (SIGNATURE.to_owned(), s)).into_iter().collect(),
    }
    .to_json();
    let server = Server::start();
    let digest = sha256(&manifest);
    server.put(&format!("/v2/os/manifests/{digest}"), manifest);
    let config = b.meta.manifest.clone().into_bytes();
    server.put(&format!("/v2/os/blobs/{}", sha256(&config)), config);
    server.put(&format!("/v2/os/blobs/{}", sha256(&b.zst)), b.zst.clone());
    (server, digest)
}

fn oci_request(server: &Server, digest: &str) -> PrepareRequest {
    let host = server.url("");
    let host = host.trim_start_matches("http://");
    common::request(format!("oci://{host}/os@{digest}"), "")
}

#[test]
fn a_registry_bundle_carries_its_signature_in_an_annotation() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let (attacker, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    let sign = |k: &SecretKey| Some(k.sign(b.meta.manifest.as_bytes()).to_json());

    let (server, digest) = publish(&b, sign(&vendor));
    let done = prepare(&node, &oci_request(&server, &digest)).unwrap();
    assert_eq!(done.digest, b.meta.digest);

    let node = node_trusting(&[&vendor], &[]);
    for (sig, want) in [
        (None, Reason::Unsigned),
        (sign(&attacker), Reason::UntrustedKey),
        (Some("{}".to_owned()), Reason::BadSignature),
    ] {
        let (server, digest) = publish(&b, sig);
        let err = prepare(&node, &oci_request(&server, &digest)).expect_err("refused");
        node.assert_untouched();
        assert_eq!(err.reason(), want, "{err}");
        let layer = format!("/v2/os/blobs/{}", oci::digest::sha256(&b.zst));
        assert!(
            server.served(&layer).is_empty(),
            "the layer was fetched: {err}"
        );
    }
}

#[test]
fn a_slot_written_before_its_keys_is_held_only_as_the_signed_manifest_says() {
    let (vendor, _) = SecretKey::generate().unwrap();
    let node_key = |node: &Node| {
        let dir = &node.cfg.keys_dirs[1];
        std::fs::write(dir.join("vendor.pub"), vendor.public().to_pem()).unwrap();
    };
    // Pinned by the file's sha256 (KubeOS's check_sum): the slot holds an
    // image no key signed, written while the node had no key (or a key since
    // revoked). With the key, the server offers the same file beside a
    // manifest the vendor signed for another image: before, the signed
    // manifest was checked and the slot taken as held all the same.
    let b = v2();
    let node = node_trusting(&[], &[]);
    let server = serve(&b, &b.meta.manifest, None);
    let sha = format!("sha256:{}", sha256_hex(&b.zst));
    prepare(&node, &request(&server, &sha)).unwrap();
    node_key(&node);
    let other = bundle(synthetic_image(6 * CHUNK + 999, 66), CHUNK, "2");
    server.put(MANIFEST, other.meta.manifest.clone().into_bytes());
    let sig = vendor.sign(other.meta.manifest.as_bytes()).to_json();
    server.put(SIG, sig.into_bytes());
    let err = prepare(&node, &request(&server, &sha)).expect_err("an unsigned slot was held");
    node.assert_untouched();
    // The full path finds that the file is not the signed manifest's image.
    assert_eq!(err.reason(), Reason::BadManifest, "{err}");

    // Pinned by the image's BLAKE3: the slot was written from an unsigned
    // manifest that left the tree out. The signed manifest names it, so the
    // slot is written again and recorded with it (before: held, no verity).
    let (b, v) = verity_bundle(CHUNK);
    let node = node_trusting(&[], &[]);
    let server = serve(&b, &manifest_naming(&b, None), None);
    let done = prepare(&node, &request(&server, &b.meta.digest)).unwrap();
    assert_eq!(done.verity, None);
    node_key(&node);
    let signed = manifest_naming(&b, Some(&v));
    server.put(MANIFEST, signed.clone().into_bytes());
    server.put(SIG, vendor.sign(signed.as_bytes()).to_json().into_bytes());
    let done = prepare(&node, &request(&server, &b.meta.digest)).unwrap();
    assert_eq!(done.verity, Some(v.to_arg()));
    assert_eq!(node.record_b().verity, Some(v.to_arg()));
}

#[test]
fn a_bundle_url_with_a_query_finds_its_signature_beside_the_manifest() {
    // A query (an access token the server wants on every file) stays a
    // query: the signature is the manifest's path plus `.sig`. Before, `.sig`
    // went at the end of the query, so no signed bundle behind such a URL
    // could be written.
    let (vendor, _) = SecretKey::generate().unwrap();
    let b = v2();
    let node = node_trusting(&[&vendor], &[]);
    let server = Server::start();
    server.put(&format!("{IMG}?token=t"), b.zst.clone());
    server.put(
        &format!("{MANIFEST}?token=t"),
        b.meta.manifest.clone().into_bytes(),
    );
    let sig = vendor.sign(b.meta.manifest.as_bytes()).to_json();
    server.put(&format!("{SIG}?token=t"), sig.into_bytes());
    let req = common::request(server.url(&format!("{IMG}?token=t")), &b.meta.digest);
    let done = prepare(&node, &req).unwrap();
    assert_eq!(done.digest, b.meta.digest);
}
