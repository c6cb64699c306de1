//! Mounting: the kernel's API filesystems, the four A/B partitions, and the new
//! root's /persist, /var and /etc. Every disk mount is remembered so a failed
//! trial can unmount in reverse order before it reboots.

use crate::sys;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// vfat options that need only the nls modules the image builder ships
/// (nls_cp437, nls_ascii), whatever the kernel's configured defaults.
pub const ESP_OPTIONS: &str = "codepage=437,iocharset=ascii";
const ESP_FLAGS: libc::c_ulong = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
/// The ESP is mounted read-only and remounted read-write only for a state
/// change, so a boot that changes nothing leaves the FAT untouched (no dirty bit).
pub const ESP_RO_FLAGS: libc::c_ulong = ESP_FLAGS | sys::MS_RDONLY;

/// Mounts /proc, /sys, /dev (devtmpfs) and /run (tmpfs) under `root` (`/` in
/// the initramfs). A filesystem already mounted there (EBUSY) is fine.
pub fn mount_api_filesystems(root: &Path) -> io::Result<()> {
    let nosuid_nodev = sys::MS_NOSUID | sys::MS_NODEV;
    let table: [(&str, &str, libc::c_ulong, Option<&str>); 4] = [
        ("proc", "proc", nosuid_nodev | sys::MS_NOEXEC, None),
        ("sys", "sysfs", nosuid_nodev | sys::MS_NOEXEC, None),
        ("dev", "devtmpfs", sys::MS_NOSUID, Some("mode=0755")),
        ("run", "tmpfs", nosuid_nodev, Some("mode=0755")),
    ];
    for (dir, fstype, flags, data) in table {
        let target = root.join(dir);
        fs::create_dir_all(&target)?;
        match sys::mount(OsStr::new(fstype), &target, Some(fstype), flags, data) {
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("mount {fstype} at {}: {e}", target.display()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The disk mounts made so far, innermost last.
#[derive(Debug, Default)]
pub struct Mounts {
    stack: Vec<PathBuf>,
}

impl Mounts {
    /// Mounts `device` (a block device) at `target`, creating `target` if it
    /// does not exist (possible only on a writable parent, like /run).
    pub fn mount(
        &mut self,
        device: &Path,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        if !target.exists() {
            fs::create_dir_all(target)?;
        }
        sys::mount(device.as_os_str(), target, Some(fstype), flags, data)?;
        self.stack.push(target.to_path_buf());
        Ok(())
    }

    /// Bind-mounts `source` onto `target`.
    pub fn bind(&mut self, source: &Path, target: &Path) -> io::Result<()> {
        sys::mount(source.as_os_str(), target, None, sys::MS_BIND, None)?;
        self.stack.push(target.to_path_buf());
        Ok(())
    }

    /// Mounts an overlay of `lower` with `upper`/`work` at `target`.
    pub fn overlay(
        &mut self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        sys::mount(
            OsStr::new("overlay"),
            target,
            Some("overlay"),
            0,
            Some(&data),
        )?;
        self.stack.push(target.to_path_buf());
        Ok(())
    }

    /// Moves the mount at `from` to `to`. It is unmounted after everything
    /// mounted before the move, since it now sits on top of them.
    pub fn move_mount(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        sys::mount(from.as_os_str(), to, None, sys::MS_MOVE, None)?;
        self.stack.retain(|p| p != from);
        self.stack.push(to.to_path_buf());
        Ok(())
    }

    /// Remounts the vfat at `target` read-write (the ESP, for a state change).
    pub fn remount_esp_rw(&self, target: &Path) -> io::Result<()> {
        sys::mount(
            OsStr::new(""),
            target,
            Some("vfat"),
            sys::MS_REMOUNT | ESP_FLAGS,
            Some(ESP_OPTIONS),
        )
    }

    /// Syncs and unmounts `target` if it is one of ours; falls back to a lazy
    /// detach so nothing is left mounted over a directory the new root will see.
    pub fn unmount(&mut self, target: &Path) {
        if !self.stack.iter().any(|p| p == target) {
            return;
        }
        sys::sync();
        if let Err(e) = sys::umount(target, 0) {
            log::warn!("cannot unmount {}: {e}; detaching it", target.display());
            if let Err(e) = sys::umount(target, sys::MNT_DETACH) {
                log::warn!("cannot detach {}: {e}", target.display());
            }
        }
        self.stack.retain(|p| p != target);
    }

    /// Unmounts everything, innermost first.
    pub fn unmount_all(&mut self) {
        while let Some(target) = self.stack.last().cloned() {
            log::info!("unmounting {}", target.display());
            self.unmount(&target);
        }
    }
}
