//! Making file-system changes survive a power cut, on PERSIST (ext4) and on
//! the ESP (FAT) alike (STYLE.md §4).
//!
//! A directory fsync alone is not enough on FAT: Linux's vfat keeps a file's
//! start cluster and size in its directory entry, and a rename moves that
//! entry only when the renamed inode is written back. Until then the new name
//! points at nothing (a size-0 file) and a power cut keeps it so. Likewise a
//! newly made directory exists only once its parent is flushed. Hence:
//! [`create_dirs`] syncs each parent it adds to, and [`rename_over`] fsyncs
//! the file under its new name before the directory. On ext4 the extra
//! fsyncs cost a journal commit that would happen anyway.
//!
//! Found by the power-cut campaign's configure cuts on the forgetful disk
//! (issue 18): `args-A` on the ESP was absent, then empty, after cuts that
//! came after `os-agent configure` had answered success.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsyncs the directory that holds `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

/// Creates `dir` and its missing ancestors, each one made durable in its
/// parent before anything is put into it.
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(up) = dir.parent() {
        create_dirs(up)?;
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
        Ok(()) => sync_parent(dir),
    }
}

/// Renames `tmp` (written and fsynced by the caller) over `path` and makes
/// the new name durable: the file under its new name, then the directory.
pub fn rename_over(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    File::open(path)?.sync_all()?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dirs_makes_every_missing_level_and_accepts_existing_ones() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dirs(&deep).unwrap();
        assert!(deep.is_dir());
        create_dirs(&deep).unwrap();
        fs::write(t.path().join("file"), b"x").unwrap();
        // A file where a directory must be is an error, not a success.
        assert!(create_dirs(&t.path().join("file/d")).is_err());
        assert!(t.path().join("file").is_file());
    }

    #[test]
    fn rename_over_replaces_the_file_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let (tmp, path) = (t.path().join(".f.tmp"), t.path().join("f"));
        fs::write(&path, b"old").unwrap();
        fs::write(&tmp, b"new").unwrap();
        rename_over(&tmp, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists());
    }
}
