//! `sha256:<64 lowercase hex>` content digests, the only algorithm the
//! distribution API requires and the only one accepted here; parsed and
//! spelled by [`wire::Digest`].

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format(&Sha256::digest(bytes).into())
}

pub fn format(hash: &[u8; 32]) -> String {
    wire::Digest::sha256(*hash).to_string()
}

/// Checks the form of a digest ([`wire::Digest`], `sha256:` only); returns
/// it as the project spells digests (lower case).
pub fn parse(s: &str) -> Option<String> {
    bytes(s).map(|b| format(&b))
}

/// The 32 bytes of a well-formed digest.
pub fn bytes(s: &str) -> Option<[u8; 32]> {
    wire::Digest::parse_as(s, wire::digest::Algorithm::Sha256)
        .ok()
        .map(|d| d.bytes)
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
