//! The syscalls std does not wrap, each behind a safe function. This is the only
//! module with `unsafe` (STYLE §15); everything else goes through std or these.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub use libc::{
    MNT_DETACH, MS_BIND, MS_MOVE, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REMOUNT,
};

/// statfs(2) `f_type` values (linux/magic.h).
const RAMFS_MAGIC: i128 = 0x8584_58f6;
const TMPFS_MAGIC: i128 = 0x0102_1994;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mount(2). `fstype` and `data` are omitted for moves, binds and remounts.
pub fn mount(
    source: &OsStr,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target = cstr(target.as_os_str())?;
    let fstype = fstype.map(|t| cstr(OsStr::new(t))).transpose()?;
    let data = data.map(|d| cstr(OsStr::new(d))).transpose()?;
    // SAFETY: every pointer is either null or points into a CString that lives
    // until the call returns; the kernel copies the strings and keeps nothing.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>()),
        )
    };
    check(rc)
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target.as_os_str())?;
    // SAFETY: `target` is a valid C string for the duration of the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// finit_module(2) with no module parameters.
pub fn finit_module(module: &File) -> io::Result<()> {
    let params = c"";
    // SAFETY: the descriptor is kept open by `module` for the whole call, the
    // parameter string is a static, NUL-terminated empty string, flags are 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sync(2): flush every filesystem before unmounting or rebooting.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with RB_AUTOBOOT. Returns only if the kernel refused.
pub fn reboot() -> io::Error {
    // SAFETY: reboot takes a plain integer command; with RB_AUTOBOOT it does not
    // return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// Whether the filesystem holding `path` is ramfs or tmpfs, i.e. an initramfs
/// whose files may be deleted before switching root.
pub fn is_ram_filesystem(path: &Path) -> io::Result<bool> {
    let path = cstr(path.as_os_str())?;
    // SAFETY: statfs only writes into `buf`, a properly sized and aligned struct
    // that we zero-initialise first; `path` is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statfs(path.as_ptr(), &mut buf) })?;
    // f_type is signed on glibc and unsigned on musl; i128 holds both.
    let magic = i128::from(buf.f_type);
    Ok(magic == RAMFS_MAGIC || magic == TMPFS_MAGIC)
}
