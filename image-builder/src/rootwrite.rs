//! Writing into a root directory without ever leaving it: every path is
//! relative to the root with plain components only, every parent must be a
//! real directory (a symlinked parent is refused, not followed: inside a
//! chroot it would point elsewhere than on the build host), and an existing
//! entry at the final name is unlinked first, never written through.

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// `rel` split into plain components, or an error.
fn parts(rel: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        bail!("/{rel} is not a plain path inside the root");
    }
    Ok(parts)
}

/// Makes the directory `rel` (and its missing parents, mode 0755) inside
/// `root`; every existing component must be a real directory.
pub fn ensure_dir(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for part in parts(rel)? {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&cur).unwrap_or_default();
                bail!(
                    "/{} is a symlink (to {}) in the root: name the path without it",
                    cur.strip_prefix(root).unwrap_or(&cur).display(),
                    to.display()
                )
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "/{} in the root is not a directory",
                cur.strip_prefix(root).unwrap_or(&cur).display()
            ),
            Err(_) => {
                fs::create_dir(&cur).with_context(|| format!("create {}", cur.display()))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("chmod {}", cur.display()))?;
            }
        }
    }
    Ok(cur)
}

/// The path of `rel` with its parent made by [`ensure_dir`] and whatever
/// was at `rel` (not a directory) removed.
fn fresh(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = parts(rel)?;
    let parent = if p.len() > 1 {
        ensure_dir(root, &p[..p.len() - 1].join("/"))?
    } else {
        root.to_path_buf()
    };
    let path = parent.join(p[p.len() - 1]);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => bail!("/{rel} in the root is a directory"),
        Ok(_) => fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?,
        Err(_) => {}
    }
    Ok(path)
}

/// Writes `bytes` as the regular file `rel` with `mode`.
pub fn write(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let path = fresh(root, rel)?;
    fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

/// Makes `rel` a symlink to `target`.
pub fn link(root: &Path, rel: &str, target: &str) -> Result<()> {
    let path = fresh(root, rel)?;
    symlink(target, &path).with_context(|| format!("link {} -> {target}", path.display()))
}

/// Appends `text` to the regular file `rel` (a symlink there is refused).
pub fn append(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = parts(rel)?;
    if p.len() > 1 {
        ensure_dir(root, &p[..p.len() - 1].join("/"))?;
    }
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("/{rel} in the root is not a regular file");
    }
    let mut bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(text.as_bytes());
    // Rewritten as a new file: the old one may be a hard link into a cache.
    let mode = meta.permissions().mode() & 0o7777;
    write(root, rel, &bytes, mode)?;
    Ok(())
}

/// Reads the regular file `rel` (not through a symlink).
pub fn read(root: &Path, rel: &str) -> Result<String> {
    parts(rel)?;
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("/{rel} in the root is not a regular file");
    }
    fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        symlink("/etc", root.join("etc-link")).unwrap();
        let e = write(&root, "escape/x", b"1", 0o644)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symlink"), "{e}");
        assert!(write(&root, "etc-link/passwd", b"1", 0o644).is_err());
        assert!(write(&root, "a/../escape/x", b"1", 0o644).is_err());
        assert!(write(&root, "/abs", b"1", 0o644).is_err());
        assert!(fs::read_dir(&outside).unwrap().next().is_none());

        // A symlink at the final name is replaced, its target untouched.
        fs::write(outside.join("target"), "keep").unwrap();
        symlink(outside.join("target"), root.join("f")).unwrap();
        write(&root, "f", b"new", 0o600).unwrap();
        assert_eq!(fs::read(outside.join("target")).unwrap(), b"keep");
        assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
        assert!(append(&root, "escape", "x").is_err());

        write(&root, "d/e/f", b"a", 0o644).unwrap();
        append(&root, "d/e/f", "b\n").unwrap();
        assert_eq!(read(&root, "d/e/f").unwrap(), "a\nb\n");
        link(&root, "d/l", "/usr/lib/x").unwrap();
        assert_eq!(
            fs::read_link(root.join("d/l")).unwrap(),
            Path::new("/usr/lib/x")
        );
        assert!(write(&root, "d/e", b"x", 0o644)
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }
}
