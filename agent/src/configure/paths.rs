//! Where a configured path really leads. A request names a path under a
//! base directory (`config-root`, the sysctl root, the ESP); the node must
//! write that path and nothing else, so no component below the base may be
//! a symlink (a symlinked `/etc` would carry the write anywhere), and the
//! file found at plan time must be the one replaced at apply time.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

/// The file a change was planned on: `None` when it did not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Refuses `path` unless it lies below `base` through plain names only,
/// with no component below `base` (the last one included) a symlink.
/// Components that do not exist yet end the walk: nothing can be behind them.
pub fn check_below(base: &Path, path: &Path) -> Result<(), String> {
    let rel = path
        .strip_prefix(base)
        .map_err(|_| format!("{} is not under {}", path.display(), base.display()))?;
    let mut at = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(name) => at.push(name),
            _ => {
                return Err(format!(
                    "{} leaves {} (`.`, `..` or a root)",
                    path.display(),
                    base.display()
                ))
            }
        }
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink; symlinks are not followed",
                    at.display()
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    Ok(())
}

/// The identity of the regular file at `path` (`None`: missing).
pub fn file_id(path: &Path) -> io::Result<Option<FileId>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_and_symlinks_below_the_base_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        fs::create_dir_all(base.join("etc")).unwrap();
        assert!(check_below(&base, &base.join("etc/x.conf")).is_ok());
        assert!(check_below(&base, &base.join("missing/deeper/x")).is_ok());
        assert!(check_below(&base, &base.join("etc/../../x")).is_err());
        assert!(check_below(&base, &d.path().join("x")).is_err());
        std::os::unix::fs::symlink(d.path(), base.join("up")).unwrap();
        let err = check_below(&base, &base.join("up/x")).unwrap_err();
        assert!(err.contains("is a symlink"), "{err}");
        assert!(check_below(&base, &base.join("up")).is_err());
    }
}
