//! The bundle manifest (DESIGN.md §5), `NAME.manifest.json` beside
//! `NAME.img.zst`. Documented field by field in docs/bundle.md; the agent
//! parses the same JSON.
//!
//! The compressed image is a sequence of independent zstd frames, one per
//! chunk of the uncompressed image, so a download can resume at any chunk
//! boundary (HTTP Range from `chunks[k].zoffset`) and every chunk can be
//! verified on its own before the next is fetched.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of this manifest layout.
pub const FORMAT: u32 = 1;
/// Default uncompressed chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// BLAKE3 of the chunk's uncompressed bytes, hex.
    pub digest: String,
    /// Byte offset of the chunk's zstd frame in the `.img.zst` file.
    pub zoffset: u64,
    /// Length of that frame.
    pub zsize: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub os_version: String,
    pub arch: String,
    /// File name of the compressed image, relative to the manifest.
    pub image: String,
    /// Bytes of the uncompressed root image.
    pub image_size: u64,
    /// `blake3:<hex>` of the uncompressed root image: the trust anchor the OS
    /// custom resource carries.
    pub image_digest: String,
    pub compressed_size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<Chunk>,
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read manifest {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("parse manifest {}", path.display()))?;
        m.check()
            .with_context(|| format!("manifest {}", path.display()))?;
        Ok(m)
    }

    /// Writes the manifest as pretty JSON with a trailing newline.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("write manifest {}", path.display()))
    }

    /// Internal consistency: format, digest form, chunk count and frame layout.
    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "unsupported manifest format {} (this build reads {FORMAT})",
                self.format
            );
        }
        if parse_digest(&self.image_digest).is_none() {
            bail!(
                "image_digest {:?} is not blake3:<64 hex digits>",
                self.image_digest
            );
        }
        if self.chunk_size == 0 {
            bail!("chunk_size is 0");
        }
        let expected = self.image_size.div_ceil(self.chunk_size);
        if self.chunks.len() as u64 != expected {
            bail!(
                "{} chunks listed, {expected} expected for {} bytes",
                self.chunks.len(),
                self.image_size
            );
        }
        let mut offset = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.zoffset != offset
                || c.digest.len() != 64
                || !c.digest.bytes().all(|b| b.is_ascii_hexdigit())
            {
                bail!("chunk {i} is malformed or out of place");
            }
            offset += c.zsize;
        }
        if offset != self.compressed_size {
            bail!(
                "chunk frames cover {offset} bytes, compressed_size says {}",
                self.compressed_size
            );
        }
        Ok(())
    }

    /// Path of the compressed image, for a manifest read from `manifest_path`.
    pub fn image_path(&self, manifest_path: &Path) -> PathBuf {
        manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.image)
    }
}

/// The 32 bytes of a `blake3:<hex>` digest.
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("blake3:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `blake3:<hex>` of a finished hash.
pub fn format_digest(hash: &blake3::Hash) -> String {
    format!("blake3:{}", hash.to_hex())
}
