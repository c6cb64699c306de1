//! The few syscalls std does not wrap, each a small function so `unsafe` stays
//! in this file (STYLE.md §15).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Who is on the other end of a Unix socket, as the kernel saw it at connect
/// time (`SO_PEERCRED`), so a peer cannot lie about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed, and the
    // descriptor stays open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Takes an exclusive `flock` on `file` without waiting. `Ok(false)`: someone
/// else holds it. The lock goes with the open file description, so a second
/// open of the same file in this process conflicts too.
pub fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Sends SIGKILL to every process in group `pgid`: a health check that timed
/// out dies together with whatever it started.
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes plain integers; a negative pid addresses the group.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // The group may already be gone; that is what we wanted.
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Flushes every filesystem, then restarts the machine at once (`reboot(2)`).
/// Only returns on failure. For systems without an init that can do an orderly
/// reboot; see `node::reboot`.
pub fn sync_and_reboot() -> io::Error {
    // SAFETY: sync and reboot take no pointers; RB_AUTOBOOT restarts the machine.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    io::Error::last_os_error()
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a device node, FIFO or socket (`mknod(2)`); overlayfs whiteouts are
/// character devices 0:0.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: `p` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
}

/// The extended attributes of `path` itself (not a symlink's target), names
/// and values: overlayfs keeps opaque directories and redirects in `trusted.*`.
pub fn xattrs(path: &Path) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let p = c_path(path)?;
    // SAFETY: a null buffer with size 0 asks for the size only.
    let len = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(vec![]),
            _ => Err(err),
        };
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` is writable for `names.len()` bytes.
    let len = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(len as usize);
    let mut out = vec![];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).expect("split at NUL");
        // SAFETY: as above, size query with a null buffer.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; size as usize];
        // SAFETY: `value` is writable for `value.len()` bytes.
        let size = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(size as usize);
        out.push((name, value));
    }
    Ok(out)
}

pub fn set_xattr(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: all pointers are valid for the lengths passed.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Flushes the filesystem holding `file` (`syncfs(2)`): one call instead of an
/// fsync per copied file.
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs only reads the descriptor number, which `file` keeps open.
    check(unsafe { libc::syncfs(file.as_raw_fd()) })
}

/// Swaps two paths atomically (`renameat2(RENAME_EXCHANGE)`): both exist
/// before and after, whatever moment the power goes.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: both strings are valid and NUL-terminated; the raw syscall is used
    // because not every libc (musl before 1.2.5) wraps renameat2.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `path`, which lies under `dir`, read-only and non-blocking, resolving
/// it with the kernel's `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)` from `dir`: no `..` out of it and no symlink in any
/// component, checked by the kernel as it walks (no window between a check
/// and the open). ELOOP or EXDEV when the path breaks either rule.
pub fn open_beneath(dir: &Path, path: &Path) -> io::Result<File> {
    use std::os::unix::io::FromRawFd;
    let rel = path
        .strip_prefix(dir)
        .map_err(|_| io::Error::other(format!("not under {}", dir.display())))?;
    let base = File::open(dir)?;
    let rel = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    /// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `rel` is a NUL-terminated string and `how` a valid open_how of
    // the size passed; both outlive the call. A non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            base.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above: the descriptor is ours alone.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(&a).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(cred.uid, unsafe { libc::getuid() });
    }

    #[test]
    fn flock_conflicts_across_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_flock_exclusive(&first).unwrap());
        assert!(!try_flock_exclusive(&second).unwrap());
        drop(first);
        assert!(try_flock_exclusive(&second).unwrap());
    }
}
