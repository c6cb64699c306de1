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

/// `struct dm_ioctl` (linux/dm-ioctl.h), the fixed header of every
/// device-mapper request: 312 bytes.
pub const DM_IOCTL_SIZE: usize = 312;

/// ioctl(2) on the device-mapper control node: `cmd` is the command number
/// (`DM_DEV_CREATE_CMD` …), `buf` a `struct dm_ioctl` and its payload, whose
/// `data_size` field must not exceed `buf.len()`; the kernel writes its
/// answer back into `buf`.
pub fn dm_ioctl(control: &File, cmd: u8, buf: &mut [u8]) -> io::Result<()> {
    if buf.len() < DM_IOCTL_SIZE
        || u32::from_ne_bytes(buf[12..16].try_into().expect("4 bytes")) as usize > buf.len()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device-mapper request shorter than its data_size",
        ));
    }
    // _IOWR(DM_IOCTL = 0xfd, cmd, struct dm_ioctl)
    let request = (3u32 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | u32::from(cmd);
    // SAFETY: `buf` is valid for reads and writes of `buf.len()` bytes, and
    // the kernel touches at most `data_size` of them, checked above to fit.
    let rc = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            request as _,
            buf.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mknod(2) of a block device node, mode 0600.
pub fn mknod_block(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    let path = cstr(path.as_os_str())?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `path` is a valid C string for the duration of the call.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFBLK | 0o600, dev) })
}

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Tells the kernel that partition `number` of `disk` now spans `length`
/// bytes from `start` (BLKPG_RESIZE_PARTITION; the start must not change).
pub fn resize_partition(disk: &File, number: u32, start: u64, length: u64) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "partition beyond 2^63 bytes");
    let mut part = BlkpgPartition {
        start: start.try_into().map_err(|_| too_big())?,
        length: length.try_into().map_err(|_| too_big())?,
        pno: number.try_into().map_err(|_| too_big())?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: `arg` and the `part` it points to live until the call returns
    // and have the kernel's layout; the kernel only reads them.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Grows the mounted ext4 file system that `dir` (a directory on it) is on
/// to `blocks` blocks, online.
pub fn ext4_resize(dir: &File, blocks: u64) -> io::Result<()> {
    let count: u64 = blocks;
    // SAFETY: the kernel reads one u64 from the pointer, which is valid for
    // the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            EXT4_IOC_RESIZE_FS as _,
            &count as *const u64,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
