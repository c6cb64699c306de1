//! The syscalls of the write path that std does not wrap, each a small
//! function so `unsafe` stays in this file (STYLE.md §15).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` (linux/fs.h); the libc crate
/// does not export it for every target.
const BLKGETSIZE64: u64 = 0x8008_1272;

/// Size in bytes of the block device open as `file`.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // `size`; the descriptor stays open for the call. The request type differs
    // between glibc (c_ulong) and musl (c_int), hence the cast.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Writes the dirty pages of `offset..offset + len` to the device and waits
/// for them, so the range can be dropped from the page cache and read back
/// from the medium. Durability still needs the final `fsync`, which also
/// flushes the device's write cache.
pub fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain integers; the descriptor stays open for the call.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops the clean cached pages of `offset..offset + len`, so the next read
/// of the range comes from the device rather than from what was just written.
pub fn drop_cache(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain integers; the descriptor stays open for the call.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    // posix_fadvise returns the error number instead of setting errno.
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_regular_file_is_not_a_block_device_and_its_cache_can_be_dropped() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[1u8; 65536]).unwrap();
        assert_eq!(
            block_device_size(&f).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        write_back(&f, 0, 65536).unwrap();
        drop_cache(&f, 0, 65536).unwrap();
    }
}
