//! The one syscall std does not wrap. Kept here so `unsafe` stays in one place.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Takes an exclusive `flock` on `file`, waiting for other holders. The lock is
/// released when the file is closed.
pub fn flock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open
        // for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
