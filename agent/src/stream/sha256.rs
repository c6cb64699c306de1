//! SHA-256 whose running state can be written down and read back, so a
//! download pinned by the file's SHA-256 (KubeOS's `check_sum`, an OCI
//! layer's digest) can resume after the agent restarts. The block function is
//! sha2's (`compress256`); only the buffering and padding are here.

use sha2::digest::generic_array::GenericArray;

const INIT: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
/// Blocks handed to `compress256` at once.
const BATCH: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct Sha256State {
    state: [u32; 8],
    /// Bytes of an incomplete block.
    buf: [u8; 64],
    buf_len: usize,
    /// Bytes hashed in all.
    len: u64,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State::new()
    }
}

impl std::fmt::Debug for Sha256State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256State({} bytes)", self.len)
    }
}

impl Sha256State {
    pub fn new() -> Sha256State {
        Sha256State {
            state: INIT,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = *GenericArray::from_slice(&self.buf);
            sha2::compress256(&mut self.state, &[block]);
            self.buf_len = 0;
        }
        let mut blocks = [GenericArray::default(); BATCH];
        let mut whole = data.chunks_exact(64 * BATCH);
        for batch in &mut whole {
            for (b, src) in blocks.iter_mut().zip(batch.chunks_exact(64)) {
                b.copy_from_slice(src);
            }
            sha2::compress256(&mut self.state, &blocks);
        }
        let rest = whole.remainder();
        let full = rest.len() / 64;
        for (b, src) in blocks.iter_mut().zip(rest.chunks_exact(64)) {
            b.copy_from_slice(src);
        }
        sha2::compress256(&mut self.state, &blocks[..full]);
        let tail = &rest[full * 64..];
        self.buf[..tail.len()].copy_from_slice(tail);
        self.buf_len = tail.len();
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let zeros = (119 - self.buf_len) % 64;
        let mut tail = pad[..1 + zeros].to_vec();
        tail.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&tail);
        self.len = len;
        debug_assert_eq!(self.buf_len, 0);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// One line: `LEN:STATE:BUFFER`, all hex.
    pub fn to_text(&self) -> String {
        let state: String = self.state.iter().map(|w| format!("{w:08x}")).collect();
        format!(
            "{:x}:{state}:{}",
            self.len,
            wire::digest::hex(&self.buf[..self.buf_len])
        )
    }

    /// The state [`to_text`](Self::to_text) wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<Sha256State> {
        let mut parts = text.split(':');
        let len = u64::from_str_radix(parts.next()?, 16).ok()?;
        let words = parts.next()?;
        let buf_hex = parts.next()?;
        if parts.next().is_some() || words.len() != 64 || !words.is_ascii() {
            return None;
        }
        let mut state = [0u32; 8];
        for (i, w) in state.iter_mut().enumerate() {
            *w = u32::from_str_radix(&words[8 * i..8 * i + 8], 16).ok()?;
        }
        let buf_len = buf_hex.len() / 2;
        if buf_hex.len() % 2 != 0 || buf_len >= 64 || len % 64 != buf_len as u64 {
            return None;
        }
        let mut buf = [0u8; 64];
        for (i, b) in buf[..buf_len].iter_mut().enumerate() {
            *b = u8::from_str_radix(buf_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Sha256State {
            state,
            buf,
            buf_len,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha2_for_every_split_and_survives_a_text_round_trip() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 1023, 1024, 1025, 5000] {
            let want: [u8; 32] = Sha256::digest(&data[..len]).into();
            for split in [0, 1, 7, 64, 100, len / 2, len] {
                let split = split.min(len);
                let mut h = Sha256State::new();
                h.update(&data[..split]);
                let h = Sha256State::parse(&h.to_text()).expect("round trip");
                let mut h2 = h.clone();
                h2.update(&data[split..len]);
                assert_eq!(h2.finalize(), want, "len {len} split {split}");
            }
        }
        assert_eq!(
            wire::digest::hex(&Sha256State::new().finalize()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn malformed_state_text_is_refused() {
        let good = {
            let mut h = Sha256State::new();
            h.update(b"abc");
            h.to_text()
        };
        assert!(Sha256State::parse(&good).is_some());
        for bad in [
            "",
            "3",
            "3:00:616263",
            &good.replace(":616263", ":6162"),
            &good.replace("3:", "4:"),
            &format!("{good}:00"),
            &good.replace(":616263", ":61626g"),
        ] {
            assert!(Sha256State::parse(bad).is_none(), "{bad:?}");
        }
    }
}
