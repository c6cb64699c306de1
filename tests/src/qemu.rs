//! Boots a disk image in QEMU (OVMF firmware, TCG) with the serial console
//! logged to a file, and reads the markers the test initramfs prints.
//!
//! The test initramfs runs one shell command per boot, taken from a second
//! virtio disk, and powers off; so a "boot" here is one run of QEMU from
//! firmware to power-off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One machine: a disk and its firmware variable store, kept across boots.
pub struct Machine {
    pub disk: PathBuf,
    dir: PathBuf,
    vars: PathBuf,
    boots: usize,
}

/// What one boot printed on the serial console.
#[derive(Debug, Clone)]
pub struct Console {
    pub log: PathBuf,
    pub text: String,
    pub elapsed: Duration,
}

/// A fresh copy of OVMF's variable store in `dir`, for one machine.
pub fn fresh_vars(dir: &Path) -> PathBuf {
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap_or_else(|e| panic!("{OVMF_VARS}: {e} (install ovmf)"));
    vars
}

/// What every test boot shares: TCG, 1 GiB, OVMF with its own variable store
/// `vars`, a VGA device (without one GRUB prints a video-mode error on every
/// boot) and `disk` as the first virtio disk.
pub fn base_command(disk: &Path, vars: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "1024", "-nodefaults", "-vga", "std"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(drive(disk));
    qemu
}

/// The boot disk's `-drive` value: a file, or an NBD server's Unix socket
/// (a path ending in `.sock`, see `nbd.rs`).
fn drive(disk: &Path) -> String {
    if disk.extension().and_then(|e| e.to_str()) == Some("sock") {
        return format!(
            "if=virtio,format=raw,file=nbd+unix:///?socket={}",
            disk.display()
        );
    }
    format!(
        "if=virtio,format={},file={}",
        disk_format(disk),
        disk.display()
    )
}

/// `qcow2` for a `.qcow2` file (what `os-image disk --format qcow2` writes), else `raw`.
pub fn disk_format(disk: &Path) -> &'static str {
    match disk.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        _ => "raw",
    }
}

impl Machine {
    /// A machine booting `disk`. Its firmware variables and one console log per
    /// boot go to `target/e2e-logs/NAME/` (emptied first), which outlives the
    /// test so a failure can be read afterwards.
    pub fn new(disk: &Path, name: &str) -> Machine {
        let dir = crate::repo_root().join("target/e2e-logs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let vars = fresh_vars(&dir);
        Machine {
            disk: disk.to_path_buf(),
            dir,
            vars,
            boots: 0,
        }
    }

    /// Boots once, running `command` in the test initramfs (empty: none), and
    /// waits for the guest to power off.
    pub fn boot(&mut self, command: &str, timeout: Duration) -> Console {
        let cmd_disk = self.dir.join("cmd.img");
        // 1 MiB: a 4 KiB disk makes the guest kernel log partition read errors.
        let mut bytes = vec![0u8; 1 << 20];
        assert!(
            command.len() < 4096,
            "command too long for the command disk"
        );
        bytes[..command.len()].copy_from_slice(command.as_bytes());
        std::fs::write(&cmd_disk, bytes).unwrap();
        self.run(Some(&cmd_disk), timeout)
    }

    /// Boots the disk alone once, until the guest powers off or reboots
    /// (`-no-reboot` turns a reboot into an exit).
    pub fn boot_disk(&mut self, timeout: Duration) -> Console {
        self.run(None, timeout)
    }

    fn run(&mut self, second_disk: Option<&Path>, timeout: Duration) -> Console {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.log", self.boots));
        let started = Instant::now();
        let mut qemu = base_command(&self.disk, &self.vars);
        qemu.args(["-nographic", "-no-reboot"]);
        // After the boot disk, so the guest sees it as vdb.
        if let Some(disk) = second_disk {
            qemu.arg("-drive")
                .arg(format!("if=virtio,format=raw,file={}", disk.display()));
        }
        let mut child = qemu
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start qemu-system-x86_64 (install qemu-system-x86)");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
                    .replace('\r', "");
                assert!(
                    status.success(),
                    "qemu exited with {status}; console:\n{}",
                    tail(&text)
                );
                return Console {
                    log,
                    text,
                    elapsed: started.elapsed(),
                };
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
                    .replace('\r', "");
                panic!(
                    "boot {} timed out after {timeout:?}; last console lines:\n{}",
                    self.boots,
                    tail(&text)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Console {
    /// The kernel command line, as the test initramfs (`CMDLINE: `) or the
    /// kernel itself (`Kernel command line: `) printed it.
    pub fn cmdline(&self) -> &str {
        self.text
            .lines()
            .find_map(|l| {
                l.strip_prefix("CMDLINE: ")
                    .or_else(|| l.split_once("] Kernel command line: ").map(|(_, c)| c))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no CMDLINE marker in {}:\n{}",
                    self.log.display(),
                    tail(&self.text)
                )
            })
    }

    /// The first console line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.text.lines().find(|l| l.starts_with(prefix))
    }

    /// The value of `key=` on the kernel command line.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// Output of the per-boot command and its exit status.
    pub fn command_output(&self) -> (String, i32) {
        let start = self
            .text
            .find("CMD-OUTPUT-BEGIN\n")
            .expect("the command did not run")
            + 17;
        let rest = &self.text[start..];
        let end = rest.find("CMD-RC: ").expect("no CMD-RC marker");
        let rc = rest[end + 8..]
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (rest[..end].to_owned(), rc)
    }
}
