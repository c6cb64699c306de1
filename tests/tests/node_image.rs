//! The real Debian node image in QEMU (issue 16; OVMF, GRUB, the Debian
//! kernel, TCG): roots from `os-image rootfs --from debian`, bundled with
//! this workspace's os-init and os-agent (`e2e::node_image`), driven through
//! `e2e::node_demo`'s scenario: v1 boots from A under systemd with its root
//! read-only through dm-verity, imports and runs a container with
//! containerd; the upgrade to v2 is confirmed by the agent's health gate
//! under systemd and keeps /etc, /var and the imported image; the broken v3
//! (containerd never starts) fails its trial and the node falls back to v2.
//!
//! Slow (three ~840 MiB roots, 7-10 minutes with the TCG boots): it runs
//! with NODE_IMAGE_TESTS=1 only.

use e2e::node_demo::{self, ETC_NOTE, VAR_NOTE};
use e2e::node_image;

#[test]
fn debian_node_upgrades_under_systemd_and_falls_back_from_a_broken_containerd() {
    if std::env::var_os("NODE_IMAGE_TESTS").is_none() {
        eprintln!("skipped: set NODE_IMAGE_TESTS=1 to boot the Debian node image");
        return;
    }
    let dir = e2e::fixture_dir().join("node-image");
    let images = node_image::build(&dir);
    eprintln!(
        "bundles: built {:.0} s, cached {:?}",
        images.build_time.as_secs_f64(),
        images.cached
    );
    let logs = e2e::repo_root().join("target/e2e-logs/node-image");
    let disk = dir.join("node.img");
    let r = node_demo::run_scenario(&images, &disk, &logs, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", node_demo::timeline(&r));
    // 1.7 GB written; the console logs stay for reading.
    std::fs::remove_file(&disk).unwrap();

    // v1 under systemd.
    assert_eq!(r.get("pid1").0.trim(), "systemd");
    let (system, rc) = r.get("system");
    assert_eq!(rc, 0, "the systemd health check failed: {system}");
    assert!(
        system.contains("running") || system.contains("degraded"),
        "{system}"
    );
    assert_eq!(r.get("agent-active").0.trim(), "active");
    assert_eq!(r.get("var-seeded").1, 0, "{}", r.get("var-seeded").0);
    let root = r.get("root-mount").0;
    assert!(root.contains("/dev/dm-") && root.contains(" ro,"), "{root}");
    let status = r.get("status-v1").0;
    assert!(status.contains("verity:     slot A verified"), "{status}");
    assert!(status.contains("booted:     A"), "{status}");
    let (import, rc) = r.get("import");
    assert!(rc == 0 && import.contains("local/busybox:1"), "{import}");
    let (run, rc) = r.get("run-v1");
    assert!(rc == 0 && run.contains("hello-from-v1"), "{run}");

    // v2 confirmed by the health gate, data and the image kept.
    let status = r.get("status-v2").0;
    assert!(status.contains("booted:     B"), "{status}");
    assert!(status.contains("committed:  B"), "{status}");
    assert!(
        status.contains("slot B:     good     version 2 "),
        "{status}"
    );
    assert!(status.contains("verity:     slot B verified"), "{status}");
    let notes = r.get("notes-v2").0;
    assert!(
        notes.contains(ETC_NOTE) && notes.contains(VAR_NOTE),
        "{notes}"
    );
    assert!(r.get("images-v2").0.contains("local/busybox:1"));
    let (run, rc) = r.get("run-v2");
    assert!(rc == 0 && run.contains("hello-from-v2"), "{run}");

    // v3's trial failed; v2 runs from B again.
    let status = r.get("status-v3").0;
    assert!(status.contains("booted:     B"), "{status}");
    assert!(status.contains("committed:  B"), "{status}");
    assert!(
        status.contains("last failure: slot A version 3"),
        "{status}"
    );
    // systemd stays `running` while it restarts the broken containerd for
    // ever: the restart-loop check is the one that catches it.
    assert!(
        status.contains("health.d/15-no-restart-loops failed"),
        "{status}"
    );
    assert!(status.contains("slot A:     failed"), "{status}");
    assert!(r.get("version-v3").0.contains("VERSION_ID=\"2\""));
    let notes = r.get("notes-v3").0;
    assert!(
        notes.contains(ETC_NOTE) && notes.contains(VAR_NOTE),
        "{notes}"
    );
    let (run, rc) = r.get("run-after-v3");
    assert!(rc == 0 && run.contains("hello-again-from-v2"), "{run}");
}
