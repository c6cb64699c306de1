//! `os-image disk`: a bootable GPT disk from one or two bundles.
//!
//! Each filesystem is built in a temporary file (FAT with mtools, ext4 with
//! `mkfs.ext4 -d`), then copied into its partition's place in the sparse disk
//! file; slot images are decompressed from the bundle straight into place and
//! verified chunk by chunk against the manifest. Nothing needs root.

use crate::cli::Format;
use crate::layout::{Layout, MIB};
use crate::manifest::{Manifest, ManifestFile};
use crate::{esp, tools, unpack};
use anyhow::{bail, Context, Result};
use bootctl::grubcfg::{self, GrubConfig};
use bootctl::record::{self, ConfirmPolicy, SlotRecord, SlotState};
use bootctl::state::AbState;
use bootctl::Slot;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Kernel command line both slots get unless told otherwise: serial and VGA
/// console, and reboot 10 s after a panic so GRUB's boot counting can act.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0 panic=10";

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub bundle: PathBuf,
    pub bundle_b: Option<PathBuf>,
    pub arm: Option<Slot>,
    pub tries: u8,
    pub size: Option<u64>,
    pub slot_size: Option<u64>,
    pub format: Format,
    pub cmdline: String,
    pub confirm: Option<ConfirmPolicy>,
    pub out: PathBuf,
}

/// Slot size when none is given: the larger image rounded up to 64 MiB.
fn default_slot_size(images: &[&Manifest]) -> u64 {
    let largest = images.iter().map(|m| m.image_size).max().unwrap_or(0);
    largest.div_ceil(64 * MIB).max(1) * 64 * MIB
}

pub fn run(opts: &DiskOptions) -> Result<()> {
    // Every tool before the first byte is written.
    for tool in [
        "sgdisk",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "grub-mkimage",
        "mkfs.ext4",
        "debugfs",
    ] {
        tools::find(tool)?;
    }
    if matches!(opts.format, Format::Qcow2) {
        tools::find("qemu-img")?;
    }
    let a = Manifest::load(&opts.bundle)?;
    let b = opts.bundle_b.as_deref().map(Manifest::load).transpose()?;
    let mut state = AbState::new(Slot::A);
    if let Some(slot) = opts.arm {
        if slot == Slot::B && b.is_none() {
            bail!("--arm B needs --bundle-b: slot B would be empty");
        }
        state
            .arm_trial(slot, opts.tries)
            .with_context(|| format!("--arm {slot} --tries {}", opts.tries))?;
    }
    let images: Vec<&Manifest> = std::iter::once(&a).chain(b.as_ref()).collect();
    let slot_size = opts.slot_size.unwrap_or_else(|| default_slot_size(&images));
    for m in &images {
        if m.image_size > slot_size {
            bail!(
                "the root image of {} ({} bytes) is larger than the slot ({slot_size} bytes); raise --slot-size",
                m.name,
                m.image_size
            );
        }
    }
    let layout = Layout::compute(slot_size, opts.size)?;
    // Every identifier and timestamp in the disk comes from the inputs and
    // SOURCE_DATE_EPOCH (else the build time): the same inputs and time give
    // the same bytes (docs/decisions.md, os-image).
    let now = build_time();
    let ids = Identifiers::of(&a, b.as_ref(), opts, now);

    let out_dir = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::tempdir_in(out_dir)
        .with_context(|| format!("create temp dir in {}", out_dir.display()))?;
    let raw = work.path().join("disk.raw");
    let disk = File::create(&raw).with_context(|| format!("create {}", raw.display()))?;
    disk.set_len(layout.total)?;
    layout.write_gpt(&raw, &ids.disk_guid, &ids.partition_guids)?;

    let cfg = GrubConfig {
        cmdline: opts.cmdline.clone(),
        ..GrubConfig::default()
    };
    let esp_file = work.path().join("esp.img");
    esp::build(
        &esp_file,
        layout.esp.size,
        layout.esp.start / 512,
        &grubcfg::render(&cfg).map_err(|e| anyhow::anyhow!("--cmdline: {e}"))?,
        &state,
        &ids.esp_volume_id,
        now,
    )?;
    let mut disk = OpenOptions::new().write(true).open(&raw)?;
    copy_sparse(&esp_file, &mut disk, layout.esp.start)?;
    std::fs::remove_file(&esp_file)?;

    log::info!(
        "writing slot A from {} (version {})",
        opts.bundle.display(),
        a.os_version
    );
    unpack::write_image(
        &a,
        &a.image_path(&opts.bundle),
        &mut disk,
        layout.root_a.start,
    )?;
    if let (Some(b), Some(path)) = (&b, &opts.bundle_b) {
        log::info!(
            "writing slot B from {} (version {})",
            path.display(),
            b.os_version
        );
        unpack::write_image(b, &b.image_path(path), &mut disk, layout.root_b.start)?;
    }

    let record_of = |slot: Slot, m: Option<&Manifest>, state: SlotState| match m {
        None => SlotRecord::empty(slot),
        Some(m) => SlotRecord {
            confirm: opts.confirm,
            ..m.slot_record(slot, state, now)
        },
    };
    // The installer vouches for the committed slot; slot B has yet to boot.
    let records = [
        record_of(Slot::A, Some(&a), SlotState::Good),
        record_of(Slot::B, b.as_ref(), SlotState::Written),
    ];
    let persist_file = work.path().join("persist.img");
    // Each slot's manifest as its chunk index: a node's first delta looks
    // the running slot's chunks up instead of reading the slot.
    let mut indexes = vec![(Slot::A, &a)];
    indexes.extend(b.as_ref().map(|b| (Slot::B, b)));
    build_persist(
        &persist_file,
        layout.persist.size,
        &records,
        &indexes,
        &ids.persist_uuid,
        now,
    )?;
    copy_sparse(&persist_file, &mut disk, layout.persist.start)?;
    disk.sync_all()?;
    drop(disk);

    let staged = match opts.format {
        Format::Raw => raw,
        Format::Qcow2 => {
            let q = work.path().join("disk.qcow2");
            tools::run(
                tools::command("qemu-img")?
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&q),
            )?;
            q
        }
    };
    std::fs::rename(&staged, &opts.out)
        .with_context(|| format!("move disk into place at {}", opts.out.display()))?;
    log::info!(
        "wrote {} ({} MiB, slots of {} MiB, {})",
        opts.out.display(),
        layout.total / MIB,
        slot_size / MIB,
        match state.trial {
            Some(t) => format!("trial of {t} armed for {} boot(s)", state.tries),
            None => "slot A committed".into(),
        }
    );
    Ok(())
}

/// SOURCE_DATE_EPOCH, else now: the slot records' `written_at` and every
/// timestamp in the ESP and PERSIST.
fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// The disk's identifiers, derived from what goes on it (the images, the boot
/// settings, the layout options and the time) instead of drawn at random.
struct Identifiers {
    disk_guid: String,
    /// GPT partition GUIDs by partition number 1..=4.
    partition_guids: [String; 4],
    /// FAT volume id (8 hex digits).
    esp_volume_id: String,
    persist_uuid: String,
}

impl Identifiers {
    fn of(a: &Manifest, b: Option<&Manifest>, opts: &DiskOptions, time: u64) -> Identifiers {
        let inputs = format!(
            "{}\0{}\0{:?}\0{}\0{:?}\0{:?}\0{:?}\0{}\0{time}",
            a.image_digest,
            b.map(|b| b.image_digest.to_string()).unwrap_or_default(),
            opts.arm,
            opts.tries,
            opts.size,
            opts.slot_size,
            opts.confirm,
            opts.cmdline,
        );
        let id = |purpose: &str| crate::ext4::derived_uuid(purpose, "disk", &inputs);
        Identifiers {
            disk_guid: id("gpt disk"),
            partition_guids: [1, 2, 3, 4].map(|n| id(&format!("gpt partition {n}"))),
            esp_volume_id: id("esp volume")[..8].to_owned(),
            persist_uuid: id("persist"),
        }
    }
}

/// PERSIST: ext4 holding the slot records, their chunk indexes and the
/// directories os-init binds,
/// with the given UUID and every timestamp `time`.
fn build_persist(
    path: &Path,
    size: u64,
    records: &[SlotRecord],
    indexes: &[(Slot, &Manifest)],
    uuid: &str,
    time: u64,
) -> Result<()> {
    let staging = tempfile::tempdir().context("create temp dir")?;
    for rec in records {
        record::write(staging.path(), rec)?;
    }
    for (slot, m) in indexes {
        record::write_atomic(
            &record::index_path(staging.path(), *slot),
            m.to_json().as_bytes(),
        )?;
    }
    for dir in ["var", "etc-overlay"] {
        std::fs::create_dir_all(staging.path().join(dir))?;
    }
    // mke2fs -d copies the staged files' times; the rest comes from the fake time.
    crate::tools::set_tree_mtime(staging.path(), time)?;
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(size)?;
    drop(file);
    let hash_seed = crate::ext4::derived_uuid("persist hash seed", "disk", uuid);
    tools::run(
        tools::command("mkfs.ext4")?
            .env("E2FSPROGS_FAKE_TIME", time.to_string())
            .args(["-q", "-F", "-L", "PERSIST", "-U", uuid, "-E"])
            .arg(format!("root_owner=0:0,hash_seed={hash_seed}"))
            .arg("-d")
            .arg(staging.path())
            .arg(path),
    )?;
    let work = tempfile::tempdir().context("create temp dir")?;
    crate::ext4::set_inode_times(path, time, false, work.path())?;
    crate::ext4::fsck(path)
}

/// Copies `src` into `disk` at `offset`, skipping all-zero blocks: the disk
/// file is fresh and sparse, so they are zero already.
fn copy_sparse(src: &Path, disk: &mut File, offset: u64) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            disk.seek(SeekFrom::Start(at))?;
            disk.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
