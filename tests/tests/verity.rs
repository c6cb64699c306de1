//! dm-verity roots on a real node (issue 15; QEMU, OVMF, GRUB, the Debian
//! kernel). Every bundle carries a verity tree; the slot record keeps its
//! parameters and os-init mounts the slot through a device-mapper verity
//! device after reading every block through it.
//!
//! One byte of slot B flipped after os-agent wrote and verified it: the
//! trial boot fails in os-init with a verity error and slot A boots next.
//! The same flip in the committed slot A: the boot goes on (through
//! dm-verity, so a corrupt block reads as an I/O error) and the corruption
//! is on the console and in `os-agent status`.

use e2e::console::Interactive;
use e2e::demo::{self, Spec};
use e2e::http::FileServer;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

/// A byte offset in a block the image's file system does not use, in the
/// second half of its data: flipping it damages no file, so only a
/// whole-device read finds it.
fn free_byte(image_zst: &Path, work: &Path) -> u64 {
    let raw = work.join(format!(
        "{}.raw",
        image_zst.file_name().unwrap().to_string_lossy()
    ));
    e2e::run(
        Command::new("zstd")
            .args(["-d", "-q", "-f", "-o"])
            .arg(&raw)
            .arg(image_zst),
    );
    let blocks = e2fs_blocks(&raw);
    let text = e2e::run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("ffb 1 {}", blocks / 2))
            .arg(&raw),
    );
    let block: u64 = text
        .split("Free blocks found:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no free block in {}: {text}", raw.display()));
    let _ = std::fs::remove_file(&raw);
    block * 4096 + 1234
}

/// Blocks of the ext4 file system at the start of `raw` (its verity data).
fn e2fs_blocks(raw: &Path) -> u64 {
    let text = e2e::run(Command::new("dumpe2fs").arg("-h").arg(raw));
    text.lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block count: {text}"))
}

/// Flips the lowest bit of the byte at `offset` of the partition named
/// `label`, from inside the guest, and returns what it read back.
fn flip(m: &mut Interactive, label: &str, offset: u64) -> String {
    let cmd = format!(
        "d=/dev/$(sed -n 's/^DEVNAME=//p' $(grep -l '^PARTNAME={label}$' /sys/class/block/*/uevent)); \
         b=$(dd if=$d bs=1 skip={offset} count=1 2>/dev/null | od -An -tu1 | tr -d ' '); \
         printf \"\\\\$(printf %o $((b ^ 1)))\" | dd of=$d bs=1 seek={offset} conv=notrunc 2>/dev/null; sync; \
         a=$(dd if=$d bs=1 skip={offset} count=1 iflag=direct 2>/dev/null | od -An -tu1 | tr -d ' '); \
         echo \"flipped $d byte {offset}: $b -> $a\""
    );
    let (out, rc) = m.run(&cmd, TIMEOUT).unwrap();
    assert_eq!(rc, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("flipped "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let (before, after) = line
        .rsplit_once(": ")
        .unwrap()
        .1
        .split_once(" -> ")
        .unwrap();
    let (before, after): (u8, u8) = (before.parse().unwrap(), after.trim().parse().unwrap());
    assert_eq!(before ^ 1, after, "{line}");
    line
}

#[test]
fn a_root_changed_after_writing_fails_its_trial_and_is_reported_when_committed() {
    let dir = e2e::fixture_dir().join("verity");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("bundles");
    let v1 = demo::build_bundle_spec(&dir, &out, "1", &Spec::default());
    let v2 = demo::build_bundle_spec(&dir, &out, "2", &Spec::default());
    let flip_a = free_byte(&out.join("os-1.img.zst"), &dir);
    let flip_b = free_byte(&out.join("os-2.img.zst"), &dir);
    let art = demo::Artifacts {
        dir: dir.clone(),
        os_image: e2e::host_binary("image-builder", "os-image"),
        bundles: vec![v1, v2.clone()],
    };
    let disk = dir.join("node.img");
    art.build_disk(&disk);

    let mut m = Interactive::start(&disk, &e2e::repo_root().join("target/e2e-logs/verity"));
    let verified = m.wait_for("slot A: verity: ", TIMEOUT).unwrap();
    assert!(verified.contains("read and verified"), "{verified}");
    m.wait_for("OS-DEMO version=1 slot=A", TIMEOUT).unwrap();
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    let (mounts, _) = m.run("grep ' / ' /proc/mounts", TIMEOUT).unwrap();
    assert!(
        mounts.contains("/dev/dm-") || mounts.contains("/dev/mapper/os-root-A"),
        "the root is not the verity device: {mounts}"
    );
    let (status, rc) = m.run("os-agent status", TIMEOUT).unwrap();
    assert_eq!(rc, 0, "{status}");
    assert!(status.contains("verity:     slot A verified"), "{status}");

    // v2 written and verified by os-agent, armed; then one byte changes.
    let server = FileServer::start(&out).unwrap();
    let (said, rc) = m
        .run(
            &format!(
                "os-agent upgrade --no-reboot --url http://10.0.2.2:{}/os-2.img.zst --digest {} \
                 --version 2 --allow-http",
                server.port, v2.digest
            ),
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(rc, 0, "{said}");
    assert!(said.contains("trial boot armed"), "{said}");
    flip(&mut m, "ROOT-B", flip_b);
    m.send_line("reboot -f").unwrap();
    let failed = m.wait_for("trial of slot B failed: ", TIMEOUT).unwrap();
    assert!(
        failed.contains("verity: 1 block(s) of the root do not match its verity tree"),
        "{failed}"
    );
    let booted = m.wait_for("OS-DEMO version=", TIMEOUT).unwrap();
    assert!(booted.contains("OS-DEMO version=1 slot=A"), "{booted}");
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    let (status, _) = m.run("os-agent status", TIMEOUT).unwrap();
    assert!(status.contains("slot B:     failed"), "{status}");
    assert!(status.contains("verity:     slot A verified"), "{status}");

    // The committed slot changes under the running system.
    flip(&mut m, "ROOT-A", flip_a);
    m.send_line("reboot -f").unwrap();
    let corrupt = m.wait_for("slot A: CORRUPT ROOT: ", TIMEOUT).unwrap();
    assert!(
        corrupt.contains(&format!(
            "1 block(s) of the root do not match its verity tree, the first at byte {}",
            flip_a / 4096 * 4096
        )),
        "{corrupt}"
    );
    let booted = m.wait_for("OS-DEMO version=", TIMEOUT).unwrap();
    assert!(booted.contains("OS-DEMO version=1 slot=A"), "{booted}");
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    let (status, _) = m.run("os-agent status", TIMEOUT).unwrap();
    assert!(
        status.contains(
            "verity:     slot A corrupt (CORRUPT: its bytes changed after they were written)"
        ),
        "{status}"
    );
    let (json, _) = m.run("os-agent status --json", TIMEOUT).unwrap();
    assert!(
        json.contains(r#""verity":{"slot":"A","state":"corrupt""#),
        "{json}"
    );
    m.close();
}
