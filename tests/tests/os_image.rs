//! `os-image` + `os-init` on real firmware, GRUB and kernel: disks built from
//! demo bundles boot the right slot and version; a trial is confirmed in the
//! initramfs or caught there when the root is broken; /var survives reboots.

use bootctl::record::SlotState;
use bootctl::state::AbState;
use bootctl::Slot;
use e2e::disk::{self, Disk};
use e2e::qemu::{Console, Machine};
use e2e::run;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The demo powers off once it has printed its line, so each boot ends.
const CMDLINE: &str = "console=ttyS0 panic=10 os.demo=poweroff";

struct Fixture {
    os_image: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
}

/// Demo root filesystems and bundles for versions 1 and 2, built once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let os_image = e2e::host_binary("image-builder", "os-image");
        let os_init = e2e::musl_binary("initramfs", "os-init");
        // Beside os-image in its target dir may be a glibc os-agent (another
        // test's host build), which demo-rootfs refuses: name the static one.
        let os_agent = e2e::musl_binary("agent", "os-agent");
        let dir = e2e::fixture_dir().join("os-image");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for v in ["1", "2"] {
            let rootfs = dir.join(format!("rootfs-v{v}"));
            run(Command::new(&os_image)
                .args(["demo-rootfs", "--version", v, "--kernel-deb"])
                .arg(e2e::kernel_deb())
                .arg("--agent")
                .arg(&os_agent)
                .arg("--out")
                .arg(&rootfs));
            run(Command::new(&os_image)
                .args(["bundle", "--version", v, "--rootfs"])
                .arg(&rootfs)
                .arg("--out")
                .arg(dir.join("bundles"))
                .arg("--os-init")
                .arg(&os_init));
        }
        let manifest = |v: &str| dir.join(format!("bundles/os-{v}.manifest.json"));
        Fixture {
            os_image,
            v1: manifest("1"),
            v2: manifest("2"),
        }
    })
}

fn build_disk(dir: &Path, args: &[&str]) -> PathBuf {
    build_disk_as(dir, "disk.img", args)
}

fn build_disk_as(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let f = fixture();
    let out = dir.join(name);
    run(Command::new(&f.os_image)
        .arg("disk")
        .arg("--bundle")
        .arg(&f.v1)
        .args(["--cmdline", CMDLINE])
        .args(args)
        .arg("--out")
        .arg(&out));
    out
}

/// `sgdisk -v` and a read-only fsck of every partition that holds a filesystem.
fn check_disk(image: &Path, ext4_parts: &[u32]) {
    let verify = run(Command::new("sgdisk").arg("-v").arg(image));
    assert!(verify.contains("No problems found"), "{verify}");
    let part = tempfile::NamedTempFile::new().unwrap();
    disk::extract_partition(image, 1, part.path());
    run(Command::new("fsck.fat").arg("-n").arg(part.path()));
    for &n in ext4_parts {
        disk::extract_partition(image, n, part.path());
        run(Command::new("e2fsck").arg("-fn").arg(part.path()));
    }
}

/// v1 in A, v2 in B armed for 3 trial boots that os-init confirms.
fn armed_b_disk(dir: &Path) -> PathBuf {
    let v2 = fixture().v2.to_str().unwrap();
    build_disk(
        dir,
        &[
            "--bundle-b",
            v2,
            "--arm",
            "B",
            "--tries",
            "3",
            "--confirm",
            "initramfs",
        ],
    )
}

fn env_state(image: &Path) -> (AbState, AbState) {
    let esp = Disk::open(image);
    let decode = |p| AbState::decode_strict(&esp.read_esp(p)).expect("valid env copy");
    (decode("ab1/env"), decode("ab2/env"))
}

fn demo_line(c: &Console) -> &str {
    c.line("OS-DEMO ")
        .unwrap_or_else(|| panic!("no OS-DEMO line in {}", c.log.display()))
}

#[test]
fn plain_disk_is_clean_and_boots_version_1_from_a() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_disk(dir.path(), &[]);
    check_disk(&image, &[2, 4]);
    assert_eq!(disk::slot_record(&image, Slot::A).state, SlotState::Good);
    assert_eq!(disk::slot_record(&image, Slot::B).state, SlotState::Empty);
    // Slot A's chunk index is the manifest of the bundle written to it.
    let index = disk::persist_file(
        &image,
        &bootctl::record::index_path(Path::new("/"), Slot::A),
    );
    let bundle = std::fs::read_to_string(&fixture().v1).unwrap();
    assert_eq!(
        wire::manifest::Manifest::parse(&index).unwrap(),
        wire::manifest::Manifest::parse(&bundle).unwrap()
    );
    let none = disk::persist_file(
        &image,
        &bootctl::record::index_path(Path::new("/"), Slot::B),
    );
    assert!(
        none.trim().is_empty(),
        "slot B holds no image but has an index: {none}"
    );

    let mut m = Machine::new(&image, "os_image-plain");
    let c = m.boot_disk(BOOT_TIMEOUT);
    assert!(
        demo_line(&c).starts_with("OS-DEMO version=1 slot=A "),
        "{}",
        demo_line(&c)
    );
    // The booted root slot is read-only: the demo's write to / failed.
    assert!(demo_line(&c).ends_with(" root=ro"), "{}", demo_line(&c));
    assert_eq!(c.param("os.trial"), None);
}

#[test]
fn trial_of_b_confirmed_in_initramfs_stays_committed_and_var_persists() {
    let dir = tempfile::tempdir().unwrap();
    let image = armed_b_disk(dir.path());
    check_disk(&image, &[2, 3, 4]);
    assert_eq!(disk::slot_record(&image, Slot::B).state, SlotState::Written);
    let mut m = Machine::new(&image, "os_image-confirm");
    let c = m.boot_disk(BOOT_TIMEOUT);
    assert_eq!(
        (c.param("os.slot"), c.param("os.trial")),
        (Some("B"), Some("1"))
    );
    assert!(
        demo_line(&c).starts_with("OS-DEMO version=2 slot=B boots=1 "),
        "{}",
        demo_line(&c)
    );
    let (c1, c2) = env_state(&image);
    assert_eq!(c1, AbState::new(Slot::B), "os-init did not commit B");
    assert_eq!(c2, c1);
    assert_eq!(disk::slot_record(&image, Slot::B).state, SlotState::Good);

    let c = m.boot_disk(BOOT_TIMEOUT);
    assert_eq!((c.param("os.slot"), c.param("os.trial")), (Some("B"), None));
    // /var is on PERSIST: the boot log written on the first boot is still there.
    assert!(
        demo_line(&c).starts_with("OS-DEMO version=2 slot=B boots=2 "),
        "{}",
        demo_line(&c)
    );
}

#[test]
fn broken_root_in_b_fails_its_first_trial_and_a_boots_next() {
    let dir = tempfile::tempdir().unwrap();
    let image = armed_b_disk(dir.path());
    // Damage the image in B after it was written and verified: its init is gone.
    let part = dir.path().join("root-b.img");
    disk::extract_partition(&image, 3, &part);
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("rm /sbin/init")
        .arg(&part));
    disk::replace_partition(&image, 3, &part);

    let mut m = Machine::new(&image, "os_image-broken");
    let c = m.boot_disk(BOOT_TIMEOUT);
    assert_eq!(
        (c.param("os.slot"), c.param("os.trial")),
        (Some("B"), Some("1"))
    );
    assert!(
        c.line("OS-DEMO ").is_none(),
        "the broken root got as far as its init"
    );
    let (c1, c2) = env_state(&image);
    let failed = AbState {
        active: Slot::A,
        trial: None,
        tries: 0,
        fail: Some(Slot::B),
    };
    assert_eq!((c1, c2), (failed, failed), "os-init did not mark B failed");
    assert_eq!(disk::slot_record(&image, Slot::B).state, SlotState::Failed);

    // One trial boot, not three: the next boot is A, with the failure on record.
    let c = m.boot_disk(BOOT_TIMEOUT);
    assert_eq!((c.param("os.slot"), c.param("os.trial")), (Some("A"), None));
    assert!(
        demo_line(&c).starts_with("OS-DEMO version=1 slot=A "),
        "{}",
        demo_line(&c)
    );
    assert_eq!(env_state(&image).0, failed);
}

#[test]
fn disk_refuses_an_image_larger_than_the_slot_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let out = dir.path().join("disk.img");
    let result = Command::new(&f.os_image)
        .arg("disk")
        .arg("--bundle")
        .arg(&f.v1)
        .args(["--slot-size", "1M", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(err.contains("larger than the slot"), "{err}");
    assert!(!out.exists(), "a refused build left {}", out.display());
}

#[test]
fn demo_rootfs_refuses_an_os_agent_that_needs_a_c_library() {
    let os_image = e2e::host_binary("image-builder", "os-image");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs");
    let o = Command::new(&os_image)
        .args(["demo-rootfs", "--version", "1", "--kernel-deb"])
        .arg(e2e::kernel_deb())
        .args(["--agent", "/bin/true", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/bin/true is dynamically linked") && stderr.contains("`make bins`"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused build left {}", out.display());
}

#[test]
fn a_qcow2_disk_boots() {
    let dir = tempfile::tempdir().unwrap();
    let image = build_disk_as(dir.path(), "disk.qcow2", &["--format", "qcow2"]);
    let info = run(Command::new("qemu-img").arg("info").arg(&image));
    assert!(info.contains("file format: qcow2"), "{info}");
    let mut m = Machine::new(&image, "os_image-qcow2");
    let c = m.boot_disk(BOOT_TIMEOUT);
    assert!(
        demo_line(&c).starts_with("OS-DEMO version=1 slot=A "),
        "{}",
        demo_line(&c)
    );
}

#[test]
fn disk_is_byte_identical_when_built_twice_from_the_same_inputs() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let out = dir.path().join(name);
        run(Command::new(&f.os_image)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("disk")
            .arg("--bundle")
            .arg(&f.v1)
            .arg("--bundle-b")
            .arg(&f.v2)
            .args(["--arm", "B", "--cmdline", CMDLINE, "--out"])
            .arg(&out));
        std::fs::read(out).unwrap()
    };
    let first = build("one.img");
    // FAT keeps times in 2-second steps: a later build must not differ by its clock.
    std::thread::sleep(Duration::from_millis(2100));
    let second = build("two.img");
    assert_eq!(first.len(), second.len());
    let differ = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} bytes differ between two builds");
}
