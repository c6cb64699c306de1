//! A `Read` adapter that hashes (BLAKE3) and counts everything read through it.

use std::io::{self, Read};

pub struct HashingReader<R: Read> {
    inner: R,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }

    /// The digest and length of what was read.
    pub fn finish(self) -> (blake3::Hash, u64) {
        (self.hasher.finalize(), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_passes_through_in_any_read_sizes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut r = HashingReader::new(&data[..]);
        let mut small = [0u8; 333];
        let mut seen = Vec::new();
        loop {
            let n = r.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&small[..n]);
        }
        assert_eq!(seen, data);
        assert_eq!(r.finish(), (blake3::hash(&data), data.len() as u64));
        assert_eq!(
            HashingReader::new(&b""[..]).finish(),
            (blake3::hash(b""), 0)
        );
    }
}
