//! Persistent directories of the new root (docs/decisions.md, "Persistent
//! directories"): `/var`, and `/opt/cni` when the image has it, live on
//! PERSIST and are bound over the image's read-only copies. The image's own
//! copy is the factory content: on the first boot of each image, whatever
//! of it PERSIST lacks is copied in (new files added, existing ones kept),
//! so packages that ship files under /var (dpkg's database, systemd's
//! directories, CNI plugins under /opt/cni/bin) work on the first boot and
//! after upgrades that add to them.
//!
//! The factory tree is the verified image; PERSIST is not trusted to be
//! tidy: nothing is followed through a symlink there, and an entry that
//! exists with another type is left as it is.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;

/// A tree deeper than this is not a factory /var: stop there.
const MAX_DEPTH: usize = 64;
/// Nor one with more entries than this.
const MAX_ENTRIES: usize = 1_000_000;

/// Makes `base/rel` a real directory, each component below `base` a
/// directory and no symlink. A component that is something else (a file, a
/// symlink, a device left on PERSIST) is renamed aside to
/// `NAME.not-a-directory` (replacing an earlier one of that name) and made
/// afresh, so a broken layout costs that entry's contents, not the boot:
/// `create_dir_all` failed on it and halted the node on both slots, or went
/// through a symlink to bind something else over /var.
pub fn ensure_dir_below(base: &Path, rel: &Path) -> io::Result<()> {
    let mut at = base.to_path_buf();
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::other(format!(
                "{} is not a plain path",
                rel.display()
            )));
        };
        at.push(name);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) => {
                let mut aside = at.clone().into_os_string();
                aside.push(".not-a-directory");
                let aside = std::path::PathBuf::from(aside);
                if fs::symlink_metadata(&aside).is_ok_and(|a| a.is_dir()) {
                    fs::remove_dir_all(&aside)?;
                }
                log::warn!(
                    "{} on PERSIST is a {:?}, not a directory: moved to {}",
                    at.display(),
                    m.file_type(),
                    aside.display()
                );
                fs::rename(&at, &aside)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(&at)?;
    }
    Ok(())
}

/// What a seed did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Entries created (directories, files, symlinks).
    pub created: usize,
    /// Entries PERSIST had already (kept as they are).
    pub kept: usize,
    /// Sockets, devices and fifos, which are not copied.
    pub skipped: usize,
    /// Bytes of file content copied.
    pub bytes: u64,
}

/// Copies into `dest` every entry of `factory` that `dest` lacks, with its
/// mode, owner and modification time; recurses into directories both have.
/// `dest` must exist and be a directory (not a symlink).
pub fn seed(factory: &Path, dest: &Path) -> io::Result<Seeded> {
    let meta = fs::symlink_metadata(dest)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dest.display()
        )));
    }
    let mut done = Seeded::default();
    walk(factory, dest, 0, &mut done)?;
    Ok(done)
}

fn walk(from: &Path, to: &Path, depth: usize, done: &mut Seeded) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "{} is more than {MAX_DEPTH} directories deep",
            from.display()
        )));
    }
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if done.created + done.kept + done.skipped >= MAX_ENTRIES {
            return Err(io::Error::other(format!(
                "more than {MAX_ENTRIES} entries under the factory tree"
            )));
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        match fs::symlink_metadata(&dst) {
            Ok(there) => {
                done.kept += 1;
                if kind.is_dir() && there.is_dir() {
                    walk(&src, &dst, depth + 1, done)?;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if kind.is_dir() {
            fs::create_dir(&dst)?;
            chown(&dst, Some(meta.uid()), Some(meta.gid()))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            done.created += 1;
            walk(&src, &dst, depth + 1, done)?;
        } else if kind.is_file() {
            done.bytes += copy_file(&src, &dst, &meta)?;
            done.created += 1;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
            lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
            done.created += 1;
        } else {
            done.skipped += 1;
        }
    }
    Ok(())
}

/// A new file at `dst` (never through an existing one) with `src`'s bytes,
/// owner, mode and modification time.
fn copy_file(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<u64> {
    let mut input = File::open(src)?;
    let mut output = File::options().write(true).create_new(true).open(dst)?;
    let n = io::copy(&mut input, &mut output)?;
    // Owner first: chown clears set-id bits, the mode puts them back.
    output.set_modified(meta.modified()?)?;
    chown(dst, Some(meta.uid()), Some(meta.gid()))?;
    output.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn a_persistent_directory_that_is_not_one_is_moved_aside_and_made() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        let outside = p.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(p.join("var"), "a file").unwrap();
        fs::create_dir(p.join("etc-overlay")).unwrap();
        symlink(&outside, p.join("etc-overlay/A")).unwrap();
        ensure_dir_below(p, Path::new("var")).unwrap();
        ensure_dir_below(p, Path::new("etc-overlay/A/upper")).unwrap();
        for d in ["var", "etc-overlay/A", "etc-overlay/A/upper"] {
            assert!(fs::symlink_metadata(p.join(d)).unwrap().is_dir(), "{d}");
        }
        assert_eq!(
            fs::read_to_string(p.join("var.not-a-directory")).unwrap(),
            "a file"
        );
        assert!(
            fs::symlink_metadata(p.join("etc-overlay/A.not-a-directory"))
                .unwrap()
                .is_symlink()
        );
        assert!(!outside.join("upper").exists(), "made through the symlink");
        // Again: nothing to do, and a real directory is kept with its contents.
        fs::write(p.join("var/kept"), "x").unwrap();
        ensure_dir_below(p, Path::new("var")).unwrap();
        assert!(p.join("var/kept").exists());
    }

    #[test]
    fn missing_entries_are_added_and_existing_ones_kept() {
        let t = TempDir::new();
        let (factory, dest) = (t.path().join("factory"), t.path().join("dest"));
        fs::create_dir_all(factory.join("lib/dpkg/info")).unwrap();
        fs::write(factory.join("lib/dpkg/status"), "factory status").unwrap();
        fs::write(factory.join("lib/dpkg/info/a.list"), "a").unwrap();
        fs::set_permissions(
            factory.join("lib/dpkg/info/a.list"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::create_dir_all(factory.join("cache/private")).unwrap();
        fs::set_permissions(
            factory.join("cache/private"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        symlink("../run/lock", factory.join("lock")).unwrap();

        fs::create_dir_all(dest.join("lib/dpkg")).unwrap();
        fs::write(dest.join("lib/dpkg/status"), "the node's status").unwrap();
        let done = seed(&factory, &dest).unwrap();

        assert_eq!(
            fs::read_to_string(dest.join("lib/dpkg/status")).unwrap(),
            "the node's status",
            "an existing file is kept"
        );
        assert_eq!(
            fs::read_to_string(dest.join("lib/dpkg/info/a.list")).unwrap(),
            "a"
        );
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("lib/dpkg/info/a.list"), 0o640);
        assert_eq!(mode("cache/private"), 0o700);
        assert_eq!(
            fs::read_link(dest.join("lock")).unwrap(),
            Path::new("../run/lock")
        );
        assert_eq!(
            fs::metadata(dest.join("lib/dpkg/info/a.list"))
                .unwrap()
                .modified()
                .unwrap(),
            fs::metadata(factory.join("lib/dpkg/info/a.list"))
                .unwrap()
                .modified()
                .unwrap()
        );
        // lib, lib/dpkg, lib/dpkg/status existed.
        assert_eq!(done.kept, 3);
        assert_eq!(done.created, 5, "{done:?}");
        // Again: nothing left to do.
        let again = seed(&factory, &dest).unwrap();
        assert_eq!(again.created, 0);
    }

    #[test]
    fn nothing_is_written_through_a_symlink_on_persist() {
        let t = TempDir::new();
        let (factory, dest, elsewhere) = (
            t.path().join("factory"),
            t.path().join("dest"),
            t.path().join("elsewhere"),
        );
        fs::create_dir_all(factory.join("lib/x")).unwrap();
        fs::write(factory.join("lib/x/file"), "f").unwrap();
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        // PERSIST's lib is a symlink out of it: kept, not entered.
        symlink(&elsewhere, dest.join("lib")).unwrap();
        let done = seed(&factory, &dest).unwrap();
        assert_eq!(done.created, 0);
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
        // A destination that is itself a symlink is refused.
        let link = t.path().join("link");
        symlink(&dest, &link).unwrap();
        assert!(seed(&factory, &link).is_err());
    }
}
