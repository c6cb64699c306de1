//! `sha256:<64 lowercase hex>` content digests, the only algorithm the
//! distribution API requires and the only one accepted here.

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format(&Sha256::digest(bytes).into())
}

pub fn format(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks the form of a digest; returns it lowercased.
pub fn parse(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The 32 bytes of a well-formed digest.
pub fn bytes(s: &str) -> Option<[u8; 32]> {
    let hex = parse(s)?;
    let hex = &hex.as_bytes()[7..];
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let v = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(v, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_and_round_trip() {
        let d = sha256(b"abc");
        assert_eq!(
            d,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format(&bytes(&d).unwrap()), d);
        assert_eq!(
            parse(&d.to_uppercase().replace("SHA256", "sha256")),
            Some(d)
        );
        assert_eq!(parse("sha256:abc"), None);
        assert_eq!(
            parse("sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            None
        );
    }
}
