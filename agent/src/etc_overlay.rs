//! `/etc` changes follow an upgrade: os-init overlays each slot's `/etc` with
//! its own upper layer on PERSIST (`etc-overlay/<SLOT>/upper` and `work`), so
//! before a trial of slot X is armed from slot Y, X's layer is replaced with a
//! copy of Y's upper (docs/decisions.md, "/etc across upgrades").
//!
//! Crash-safe order (STYLE.md §4): the copy is built beside the layers in
//! `etc-overlay/.X.seed`, flushed (`syncfs`), then swapped with X's layer in one
//! `renameat2(RENAME_EXCHANGE)` and the directory fsynced; the old layer is
//! removed last. A power cut leaves either X's old layer or the complete new
//! one in place, plus at most a leftover `.X.seed` that the next seed removes.
//! X is not mounted (it is not running) and its trial is not armed yet, so
//! nothing reads the layer while it changes.

use crate::sys;
use bootctl::Slot;
use log::info;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A step of the seed that failed, and on what.
#[derive(Debug)]
pub struct SeedError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for SeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeding /etc: {} {}: {}",
            self.op,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for SeedError {}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SeedError {
    let path = path.to_path_buf();
    move |source| SeedError { op, path, source }
}

/// `etc-overlay/<SLOT>` under PERSIST: the slot's `upper` and `work` dirs.
pub fn layer_dir(state_dir: &Path, slot: Slot) -> PathBuf {
    state_dir.join("etc-overlay").join(slot.as_str())
}

/// Replaces `to`'s /etc layer with a copy of `from`'s upper (an empty layer
/// when `from` has none yet). Returns the number of entries copied.
pub fn seed(state_dir: &Path, from: Slot, to: Slot) -> Result<usize, SeedError> {
    let base = state_dir.join("etc-overlay");
    let src = layer_dir(state_dir, from).join("upper");
    let dst = layer_dir(state_dir, to);
    let tmp = base.join(format!(".{to}.seed"));
    fs::create_dir_all(&base).map_err(err("create directory", &base))?;
    remove_if_present(&tmp)?;
    fs::create_dir(&tmp).map_err(err("create directory", &tmp))?;
    fs::create_dir(tmp.join("work")).map_err(err("create directory", &tmp))?;
    let copied = if src.is_dir() {
        copy_tree(&src, &tmp.join("upper"))?
    } else {
        fs::create_dir(tmp.join("upper")).map_err(err("create directory", &tmp))?;
        0
    };
    let base_dir = File::open(&base).map_err(err("open", &base))?;
    sys::syncfs(&base_dir).map_err(err("syncfs", &base))?;
    if dst.symlink_metadata().is_ok() {
        sys::rename_exchange(&tmp, &dst).map_err(err("exchange with", &dst))?;
    } else {
        fs::rename(&tmp, &dst).map_err(err("rename to", &dst))?;
    }
    base_dir.sync_all().map_err(err("fsync directory", &base))?;
    remove_if_present(&tmp)?;
    info!(
        "slot {to}: /etc layer seeded from slot {from} ({copied} entries from {})",
        src.display()
    );
    Ok(copied)
}

fn remove_if_present(path: &Path) -> Result<(), SeedError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Copies `src` to the new path `dst` with everything overlayfs keeps in an
/// upper layer: modes, owners, xattrs (opaque dirs, redirects), symlinks and
/// whiteouts (0:0 character devices). Returns the number of entries.
fn copy_tree(src: &Path, dst: &Path) -> Result<usize, SeedError> {
    let meta = src.symlink_metadata().map_err(err("stat", src))?;
    let kind = meta.file_type();
    let mut count = 1;
    if kind.is_dir() {
        fs::create_dir(dst).map_err(err("create directory", dst))?;
        let entries = fs::read_dir(src).map_err(err("read directory", src))?;
        for entry in entries {
            let entry = entry.map_err(err("read directory", src))?;
            count += copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if kind.is_symlink() {
        let target = fs::read_link(src).map_err(err("read link", src))?;
        symlink(&target, dst).map_err(err("create symlink", dst))?;
    } else if kind.is_file() {
        fs::copy(src, dst).map_err(err("copy to", dst))?;
    } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
        sys::mknod(dst, meta.mode(), meta.rdev()).map_err(err("create node", dst))?;
    } else {
        // Sockets are runtime state: nothing to carry over.
        return Ok(0);
    }
    copy_attributes(src, dst, &meta)?;
    Ok(count)
}

fn copy_attributes(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), SeedError> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .map_err(err("change owner of", dst))?;
    if !meta.file_type().is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(err("set mode of", dst))?;
    }
    for (name, value) in sys::xattrs(src).map_err(err("list xattrs of", src))? {
        sys::set_xattr(dst, &name, &value).map_err(err("set xattr on", dst))?;
    }
    Ok(())
}
