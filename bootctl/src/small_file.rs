//! Reading a small local file whole, bounded: a file on PERSIST or in a
//! config directory is input like any other (a corrupt disk, a file put
//! there by hand), and is never read into memory past its limit. Used for
//! the slot records here and for the agent's own small files.

use std::io::{self, Read};
use std::path::Path;

/// The text of `path`, at most `max` bytes; `None` when it does not exist.
/// A longer file is an `InvalidData` error that says so; only `max + 1`
/// bytes of it are read. Text that is not UTF-8 is an `InvalidData` error.
pub fn read(path: &Path, max: u64) -> io::Result<Option<String>> {
    read_bytes(path, max)?.map(text).transpose()
}

/// `bytes` as text: not UTF-8 is an `InvalidData` error.
pub fn text(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The bytes of `path`, bounded as [`read`] bounds its text. Only a regular
/// file is read: it is opened `O_NONBLOCK` (a FIFO's open cannot block) and
/// what was opened is checked with `fstat`; a FIFO, device, directory or
/// socket is an `InvalidInput` error that says what it is.
pub fn read_bytes(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_block_device() || kind.is_char_device() => "a device",
            _ if kind.is_socket() => "a socket",
            _ => "not a regular file",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ));
    }
    read_from(file, max).map(Some)
}

/// At most `max` bytes from `input`, whatever it is (a pipe, a device): for an
/// admin's own input named on a command line (`--config /dev/null`, a shell's
/// `<(...)`), where only the bound applies. A longer input is an `InvalidData`
/// error; only `max + 1` bytes of it are read.
pub fn read_from(input: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_refuses_more_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(read(&path, 10).unwrap().is_none());
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read(&path, 10).unwrap().as_deref(), Some("0123456789"));
        std::fs::write(&path, "0123456789X").unwrap();
        let e = read(&path, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read(&path, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(read_bytes(&path, 10).unwrap(), Some(vec![0xff, 0xfe]));
    }

    #[test]
    fn only_regular_files_are_read_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would wait here for ever.
        let e = read(&fifo, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        let e = read(dir.path(), 10).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = read_bytes(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(e.to_string().contains("is a device"), "{e}");
    }
}
