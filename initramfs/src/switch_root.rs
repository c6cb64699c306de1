//! Leaving the initramfs for the new root, the way busybox `switch_root` and
//! systemd do it: carry the API filesystems over, free the initramfs's memory
//! (its files live in RAM and nothing could unmount it later), move the new
//! root onto `/`, chroot, exec init. After the first step there is no way back,
//! so everything that can fail for a reason of the slot's own is checked before.

use crate::sys;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Mounts carried from the initramfs into the new root.
pub const CARRIED: [&str; 4] = ["dev", "proc", "sys", "run"];

/// What freeing the initramfs did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub removed: usize,
    pub failed: usize,
}

/// Deletes everything below `dir` that lives on device `dev`. Symlinks are
/// removed, never followed; other filesystems (mount points, like the new root
/// itself) are left alone, so only the initramfs's own files go.
pub fn remove_tree_same_dev(dir: &Path, dev: u64) -> Removal {
    let mut r = Removal::default();
    walk(dir, dev, &mut r);
    r
}

fn walk(dir: &Path, dev: u64, r: &mut Removal) {
    let Ok(entries) = fs::read_dir(dir) else {
        r.failed += 1;
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            r.failed += 1;
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        let removed = if meta.is_dir() {
            walk(&path, dev, r);
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => r.removed += 1,
            Err(_) => r.failed += 1,
        }
    }
}

/// Moves /dev, /proc, /sys and /run into `new_root`; one the new root has no
/// directory for is detached instead (as systemd does).
fn carry_api_filesystems(new_root: &Path) -> io::Result<()> {
    for name in CARRIED {
        let from = Path::new("/").join(name);
        let to = new_root.join(name);
        if to.is_dir() {
            sys::mount(from.as_os_str(), &to, None, sys::MS_MOVE, None).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("move {} to {}: {e}", from.display(), to.display()),
                )
            })?;
        } else {
            log::warn!(
                "{} does not exist; detaching {} instead of moving it",
                to.display(),
                from.display()
            );
            if let Err(e) = sys::umount(&from, sys::MNT_DETACH) {
                log::warn!("cannot detach {}: {e}", from.display());
            }
        }
    }
    Ok(())
}

/// Frees the initramfs: only when `/` really is one (ramfs or tmpfs), never a
/// disk root that a mistaken invocation could wipe.
fn free_initramfs(new_root: &Path) {
    let root_dev = match (fs::metadata("/"), fs::metadata(new_root)) {
        (Ok(root), Ok(new)) if root.dev() != new.dev() => root.dev(),
        _ => {
            log::warn!("the new root is not a separate mount; keeping the initramfs files");
            return;
        }
    };
    match sys::is_ram_filesystem(Path::new("/")) {
        Ok(true) => {
            let r = remove_tree_same_dev(Path::new("/"), root_dev);
            log::info!(
                "freed the initramfs: {} entries removed, {} left",
                r.removed,
                r.failed
            );
        }
        Ok(false) => log::warn!("/ is not ramfs or tmpfs; keeping its files"),
        Err(e) => log::warn!("cannot statfs /: {e}; keeping the initramfs files"),
    }
}

/// Switches into `new_root` and execs `init` there with `args`. Returns only on
/// failure, with what failed.
pub fn switch_root(new_root: &Path, init: &Path, args: &[OsString]) -> io::Error {
    let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Err(e) = carry_api_filesystems(new_root) {
        return e;
    }
    if let Err(e) = std::env::set_current_dir(new_root) {
        return step(&format!("chdir {}", new_root.display()), e);
    }
    free_initramfs(new_root);
    if let Err(e) = sys::mount(".".as_ref(), Path::new("/"), None, sys::MS_MOVE, None) {
        return step(&format!("move {} onto /", new_root.display()), e);
    }
    if let Err(e) = std::os::unix::fs::chroot(".") {
        return step("chroot into the new root", e);
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return step("chdir / in the new root", e);
    }
    log::info!("executing {}", init.display());
    let e = Command::new(init).arg0(init).args(args).exec();
    step(&format!("exec {}", init.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_files_dirs_and_links_without_following_links() {
        let t = TempDir::new();
        let (doomed, outside) = (t.path().join("initramfs"), t.path().join("outside"));
        fs::create_dir_all(doomed.join("lib/modules/x")).unwrap();
        fs::write(doomed.join("init"), "x").unwrap();
        fs::write(doomed.join("lib/modules/x/a.ko"), "x").unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        symlink(&outside, doomed.join("link-to-outside")).unwrap();

        let dev = fs::metadata(&doomed).unwrap().dev();
        let r = remove_tree_same_dev(&doomed, dev);
        assert_eq!(
            r,
            Removal {
                removed: 6,
                failed: 0
            }
        );
        assert_eq!(fs::read_dir(&doomed).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn other_devices_are_left_alone() {
        let t = TempDir::new();
        fs::create_dir(t.path().join("sysroot")).unwrap();
        fs::write(t.path().join("sysroot/etc"), "x").unwrap();
        let other_dev = fs::metadata(t.path()).unwrap().dev() + 1;
        let r = remove_tree_same_dev(t.path(), other_dev);
        assert_eq!(r, Removal::default());
        assert!(t.path().join("sysroot/etc").exists());
    }
}
