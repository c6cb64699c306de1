//! Reading a small local file whole, bounded: a file on PERSIST or in a
//! config directory is input like any other (a corrupt disk, a file put
//! there by hand), and is never read into memory past its limit. Used for
//! the slot records here and for the agent's own small files.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The text of `path`, at most `max` bytes; `None` when it does not exist.
/// A longer file is an `InvalidData` error that says so; only `max + 1`
/// bytes of it are read.
pub fn read(path: &Path, max: u64) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(Some(text))
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
    }
}
