//! Content digests, in every spelling the project accepts (DESIGN.md §5):
//!
//! - `blake3:<64 hex>`: the uncompressed root image (the bundle's
//!   `image_digest`, a slot record's `digest`);
//! - `sha256:<64 hex>`: a file at a URL (KubeOS's `check_sum`), an OCI
//!   manifest or blob;
//! - a bare 64-hex value: what `sha256sum` prints, KubeOS's `check_sum`
//!   spelling; only [`Digest::from_check_sum`] accepts it.
//!
//! Parsing ignores surrounding blanks and the case of the algorithm and the
//! hex digits; formatting is always lower case, `algorithm:hex`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Blake3,
    Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
        }
    }
}

/// A digest: its algorithm and its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub bytes: [u8; 32],
}

/// Why a text is not a digest; the message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestError {
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "digest {:?}: {}", self.text, self.reason)
    }
}

impl std::error::Error for DigestError {}

impl Digest {
    pub fn blake3(bytes: [u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Blake3,
            bytes,
        }
    }

    pub fn sha256(bytes: [u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            bytes,
        }
    }

    /// `blake3:<hex>` or `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let err = |reason| DigestError {
            text: text.to_owned(),
            reason,
        };
        let s = text.trim();
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(err("not blake3:<64 hex digits> or sha256:<64 hex digits>"));
        };
        let algorithm = if algo.eq_ignore_ascii_case("blake3") {
            Algorithm::Blake3
        } else if algo.eq_ignore_ascii_case("sha256") {
            Algorithm::Sha256
        } else {
            return Err(err("unknown digest algorithm (blake3 or sha256)"));
        };
        let bytes = parse_hex32(hex).ok_or_else(|| err("the value is not 64 hex digits"))?;
        Ok(Digest { algorithm, bytes })
    }

    /// [`parse`](Self::parse), also taking a bare 64-hex value as SHA-256
    /// (KubeOS's `check_sum`, as `sha256sum` prints it).
    pub fn from_check_sum(text: &str) -> Result<Digest, DigestError> {
        let s = text.trim();
        if !s.contains(':') {
            return parse_hex32(s)
                .map(Digest::sha256)
                .ok_or_else(|| DigestError {
                    text: text.to_owned(),
                    reason: "not blake3:<64 hex digits>, sha256:<64 hex digits> or a bare SHA-256 \
                         hex digest",
                });
        }
        Digest::parse(text)
    }

    /// [`parse`](Self::parse), requiring `algorithm`.
    pub fn parse_as(text: &str, algorithm: Algorithm) -> Result<Digest, DigestError> {
        let d = Digest::parse(text)?;
        if d.algorithm != algorithm {
            return Err(DigestError {
                text: text.to_owned(),
                reason: match algorithm {
                    Algorithm::Blake3 => "not a blake3: digest",
                    Algorithm::Sha256 => "not a sha256: digest",
                },
            });
        }
        Ok(d)
    }

    pub fn is_blake3(&self) -> bool {
        self.algorithm == Algorithm::Blake3
    }

    /// The lower-case hex of the bytes, without the algorithm.
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The 32 bytes of 64 hex digits (either case); `None` for anything else.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = nibble(hex[2 * i])? << 4 | nibble(hex[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "98ea7aff44631d183e6df3488f1107357d7503e11e5f146effdbfd11810cd4a2";

    #[test]
    fn every_accepted_spelling_formats_the_same() {
        let want = format!("sha256:{HEX}");
        for s in [
            want.clone(),
            format!(" SHA256:{} ", HEX.to_uppercase()),
            format!("Sha256:{HEX}\n"),
        ] {
            assert_eq!(Digest::parse(&s).unwrap().to_string(), want, "{s:?}");
            assert_eq!(Digest::from_check_sum(&s).unwrap().to_string(), want);
        }
        assert_eq!(Digest::from_check_sum(HEX).unwrap().to_string(), want);
        assert_eq!(
            Digest::from_check_sum(&HEX.to_uppercase())
                .unwrap()
                .to_string(),
            want
        );
        let b3 = format!("blake3:{HEX}");
        let d = Digest::parse(&b3).unwrap();
        assert!(d.is_blake3());
        assert_eq!((d.to_string(), d.hex()), (b3.clone(), HEX.to_owned()));
        assert_eq!(Digest::parse_as(&b3, Algorithm::Blake3), Ok(d));
        assert!(Digest::parse_as(&b3, Algorithm::Sha256).is_err());
    }

    #[test]
    fn malformed_digests_are_refused_with_the_text() {
        for bad in [
            "",
            "md5:abc",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{HEX}0"),
            &format!("sha256:{}g", &HEX[..63]),
            &format!("sha512:{HEX}"),
            &format!("blake3 {HEX}"),
            &format!("sha256:{}é", &HEX[..62]),
        ] {
            let e = Digest::from_check_sum(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")));
        }
        // A bare value is a check_sum spelling, not a digest.
        assert!(Digest::parse(HEX).is_err());
        assert!(Digest::from_check_sum("22222").is_err());
    }

    #[test]
    fn hex_round_trip() {
        let bytes = parse_hex32(HEX).unwrap();
        assert_eq!(hex(&bytes), HEX);
        assert_eq!(parse_hex32(&HEX.to_uppercase()), Some(bytes));
    }
}
