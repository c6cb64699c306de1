//! Test disks: GPT with ESP, ROOT-A, ROOT-B and PERSIST, built without root by
//! `scripts/mk-test-disk.sh`, and access to the ESP's files through mtools.

use crate::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A disk image and the byte offsets of its partitions.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub esp_offset: u64,
}

impl Disk {
    /// Builds a disk whose ESP holds `grub_cfg` and the given extra files
    /// (`(path on the ESP, contents)`), with `initramfs` and the test kernel in
    /// both root slots.
    pub fn build(
        out: &Path,
        grub_cfg: &str,
        initramfs: &Path,
        esp_files: &[(&str, &[u8])],
    ) -> Disk {
        let work = tempfile::tempdir().unwrap();
        let cfg = work.path().join("grub.cfg");
        std::fs::write(&cfg, grub_cfg).unwrap();
        let mut cmd = Command::new(crate::repo_root().join("scripts/mk-test-disk.sh"));
        cmd.arg(out).arg(&cfg).arg(crate::vmlinuz()).arg(initramfs);
        for (i, (dest, bytes)) in esp_files.iter().enumerate() {
            let src = work.path().join(format!("esp-file-{i}"));
            std::fs::write(&src, bytes).unwrap();
            cmd.arg(format!("{dest}={}", src.display()));
        }
        let vars = run(&mut cmd);
        let esp_offset = vars
            .lines()
            .find_map(|l| l.strip_prefix("ESP_OFFSET="))
            .and_then(|v| v.trim().parse().ok())
            .expect("mk-test-disk.sh printed no ESP_OFFSET");
        Disk {
            path: out.to_path_buf(),
            esp_offset,
        }
    }

    fn mtools_image(&self) -> String {
        format!("{}@@{}", self.path.display(), self.esp_offset)
    }

    /// Reads a file from the ESP.
    pub fn read_esp(&self, path: &str) -> Vec<u8> {
        let out = Command::new("mcopy")
            .args(["-n", "-i", &self.mtools_image(), &format!("::{path}"), "-"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mcopy ::{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Replaces a file on the ESP (test set-up only: this is not an in-place write).
    pub fn write_esp(&self, path: &str, bytes: &[u8]) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        run(Command::new("mcopy")
            .args(["-o", "-i", &self.mtools_image()])
            .arg(tmp.path())
            .arg(format!("::{path}")));
    }

    /// The file's FAT cluster chain and its directory entry (size, date), which
    /// together say where and how big it is on disk.
    pub fn esp_placement(&self, path: &str) -> String {
        let chain =
            run(Command::new("mshowfat").args(["-i", &self.mtools_image(), &format!("::{path}")]));
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let listing =
            run(Command::new("mdir").args(["-i", &self.mtools_image(), &format!("::{dir}/")]));
        let stem = name.split('.').next().unwrap().to_ascii_uppercase();
        let entry = listing
            .lines()
            .find(|l| {
                l.split_whitespace().next().map(str::to_ascii_uppercase) == Some(stem.clone())
            })
            .unwrap_or_else(|| panic!("no directory entry for {path} in:\n{listing}"));
        // Keep name and size; the time stamp changes on every write.
        let fields: Vec<&str> = entry.split_whitespace().take(2).collect();
        format!("{} {}", chain.trim(), fields.join(" "))
    }
}

/// Byte offset and length of GPT partition `number` of `image`, from `sgdisk -i`.
pub fn partition(image: &Path, number: u32) -> (u64, u64) {
    let info = run(Command::new("sgdisk")
        .arg("-i")
        .arg(number.to_string())
        .arg(image));
    let sector = |key: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in sgdisk -i {number}:\n{info}"))
    };
    let first = sector("First sector: ");
    let last = sector("Last sector: ");
    (first * 512, (last - first + 1) * 512)
}

/// Copies partition `number` of `image` out to `out`.
pub fn extract_partition(image: &Path, number: u32, out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let (start, len) = partition(image, number);
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(start)).unwrap();
    let mut dst = std::fs::File::create(out).unwrap();
    std::io::copy(&mut src.take(len), &mut dst).unwrap();
    dst.flush().unwrap();
}

/// Writes `part` (a partition image) back over partition `number` of `image`.
pub fn replace_partition(image: &Path, number: u32, part: &Path) {
    use std::io::{Seek, SeekFrom};
    let (start, len) = partition(image, number);
    assert_eq!(
        std::fs::metadata(part).unwrap().len(),
        len,
        "partition image size"
    );
    let mut dst = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    dst.seek(SeekFrom::Start(start)).unwrap();
    std::io::copy(&mut std::fs::File::open(part).unwrap(), &mut dst).unwrap();
}

impl Disk {
    /// An existing A/B disk image; the ESP is partition 1.
    pub fn open(path: &Path) -> Disk {
        Disk {
            path: path.to_path_buf(),
            esp_offset: partition(path, 1).0,
        }
    }
}

/// The slot record of `slot` on PERSIST (partition 4) of `image`, read with
/// debugfs, without mounting.
pub fn slot_record(image: &Path, slot: bootctl::Slot) -> bootctl::record::SlotRecord {
    let text = persist_file(image, &bootctl::record::record_path(Path::new("/"), slot));
    bootctl::record::SlotRecord::parse(&text).unwrap()
}

/// The text of `path` (absolute within PERSIST) on partition 4 of `image`,
/// read with debugfs; empty when there is no such file.
pub fn persist_file(image: &Path, path: &Path) -> String {
    let part = tempfile::NamedTempFile::new().unwrap();
    extract_partition(image, 4, part.path());
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {}", path.display()))
        .arg(part.path()))
}
