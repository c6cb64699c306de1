//! The bundle manifest is [`wire::manifest`]: one definition for `os-image`
//! (which writes it) and the agent (which reads it). Here: its digests in the
//! spelling the write path compares.

pub use wire::manifest::{manifest_url, Manifest, MAX_MANIFEST_BYTES};

/// `blake3:<hex>` of 32 bytes.
pub fn format_blake3(digest: &[u8; 32]) -> String {
    wire::Digest::blake3(*digest).to_string()
}

/// The 32 bytes of a `blake3:` digest, in any spelling [`wire::Digest`] accepts.
pub fn parse_blake3(s: &str) -> Option<[u8; 32]> {
    wire::Digest::parse_as(s, wire::digest::Algorithm::Blake3)
        .ok()
        .map(|d| d.bytes)
}
