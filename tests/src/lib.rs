//! Harness for the end-to-end tests: fixtures (kernel, test initramfs, static
//! binaries, A/B disk images) and a QEMU runner that boots real OVMF + GRUB +
//! a Debian kernel under TCG and reads markers from the serial console log.
//!
//! Fixtures are produced by the committed scripts under `scripts/` and by
//! building this workspace's own binaries; nothing is checked in.

pub mod cluster;
pub mod console;
pub mod demo;
pub mod disk;
pub mod http;
pub mod nbd;
pub mod node_demo;
pub mod node_image;
pub mod powercut;
pub mod qemu;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where slow-to-build fixtures shared by all tests of one run are kept.
pub fn fixture_dir() -> PathBuf {
    let dir = repo_root().join("target/e2e-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Debian kernel cache made by `scripts/fetch-kernel.sh`.
pub fn kernel_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let out = run(&mut Command::new(
            repo_root().join("scripts/fetch-kernel.sh"),
        ));
        PathBuf::from(out.trim())
    })
}

pub fn vmlinuz() -> PathBuf {
    kernel_cache().join("vmlinuz")
}

/// A workspace binary built statically for the guest (musl) with the `node`
/// profile, as `make bins` ships it, in its own target directory so this
/// nested cargo never waits on the outer one's lock.
pub fn musl_binary(package: &str, bin: &str) -> PathBuf {
    let target_dir = repo_root().join("target/e2e-musl");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo_root())
        .args([
            "build",
            "--profile",
            "node",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    run(&mut cmd);
    target_dir.join("x86_64-unknown-linux-musl/node").join(bin)
}

/// A workspace binary built for the host, in its own target directory.
pub fn host_binary(package: &str, bin: &str) -> PathBuf {
    let target_dir = repo_root().join("target/e2e-host");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo_root())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target_dir);
    run(&mut cmd);
    target_dir.join("release").join(bin)
}

/// The Debian kernel package the kernel cache was unpacked from.
pub fn kernel_deb() -> PathBuf {
    let dl = kernel_cache().join("dl");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dl)
        .unwrap_or_else(|e| panic!("{}: {e}", dl.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "expected one kernel package in {}",
        dl.display()
    );
    debs.remove(0)
}

/// The test initramfs (`scripts/mk-test-initramfs.sh`) with a static `bootctl`
/// in its /bin, built once per test run.
pub fn test_initramfs() -> &'static Path {
    static INITRAMFS: OnceLock<PathBuf> = OnceLock::new();
    INITRAMFS.get_or_init(|| {
        let bootctl = musl_binary("bootctl", "bootctl");
        let out = fixture_dir().join("test-initramfs.cpio.gz");
        run(
            Command::new(repo_root().join("scripts/mk-test-initramfs.sh"))
                .arg(&out)
                .arg(&bootctl),
        );
        out
    })
}
