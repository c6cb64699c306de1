//! The A/B commands through the `bootctl` binary, on an ESP directory in a temp
//! dir: transitions, refusals and their exit status, repair, and the JSON status
//! other tools parse.

use bootctl::envblk;
use bootctl::state::AbState;
use bootctl::Slot;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

fn bootctl(esp: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootctl"))
        .arg("--esp")
        .arg(esp)
        .args(args)
        .output()
        .unwrap()
}

fn ok(esp: &Path, args: &[&str]) -> String {
    let out = bootctl(esp, args);
    assert!(
        out.status.success(),
        "bootctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must be refused; returns its one-line reason.
fn refused(esp: &Path, args: &[&str]) -> String {
    let out = bootctl(esp, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bootctl {args:?} should be refused"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.lines().count(),
        1,
        "one-line reason expected, got {err:?}"
    );
    err
}

fn json(esp: &Path) -> String {
    ok(esp, &["status", "--json"]).trim_end().to_owned()
}

fn copy(esp: &Path, n: usize) -> Vec<u8> {
    std::fs::read(esp.join(format!("ab{n}/env"))).unwrap()
}

fn state(esp: &Path, n: usize) -> AbState {
    AbState::decode_strict(&copy(esp, n)).unwrap()
}

#[test]
fn full_cycle_arm_confirm_fail_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    assert_eq!(copy(esp, 1).len(), 1024);
    assert_eq!(
        json(esp),
        r#"{"active":"A","trial":null,"tries":0,"fail":null,"source":"1","repaired":false}"#
    );
    // The copies are real grub-editenv blocks.
    let listed = Command::new("grub-editenv")
        .arg(esp.join("ab1/env"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "ab_active=A\nab_trial=N\nab_tries=0\nab_fail=N\n"
    );

    ok(esp, &["arm", "B", "--tries", "2"]);
    assert_eq!(
        json(esp),
        r#"{"active":"A","trial":"B","tries":2,"fail":null,"source":"1","repaired":false}"#
    );
    assert_eq!(copy(esp, 1), copy(esp, 2));
    assert!(refused(esp, &["arm", "B"]).contains("already armed"));
    assert!(refused(esp, &["confirm", "A"]).contains("not on trial"));
    assert!(refused(esp, &["rollback"]).contains("trial of slot B is armed"));
    ok(esp, &["confirm", "B"]);
    assert_eq!(state(esp, 2), AbState::new(Slot::B));
    assert!(ok(esp, &["confirm", "B"]).contains("already committed"));

    assert!(refused(esp, &["arm", "B"]).contains("committed slot"));
    assert!(refused(esp, &["arm", "A", "--tries", "0"]).contains("between 1 and 9"));
    ok(esp, &["arm", "A"]);
    assert_eq!(state(esp, 1).tries, 3, "default tries");
    ok(esp, &["mark-failed", "A"]);
    assert_eq!(
        json(esp),
        r#"{"active":"B","trial":null,"tries":0,"fail":"A","source":"1","repaired":false}"#
    );
    ok(esp, &["rollback"]);
    assert_eq!(state(esp, 1), AbState::new(Slot::A));
    assert_eq!(state(esp, 2), AbState::new(Slot::A));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["arm"][..],
        &["arm", "C"],
        &["frobnicate"],
        &["arm", "B", "--tries", "x"],
        &["status", "--bogus"],
    ] {
        assert_eq!(bootctl(dir.path(), args).status.code(), Some(2), "{args:?}");
    }
    let help = ok(dir.path(), &["--help"]);
    assert!(help.contains("mark-failed SLOT") && help.contains("EXIT STATUS"));
}

#[test]
fn init_refuses_to_clobber_a_valid_state() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init", "--active", "B"]);
    assert!(refused(esp, &["init"]).contains("--force"));
    ok(esp, &["init", "--force"]);
    assert_eq!(state(esp, 1).active, Slot::A);
}

#[test]
fn zeroed_copy1_reads_copy2_and_is_repaired_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    ok(esp, &["arm", "B"]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(esp.join("ab1/env"))
        .unwrap();
    f.write_all_at(&[0u8; 1024], 0).unwrap();
    let inode = f.metadata().unwrap().ino();
    drop(f);
    assert_eq!(
        ok(esp, &["status", "--json", "--no-repair"]).trim_end(),
        r#"{"active":"A","trial":"B","tries":3,"fail":null,"source":"2","repaired":false}"#
    );
    assert_eq!(copy(esp, 1), vec![0u8; 1024], "--no-repair wrote");
    // The next write repairs copy 1 from copy 2 in place.
    ok(esp, &["confirm", "B"]);
    assert_eq!(state(esp, 1), AbState::new(Slot::B));
    assert_eq!(copy(esp, 1), copy(esp, 2));
    assert_eq!(std::fs::metadata(esp.join("ab1/env")).unwrap().ino(), inode);
}

#[test]
fn status_repairs_a_stale_copy2() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    let stale = copy(esp, 2);
    ok(esp, &["arm", "B"]);
    // A power cut between the two writes leaves copy 2 one state behind.
    std::fs::write(esp.join("ab2/env"), &stale).unwrap();
    assert!(json(esp).ends_with(r#""source":"1","repaired":true}"#));
    assert_eq!(copy(esp, 1), copy(esp, 2));
    assert!(json(esp).ends_with(r#""repaired":false}"#));
}

#[test]
fn both_copies_broken_reports_default_and_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    for n in [1, 2] {
        let mut block = copy(esp, n);
        envblk::set(&mut block, b"ab_tries", b"Q").unwrap();
        std::fs::write(esp.join(format!("ab{n}/env")), &block).unwrap();
    }
    let before = (copy(esp, 1), copy(esp, 2));
    assert_eq!(
        bootctl(esp, &["--default", "B", "status", "--json"]).stdout,
        br#"{"active":"B","trial":null,"tries":0,"fail":null,"source":"default","repaired":false}
"#
    );
    let reason = refused(esp, &["arm", "B"]);
    assert!(
        reason.contains("copy 1: invalid (variable ab_tries has an invalid value)"),
        "{reason}"
    );
    assert!(refused(esp, &["repair"]).contains("init --force"));
    assert_eq!(
        (copy(esp, 1), copy(esp, 2)),
        before,
        "a refused command wrote"
    );
    ok(esp, &["init", "--force", "--active", "B"]);
    assert_eq!(state(esp, 1), AbState::new(Slot::B));
}

#[test]
fn missing_copy_is_recreated_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init", "--active", "B"]);
    std::fs::remove_file(esp.join("ab2/env")).unwrap();
    assert!(ok(esp, &["repair"]).contains("repaired from copy 1"));
    assert_eq!(copy(esp, 1), copy(esp, 2));
    assert!(ok(esp, &["repair"]).contains("nothing to do"));
}

/// A copy far larger than any env block (a 64 GiB sparse file: whoever can write the ESP, or
/// a corrupt FAT) is not read whole: status comes from the other copy, a write refuses and
/// names the file, nothing is written; removed, it is created afresh. (Read whole before:
/// under a 6 GB address-space limit `bootctl status` failed.)
#[test]
fn a_huge_copy_is_not_read_whole_and_a_write_refuses_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    ok(esp, &["arm", "B"]);
    let huge = esp.join("ab1/env");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let out = bootctl(esp, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        r#"{"active":"A","trial":"B","tries":3,"fail":null,"source":"2","repaired":false}"#
    );
    let warning = String::from_utf8(out.stderr).unwrap();
    assert!(warning.contains("larger than 65536 bytes"), "{warning}");
    let before = copy(esp, 2);
    let reason = refused(esp, &["confirm", "B"]);
    assert!(
        reason.contains(&huge.display().to_string()) && reason.contains("remove it"),
        "{reason}"
    );
    assert_eq!(copy(esp, 2), before, "a refused write wrote copy 2");
    assert_eq!(std::fs::metadata(&huge).unwrap().len(), 64 << 30);
    std::fs::remove_file(&huge).unwrap();
    ok(esp, &["confirm", "B"]);
    assert_eq!(state(esp, 1), AbState::new(Slot::B));
    assert_eq!(copy(esp, 1), copy(esp, 2));
}

#[test]
fn wrong_size_copy_is_rebuilt_at_its_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    ok(esp, &["init"]);
    std::fs::write(esp.join("ab2/env"), vec![b'z'; 2048]).unwrap();
    ok(esp, &["repair"]);
    let c2 = copy(esp, 2);
    assert_eq!(c2.len(), 2048, "a repair never changes the file's size");
    assert_eq!(AbState::decode_strict(&c2).unwrap(), AbState::new(Slot::A));
}

#[test]
fn grub_cfg_options() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ok(
        dir.path(),
        &[
            "grub-cfg",
            "--cmdline",
            "console=ttyS0",
            "--part-a",
            "5",
            "--part-b",
            "7",
            "--timeout",
            "0",
        ],
    );
    assert!(cfg.contains("set timeout=0\n"));
    assert!(cfg.contains("(${ab_disk},gpt5)/boot/vmlinuz os.slot=A $ab_flag_A console=ttyS0"));
    assert!(cfg.contains("(${ab_disk},gpt7)/boot/initramfs.img"));
    assert_eq!(
        bootctl(dir.path(), &["grub-cfg", "--part-a", "3"])
            .status
            .code(),
        Some(2)
    );
}
