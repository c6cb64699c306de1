//! Fails, rather than truncates, when the stream yields more than a limit: an
//! image that does not fit the slot must be an error, never a silently cut
//! root filesystem.

use super::decode::DecodeInto;
use std::io::{self, Read};

/// The error a [`LimitReader`] puts inside its `io::Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: u64,
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream is longer than {} bytes", self.limit)
    }
}

impl std::error::Error for LimitExceeded {}

pub struct LimitReader<R> {
    inner: R,
    limit: u64,
    /// Bytes read so far, counting from the position the stream started at.
    pos: u64,
}

impl<R: Read> LimitReader<R> {
    /// `pos` bytes of the `limit` have already been read (a resumed stream).
    pub fn new(inner: R, limit: u64, pos: u64) -> Self {
        LimitReader { inner, limit, pos }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n)
    }
}

impl<R: DecodeInto> DecodeInto for LimitReader<R> {
    fn decode_into(&mut self, out: &mut [u8], pos: usize) -> io::Result<usize> {
        let n = self.inner.decode_into(out, pos)?;
        self.count(n)
    }
}

impl<R> LimitReader<R> {
    /// `n` more bytes came through: fine while within the limit.
    fn count(&mut self, n: usize) -> io::Result<usize> {
        self.pos += n as u64;
        if self.pos > self.limit {
            let limit = self.limit;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                LimitExceeded { limit },
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::inner_error;

    #[test]
    fn exact_fit_passes_and_one_byte_more_fails() {
        let data = [7u8; 100];
        let mut out = Vec::new();
        LimitReader::new(&data[..], 100, 0)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 100);
        let err = LimitReader::new(&data[..], 150, 51)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(
            inner_error::<LimitExceeded>(&err),
            Some(&LimitExceeded { limit: 150 })
        );
    }
}
