//! PERSIST fills a disk larger than the image (issue 16; QEMU, OVMF, GRUB,
//! the Debian kernel): `os-image disk`'s image made 512 MiB bigger, as
//! when it is written to a larger drive. On the first boot os-init moves
//! the backup GPT to the end, extends PERSIST and grows its ext4 online;
//! the next boot changes nothing; afterwards `sgdisk -v` and `e2fsck -fn`
//! find the disk sound and the file system fills its partition.

use e2e::console::Interactive;
use e2e::demo::{self, Spec};
use e2e::disk;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);
const EXTRA: u64 = 512 << 20;

#[test]
fn persist_grows_into_a_bigger_disk_on_first_boot() {
    let dir = e2e::fixture_dir().join("persist-growth");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = demo::build_bundle_spec(&dir, &dir.join("bundles"), "1", &Spec::default());
    let art = demo::Artifacts {
        dir: dir.clone(),
        os_image: e2e::host_binary("image-builder", "os-image"),
        bundles: vec![v1],
    };
    let image = dir.join("node.img");
    art.build_disk(&image);
    let (_, before) = disk::partition(&image, 4);
    let size = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(size + EXTRA)
        .unwrap();

    let mut m = Interactive::start(
        &image,
        &e2e::repo_root().join("target/e2e-logs/persist-growth"),
    );
    let grew = m
        .wait_for("grew PERSIST (partition 4) from ", TIMEOUT)
        .unwrap();
    assert!(
        grew.contains(&format!("from {} to ", before >> 20)),
        "{grew}"
    );
    let fs = m
        .wait_for("grew the PERSIST file system from ", TIMEOUT)
        .unwrap();
    assert!(fs.contains(&format!("from {} to ", before >> 20)), "{fs}");
    m.wait_for("OS-DEMO version=1 slot=A", TIMEOUT).unwrap();
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    let (df, rc) = m.run("df -k /persist | tail -n 1", TIMEOUT).unwrap();
    assert_eq!(rc, 0, "{df}");
    let total_kib: u64 = df
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{df}"));
    assert!(
        total_kib << 10 > before + EXTRA * 3 / 4,
        "PERSIST holds {total_kib} KiB: {df}"
    );
    // Again: nothing left to grow.
    m.send_line("sync; reboot -f").unwrap();
    let second = m.wait_for("OS-DEMO version=1 slot=A", TIMEOUT).unwrap();
    assert!(!second.contains("grew"), "{second}");
    m.wait_for("after boot: ", TIMEOUT).unwrap();
    m.close();

    let verify = e2e::run(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");
    let (_, after) = disk::partition(&image, 4);
    assert!(after >= before + EXTRA - (2 << 20), "{before} -> {after}");
    let part = dir.join("persist.ext4");
    disk::extract_partition(&image, 4, &part);
    e2e::run(Command::new("e2fsck").arg("-fn").arg(&part));
    let super_block = e2e::run(Command::new("dumpe2fs").arg("-h").arg(&part));
    let field = |key: &str| -> u64 {
        super_block
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {super_block}"))
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        after,
        "the file system fills its partition"
    );
}
