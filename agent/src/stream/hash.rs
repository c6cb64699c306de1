//! BLAKE3 of everything read through it (or, [`HashReader::unhashed`],
//! nothing: a stream whose chunks are checked elsewhere).

use super::decode::DecodeInto;
use std::io::{self, Read};

pub struct HashReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    hashing: bool,
}

impl<R: Read> HashReader<R> {
    /// Continues `hasher`: a resumed download picks up the hash state saved at
    /// its checkpoint instead of re-reading what came before.
    pub fn with_hasher(inner: R, hasher: blake3::Hasher) -> Self {
        HashReader {
            inner,
            hasher,
            hashing: true,
        }
    }

    /// Passes the stream through without hashing it: its hasher stays empty.
    pub fn unhashed(inner: R) -> Self {
        HashReader {
            inner,
            hasher: blake3::Hasher::new(),
            hashing: false,
        }
    }

    pub fn hasher(&self) -> &blake3::Hasher {
        &self.hasher
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hashing {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R: DecodeInto> DecodeInto for HashReader<R> {
    fn decode_into(&mut self, out: &mut [u8], pos: usize) -> io::Result<usize> {
        let n = self.inner.decode_into(out, pos)?;
        if self.hashing {
            self.hasher.update(&out[pos..pos + n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_passes_and_resumes_from_a_saved_state() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut r = HashReader::with_hasher(&data[..40_000], blake3::Hasher::new());
        io::copy(&mut r, &mut io::sink()).unwrap();
        let saved = r.hasher().clone();
        let mut rest = HashReader::with_hasher(&data[40_000..], saved);
        io::copy(&mut rest, &mut io::sink()).unwrap();
        assert_eq!(rest.hasher().finalize(), blake3::hash(&data));
        let mut passed = HashReader::unhashed(&data[..]);
        let mut out = Vec::new();
        io::copy(&mut passed, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(passed.hasher().finalize(), blake3::hash(b""));
    }
}
