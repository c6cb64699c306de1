//! PERSIST growth on a disk image made by the real sgdisk, then made
//! bigger: `sgdisk -v` finds the grown table sound, PERSIST ends at the
//! disk's last usable 1 MiB boundary, a second run changes nothing, and a
//! table that is not sound is refused without a byte written.

use initramfs::gpt::{self, SECTOR};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sgdisk(args: &[&str], disk: &Path) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .expect("sgdisk (Debian package gdisk)");
    assert!(
        out.status.success(),
        "sgdisk {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 96 MiB disk laid out as os-image does (ESP, ROOT-A, ROOT-B, PERSIST).
fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    File::create(&path).unwrap().set_len(96 << 20).unwrap();
    sgdisk(
        &[
            "-o",
            "-n",
            "1:2048:+8M",
            "-c",
            "1:ESP",
            "-n",
            "2:0:+24M",
            "-c",
            "2:ROOT-A",
            "-n",
            "3:0:+24M",
            "-c",
            "3:ROOT-B",
            "-n",
            "4:0:0",
            "-c",
            "4:PERSIST",
        ],
        &path,
    );
    path
}

fn last_sector(disk: &Path, n: u32) -> u64 {
    let info = sgdisk(&["-i", &n.to_string()], disk);
    info.lines()
        .find_map(|l| l.strip_prefix("Last sector: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{info}"))
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn persist_grows_to_the_end_of_a_bigger_disk_and_the_table_stays_sound() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path());
    let before = last_sector(&path, 4);
    let root_b = last_sector(&path, 3);
    let size = 256u64 << 20;
    open(&path).set_len(size).unwrap();
    let sectors = size / SECTOR;
    let grown = gpt::grow(&open(&path), sectors, "PERSIST")
        .unwrap()
        .expect("grown");
    assert_eq!(grown.number, 4);
    assert_eq!(grown.old_last, before);
    // 33 sectors of backup table at the end, then down to a 1 MiB boundary.
    assert_eq!(grown.new_last, (sectors - 33) / 2048 * 2048 - 1);
    assert_eq!(last_sector(&path, 4), grown.new_last);
    let verify = sgdisk(&["-v"], &path);
    assert!(verify.contains("No problems found"), "{verify}");
    // The other partitions did not move.
    assert_eq!(last_sector(&path, 3), root_b);
    assert!(gpt::grow(&open(&path), sectors, "PERSIST")
        .unwrap()
        .is_none());
}

#[test]
fn nothing_is_written_when_persist_is_not_last_or_the_table_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path());
    open(&path).set_len(256 << 20).unwrap();
    let sectors = (256u64 << 20) / SECTOR;
    // ROOT-B is not the last partition.
    let original = std::fs::read(&path).unwrap();
    assert!(gpt::grow(&open(&path), sectors, "ROOT-B")
        .unwrap()
        .is_none());
    assert_eq!(std::fs::read(&path).unwrap(), original);
    // A flipped byte in the primary header, then in the entries.
    for at in [512 + 40, 1024 + 3 * 128 + 40] {
        let mut bytes = original.clone();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = gpt::grow(&open(&path), sectors, "PERSIST").unwrap_err();
        assert!(err.contains("CRC mismatch"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "written despite {err}"
        );
    }
    // Growth below the threshold is not worth a write.
    std::fs::write(&path, &original).unwrap();
    let small = (96u64 << 20) / SECTOR + gpt::MIN_GROWTH / 2;
    open(&path).set_len(small * SECTOR).unwrap();
    assert!(gpt::grow(&open(&path), small, "PERSIST").unwrap().is_none());
}
