//! `grub.cmdline.next` set through os-agent (the real binary, run on the host
//! as slot A's agent against an ESP directory), then a real GRUB + OVMF boot
//! of slot B under QEMU: the argument is on the kernel command line, after the
//! built-in ones. The other slot's file is absent, which GRUB must tolerate
//! (every other GRUB test boots without args files).

use bootctl::grubcfg::{self, GrubConfig};
use bootctl::{AbState, Slot};
use e2e::disk::Disk;
use e2e::qemu::Machine;
use std::fs;
use std::process::Command;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn grub_cmdline_next_reaches_the_other_slots_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    let state = dir.path().join("persist");
    fs::create_dir_all(&esp).unwrap();
    fs::create_dir_all(&state).unwrap();
    let request = dir.path().join("request.json");
    fs::write(
        &request,
        r#"[{"configs":[{"model":"grub.cmdline.next","config_path":"",
            "contents":{"e2e.extra":{"value":"42","operation":""},
                        "panic":{"value":"7","operation":"update"}}}]}]"#,
    )
    .unwrap();
    let agent = e2e::host_binary("agent", "os-agent");
    let out = Command::new(&agent)
        .args(["--config", "/dev/null", "--booted", "A"])
        .args(["--root-a", "/dev/null", "--root-b", "/dev/null"])
        .arg("--esp")
        .arg(&esp)
        .arg("--state-dir")
        .arg(&state)
        .arg("configure")
        .arg("--file")
        .arg(&request)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !esp.join("ab/args-A").exists(),
        "only the other slot's file"
    );
    let args_b = fs::read(esp.join("ab/args-B")).unwrap();

    let cfg = GrubConfig {
        cmdline: "console=ttyS0 panic=-1".into(),
        timeout: 0,
        ..Default::default()
    };
    // Slot B committed, so GRUB boots it without a trial.
    let env = AbState::new(Slot::B).to_block();
    let disk = Disk::build(
        &dir.path().join("disk.img"),
        &grubcfg::render(&cfg).unwrap(),
        e2e::test_initramfs(),
        &[("ab1/env", &env), ("ab2/env", &env), ("ab/args-B", &args_b)],
    );
    let mut machine = Machine::new(&disk.path, "cmdline-next");
    let console = machine.boot("", BOOT_TIMEOUT);
    eprintln!("kernel command line: {}", console.cmdline());
    assert_eq!(console.param("os.slot"), Some("B"));
    assert_eq!(console.param("e2e.extra"), Some("42"));
    let words: Vec<&str> = console.cmdline().split_whitespace().collect();
    let builtin = words.iter().position(|w| *w == "panic=-1").unwrap();
    let extra = words.iter().position(|w| *w == "panic=7").unwrap();
    assert!(builtin < extra, "extra arguments come last: {words:?}");
    assert_eq!(disk.read_esp("ab/args-B"), args_b, "GRUB never writes it");
}
