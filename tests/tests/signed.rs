//! Signed bundles on a real node (issue 15; QEMU, OVMF, GRUB, the Debian
//! kernel): v1's image trusts one key (`/usr/share/os-agent/keys`). Over the
//! guest's network, os-agent refuses an unsigned v2, a v2 signed by another
//! key and a v2 whose manifest was edited after signing, each before the
//! image is fetched, with slot B's record and the boot state untouched; then
//! the v2 signed by the trusted key upgrades, boots and is confirmed.

use e2e::console::Interactive;
use e2e::demo::{self, Spec};
use e2e::http::FileServer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

fn keygen(os_image: &Path, stem: &Path) -> (PathBuf, PathBuf) {
    e2e::run(Command::new(os_image).arg("keygen").arg("--out").arg(stem));
    (stem.with_extension("key"), stem.with_extension("pub"))
}

/// `dir/NAME/os-2.{img.zst,manifest.json}` from `from`, the image hard-linked.
fn variant(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::hard_link(from.join("os-2.img.zst"), to.join("os-2.img.zst")).unwrap();
    std::fs::copy(
        from.join("os-2.manifest.json"),
        to.join("os-2.manifest.json"),
    )
    .unwrap();
    to
}

#[test]
fn only_a_bundle_signed_by_the_images_key_is_written_and_booted() {
    let dir = e2e::fixture_dir().join("signed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let os_image = e2e::host_binary("image-builder", "os-image");
    let (vendor_key, vendor_pub) = keygen(&os_image, &dir.join("vendor"));
    let (attacker_key, _) = keygen(&os_image, &dir.join("attacker"));
    let out = dir.join("bundles");
    let spec = |sign: bool| Spec {
        trusted_keys: vec![vendor_pub.clone()],
        sign: sign.then(|| vendor_key.clone()),
        ..Spec::default()
    };
    let v1 = demo::build_bundle_spec(&dir, &out, "1", &spec(false));
    let v2 = demo::build_bundle_spec(&dir, &out, "2", &spec(true));
    let art = demo::Artifacts {
        dir: dir.clone(),
        os_image: os_image.clone(),
        bundles: vec![v1, v2.clone()],
    };
    let disk = dir.join("node.img");
    art.build_disk(&disk);

    // The three bundles a node must refuse, each in its own directory.
    let unsigned = variant(&out, &dir, "unsigned");
    let attacker = variant(&out, &dir, "attacker");
    e2e::run(
        Command::new(&os_image)
            .arg("sign")
            .arg("--key")
            .arg(&attacker_key)
            .arg(attacker.join("os-2.manifest.json")),
    );
    let edited = variant(&out, &dir, "edited");
    std::fs::copy(
        out.join("os-2.manifest.json.sig"),
        edited.join("os-2.manifest.json.sig"),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(edited.join("os-2.manifest.json")).unwrap();
    text.push(' ');
    std::fs::write(edited.join("os-2.manifest.json"), text).unwrap();

    let vendor_id =
        wire::signature::PublicKey::from_pem(&std::fs::read_to_string(&vendor_pub).unwrap())
            .unwrap()
            .id();
    let mut m = Interactive::start(&disk, &e2e::repo_root().join("target/e2e-logs/signed"));
    m.wait_for("OS-DEMO version=1", TIMEOUT).unwrap();
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    let (status, rc) = m.run("os-agent status", TIMEOUT).unwrap();
    assert_eq!(rc, 0, "{status}");
    assert!(
        status.contains(&format!("signatures: required, trusted keys {vendor_id}")),
        "{status}"
    );

    let upgrade = |port: u16| {
        format!(
            "os-agent upgrade --url http://10.0.2.2:{port}/os-2.img.zst --digest {} --version 2 --allow-http",
            v2.digest
        )
    };
    for (name, from, why) in [
        ("unsigned", &unsigned, "no signature beside the manifest"),
        ("another key's", &attacker, "which is not trusted here"),
        (
            "edited after signing",
            &edited,
            "does not match the manifest",
        ),
    ] {
        let server = FileServer::start(from).unwrap();
        let (said, rc) = m.run(&upgrade(server.port), TIMEOUT).unwrap();
        assert_ne!(rc, 0, "the {name} bundle was taken: {said}");
        assert!(said.contains(why), "{name}: {said}");
        let sent = server.counters.bytes.load(Ordering::Relaxed);
        assert!(
            sent < 64 << 10,
            "{name}: {sent} bytes served, the image was fetched before the signature was checked"
        );
        let (status, _) = m.run("os-agent status", TIMEOUT).unwrap();
        assert!(status.contains("slot B:     empty"), "{name}: {status}");
        assert!(!status.contains("armed for a trial"), "{name}: {status}");
    }

    let server = FileServer::start(&out).unwrap();
    m.send_line(&upgrade(server.port)).unwrap();
    m.wait_for("signed by trusted key", TIMEOUT).unwrap();
    m.wait_for("rebooting: upgrade", TIMEOUT).unwrap();
    let booted = m.wait_for("OS-DEMO version=", TIMEOUT).unwrap();
    assert!(booted.contains("OS-DEMO version=2 slot=B"), "{booted}");
    let verdict = m.wait_for("after boot: ", TIMEOUT).unwrap();
    assert!(verdict.contains("after boot: Confirmed"), "{verdict}");
    m.close();
}
