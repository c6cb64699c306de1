//! The EFI system partition as a FAT image file, filled with mtools: GRUB for
//! UEFI x86_64, its grub.cfg, and the two A/B env copies (DESIGN.md §3-§4).

use crate::tools;
use anyhow::{bail, Context, Result};
use bootctl::state::AbState;
use bootctl::store::COPY_PATHS;
use std::path::Path;

/// Where Debian's grub-efi-amd64-bin installs the x86_64-efi modules.
const GRUB_EFI_MODULES: &str = "/usr/lib/grub/x86_64-efi";

/// GRUB modules built into BOOTX64.EFI: one file on the ESP, no module
/// directory to drift out of step. part_gpt/fat/ext2 read the disk;
/// loadenv, test and regexp run the A/B script; the video modules keep GRUB
/// from booting "blind".
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "linux",
    "configfile",
    "loadenv",
    "regexp",
    "test",
    "echo",
    "efi_gop",
    "efi_uga",
    "all_video",
    "search",
    "halt",
    "reboot",
    "sleep",
    "true",
    "minicmd",
    "gzio",
];

/// Builds the ESP image at `path`: `size` bytes, FAT32, `hidden_sectors` set
/// to the partition's start sector as firmware-made ESPs have it.
pub fn build(
    path: &Path,
    size: u64,
    hidden_sectors: u64,
    grub_cfg: &str,
    state: &AbState,
    volume_id: &str,
    time: u64,
) -> Result<()> {
    if !Path::new(GRUB_EFI_MODULES).join("linux.mod").exists() {
        bail!(
            "{GRUB_EFI_MODULES} has no GRUB modules: install the Debian package grub-efi-amd64-bin"
        );
    }
    let work = tempfile::tempdir().context("create temp dir")?;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("size {}", path.display()))?;
    drop(file);
    tools::run(
        tools::command("mkfs.vfat")?
            .args(["-F", "32", "-n", "ESP", "-h", &hidden_sectors.to_string()])
            .args(["--invariant", "-i", volume_id])
            .arg(path),
    )?;

    let efi = work.path().join("BOOTX64.EFI");
    tools::run(
        tools::command("grub-mkimage")?
            .args([
                "-O",
                "x86_64-efi",
                "-p",
                "/EFI/BOOT",
                "-d",
                GRUB_EFI_MODULES,
                "-o",
            ])
            .arg(&efi)
            .args(GRUB_MODULES),
    )?;
    let cfg = work.path().join("grub.cfg");
    std::fs::write(&cfg, grub_cfg).context("write grub.cfg")?;
    let env = work.path().join("env");
    std::fs::write(&env, state.to_block()).context("write env block")?;

    // mtools stamps directories with SOURCE_DATE_EPOCH; `mcopy -m` keeps the
    // files' own times, set to `time` too.
    tools::set_tree_mtime(work.path(), time)?;
    let epoch = time.to_string();
    let image = path.display().to_string();
    let mut mmd = tools::command("mmd")?;
    mmd.env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-i", &image, "::EFI", "::EFI/BOOT"]);
    for copy in COPY_PATHS {
        mmd.arg(format!(
            "::{}",
            copy.rsplit_once('/').map_or(copy, |(dir, _)| dir)
        ));
    }
    tools::run(&mut mmd)?;
    let put = |src: &Path, dest: &str| -> Result<()> {
        tools::run(
            tools::command("mcopy")?
                .env("SOURCE_DATE_EPOCH", &epoch)
                .args(["-m", "-i", &image])
                .arg(src)
                .arg(format!("::{dest}")),
        )?;
        Ok(())
    };
    put(&efi, "EFI/BOOT/BOOTX64.EFI")?;
    put(&cfg, "EFI/BOOT/grub.cfg")?;
    for copy in COPY_PATHS {
        put(&env, copy)?;
    }
    Ok(())
}
