//! Issue 13 point 9, on real OVMF, GRUB, kernel and os-init under TCG: a
//! committed slot whose filesystem the kernel refuses to mount (its ext4
//! superblock checksum is broken; GRUB, which does not check it, still loads
//! the kernel) no longer reboots into the same failure for ever. With the
//! other slot recorded `good`, os-init tries it once and records why; with
//! nothing else known to boot, it stops at a console message.

use bootctl::record::SlotState;
use bootctl::state::AbState;
use bootctl::store::Esp;
use bootctl::Slot;
use e2e::console::Interactive;
use e2e::demo::{self, Artifacts};
use e2e::disk::{self, Disk};
use e2e::run;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

/// Bundles v1 and v2, built once for both tests.
fn artifacts() -> &'static Artifacts {
    static A: std::sync::OnceLock<Artifacts> = std::sync::OnceLock::new();
    A.get_or_init(|| demo::build_versions(&e2e::fixture_dir().join("rescue"), &["1", "2"]))
}

/// `os-image disk` with v1 in A (committed) and, when `with_b`, v2 in B.
fn build_disk(image: &Path, with_b: bool) {
    let art = artifacts();
    let _ = std::fs::remove_file(image);
    let mut cmd = Command::new(&art.os_image);
    cmd.arg("disk")
        .arg("--bundle")
        .arg(art.bundles[0].manifest());
    if with_b {
        cmd.arg("--bundle-b").arg(art.bundles[1].manifest());
    }
    run(cmd.arg("--out").arg(image));
}

/// Replaces slot `slot`'s record on PERSIST (partition 4) with `text`.
fn write_record(image: &Path, slot: Slot, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (part, file) = (dir.path().join("persist"), dir.path().join("record"));
    disk::extract_partition(image, 4, &part);
    std::fs::write(&file, text).unwrap();
    for req in [
        format!("rm /ab/slot-{slot}"),
        format!("write {} /ab/slot-{slot}", file.display()),
    ] {
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(req)
            .arg(&part));
    }
    disk::replace_partition(image, 4, &part);
}

/// Reads a file from PERSIST, `None` when it does not exist.
fn persist_file(image: &Path, path: &str) -> Option<String> {
    let part = tempfile::NamedTempFile::new().unwrap();
    disk::extract_partition(image, 4, part.path());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(part.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (!text.is_empty()).then_some(text)
}

/// Flips a byte of the volume name in partition `number`'s ext4 superblock:
/// the superblock checksum (metadata_csum) no longer matches, so Linux
/// refuses to mount it while GRUB still reads the kernel from it.
fn break_superblock_checksum(image: &Path, number: u32) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let (start, _) = disk::partition(image, number);
    let at = start + 1024 + 0x78;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

fn ab_state(image: &Path) -> AbState {
    let esp = tempfile::tempdir().unwrap();
    let disk = Disk::open(image);
    for p in bootctl::store::COPY_PATHS {
        let dst = esp.path().join(p);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(dst, disk.read_esp(p)).unwrap();
    }
    Esp::new(esp.path()).status(false, Slot::A).unwrap().state
}

#[test]
fn a_committed_slot_that_does_not_mount_hands_over_to_the_good_slot_once() {
    let dir = e2e::fixture_dir().join("rescue/hand-over");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("node.img");
    build_disk(&image, true);
    // B holds v2 and booted good before (as after an upgrade, then a rollback).
    let mut b = disk::slot_record(&image, Slot::B);
    assert_eq!(b.version, "2");
    b.state = SlotState::Good;
    write_record(&image, Slot::B, &b.to_text());
    break_superblock_checksum(&image, 2);

    let logs = e2e::repo_root().join("target/e2e-logs/rescue-hand-over");
    let mut m = Interactive::start(&image, &logs);
    let first = m
        .wait_for("trying it once", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.contains("cannot mount"), "{first}");
    let second = m
        .wait_for("OS-DEMO version=", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(second.contains("OS-DEMO version=2 slot=B"), "{second}");
    let verdict = m
        .wait_for("after boot: ", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict.contains("Confirmed"), "{verdict}");
    assert_eq!(m.boots(), 2, "one boot of A, one trial boot of B");
    // The console shell starts with the agent; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = m
        .run("os-agent status", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.contains("rescued:    slot A could not be used, os-init tried slot B"),
        "{status}"
    );
    m.close();

    let state = ab_state(&image);
    assert_eq!((state.active, state.trial), (Slot::B, None), "B committed");
    assert_eq!(disk::slot_record(&image, Slot::A).state, SlotState::Failed);
    assert_eq!(disk::slot_record(&image, Slot::B).state, SlotState::Good);
    let note = persist_file(&image, "/ab/rescue").expect("the reason is recorded");
    assert!(note.contains("from=A\nto=B\n"), "{note}");
    assert!(note.contains("cannot mount"), "{note}");
}

#[test]
fn with_no_good_slot_to_try_the_boot_stops_instead_of_looping() {
    let dir = e2e::fixture_dir().join("rescue/stop");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("node.img");
    build_disk(&image, false);
    break_superblock_checksum(&image, 2);
    let before = ab_state(&image);

    let logs = e2e::repo_root().join("target/e2e-logs/rescue-stop");
    let mut m = Interactive::start(&image, &logs);
    let text = m
        .wait_for("stopped, not rebooting", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains("slot B is not recorded as booting good"),
        "{text}"
    );
    // A reboot would reach the firmware's boot line again within seconds.
    std::thread::sleep(Duration::from_secs(40));
    assert_eq!(m.boots(), 1, "the node rebooted:\n{}", m.tail(30));
    m.close();
    let after = ab_state(&image);
    assert_eq!(
        (after.active, after.trial, after.fail),
        (before.active, before.trial, before.fail),
        "the A/B state is untouched"
    );
}
