//! The bundle manifest (docs/bundle.md), as the agent reads it: parsed with
//! miniserde, checked for internal consistency, then checked against the
//! request. The manifest is never trusted on its own: the request's digest is
//! the trust anchor, and every chunk is hashed as it arrives.

use miniserde::Deserialize;

/// The manifest layout this agent reads (`format`).
pub const FORMAT: u32 = 1;
/// A manifest larger than this is refused unread: it would describe an image
/// of terabytes, and it is held in memory while the image streams.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// Largest chunk accepted, so that a chunk's frame needs at most the decoder's
/// window (see `stream::decode::WINDOW_LOG_MAX`).
pub const MAX_CHUNK_SIZE: u64 = 1 << crate::stream::decode::WINDOW_LOG_MAX;

#[derive(Debug, Clone, Deserialize)]
struct RawChunk {
    digest: String,
    zoffset: u64,
    zsize: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct RawManifest {
    format: u32,
    os_version: String,
    image_size: u64,
    image_digest: String,
    compressed_size: u64,
    chunk_size: u64,
    chunks: Vec<RawChunk>,
}

/// One chunk: `len` uncompressed bytes at `offset` in the image, compressed
/// as one zstd frame at `zoffset..zoffset + zsize` of the `.img.zst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub digest: [u8; 32],
    pub offset: u64,
    pub len: u64,
    pub zoffset: u64,
    pub zsize: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub os_version: String,
    pub image_size: u64,
    pub image_digest: [u8; 32],
    pub compressed_size: u64,
    pub chunks: Vec<Chunk>,
}

impl Manifest {
    /// Parses and checks a manifest's JSON text.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest = miniserde::json::from_str(text).map_err(|_| {
            "not valid manifest JSON (a field is missing or has the wrong type)".to_owned()
        })?;
        if raw.format != FORMAT {
            return Err(format!(
                "format {} is not supported (this agent reads {FORMAT})",
                raw.format
            ));
        }
        let image_digest = parse_blake3(&raw.image_digest).ok_or_else(|| {
            format!(
                "image_digest {:?} is not blake3:<64 hex digits>",
                raw.image_digest
            )
        })?;
        if raw.chunk_size == 0 || raw.chunk_size > MAX_CHUNK_SIZE {
            return Err(format!(
                "chunk_size {} is not between 1 and {MAX_CHUNK_SIZE}",
                raw.chunk_size
            ));
        }
        let expected = raw.image_size.div_ceil(raw.chunk_size);
        if raw.chunks.len() as u64 != expected {
            return Err(format!(
                "{} chunks listed, {expected} expected for {} bytes",
                raw.chunks.len(),
                raw.image_size
            ));
        }
        let mut chunks = Vec::with_capacity(raw.chunks.len());
        let mut zoffset = 0;
        for (i, c) in raw.chunks.iter().enumerate() {
            let digest = parse_hex32(&c.digest)
                .ok_or_else(|| format!("chunk {i}: digest is not 64 hex digits"))?;
            if c.zoffset != zoffset || c.zsize == 0 {
                return Err(format!(
                    "chunk {i}: frame at {} (+{}) does not follow the previous one at {zoffset}",
                    c.zoffset, c.zsize
                ));
            }
            let offset = i as u64 * raw.chunk_size;
            let len = raw.chunk_size.min(raw.image_size - offset);
            chunks.push(Chunk {
                digest,
                offset,
                len,
                zoffset,
                zsize: c.zsize,
            });
            zoffset += c.zsize;
        }
        if zoffset != raw.compressed_size {
            return Err(format!(
                "chunk frames cover {zoffset} bytes, compressed_size says {}",
                raw.compressed_size
            ));
        }
        // The version is recorded with the slot: one line of text.
        bootctl::record::check_text(&raw.os_version).map_err(|e| format!("os_version {e}"))?;
        Ok(Manifest {
            os_version: raw.os_version,
            image_size: raw.image_size,
            image_digest,
            compressed_size: raw.compressed_size,
            chunks,
        })
    }
}

/// Where the manifest sits: beside the image, `NAME.img.zst` → `NAME.manifest.json`.
/// `None` for a URL that does not name a bundle image (no manifest to look for).
pub fn manifest_url(image_url: &str) -> Option<String> {
    let (path, query) = match image_url.find(['?', '#']) {
        Some(i) => image_url.split_at(i),
        None => (image_url, ""),
    };
    path.strip_suffix(".img.zst")
        .map(|stem| format!("{stem}.manifest.json{query}"))
}

/// The 32 bytes of `blake3:<hex>`.
pub fn parse_blake3(s: &str) -> Option<[u8; 32]> {
    parse_hex32(s.strip_prefix("blake3:")?)
}

pub fn format_blake3(digest: &[u8; 32]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("blake3:{hex}")
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(image_size: u64, chunk_size: u64, zsizes: &[u64]) -> String {
        let mut z = 0;
        let chunks: Vec<String> = zsizes
            .iter()
            .map(|s| {
                let c = format!(
                    r#"{{ "digest": "{}", "zoffset": {z}, "zsize": {s} }}"#,
                    "ab".repeat(32)
                );
                z += s;
                c
            })
            .collect();
        format!(
            r#"{{ "format": 1, "name": "os-2", "os_version": "2", "arch": "x86_64", "image": "os-2.img.zst",
               "image_size": {image_size}, "image_digest": "blake3:{}", "compressed_size": {z},
               "chunk_size": {chunk_size}, "chunks": [{}] }}"#,
            "cd".repeat(32),
            chunks.join(",")
        )
    }

    #[test]
    fn parses_the_bundle_format_and_derives_chunk_extents() {
        let m = Manifest::parse(&sample(10_000, 4096, &[100, 200, 50])).unwrap();
        assert_eq!(
            (m.os_version.as_str(), m.image_size, m.compressed_size),
            ("2", 10_000, 350)
        );
        assert_eq!(m.image_digest, [0xcd; 32]);
        let last = m.chunks[2];
        assert_eq!(
            (last.offset, last.len, last.zoffset, last.zsize),
            (8192, 1808, 300, 50)
        );
    }

    #[test]
    fn inconsistent_manifests_are_refused_with_the_reason() {
        let err = |text: String| Manifest::parse(&text).unwrap_err();
        assert!(err(sample(10_000, 4096, &[100, 200])).contains("3 expected"));
        assert!(err(sample(10_000, 4096, &[100, 0, 5])).contains("chunk 1"));
        assert!(
            err(sample(10_000, 4096, &[1, 2, 3]).replace("\"format\": 1", "\"format\": 2"))
                .contains("format 2")
        );
        assert!(err(sample(10, 1 << 30, &[1])).contains("chunk_size"));
        assert!(err("{}".into()).contains("JSON"));
        let bad_total = sample(10_000, 4096, &[1, 2, 3])
            .replace("\"compressed_size\": 6", "\"compressed_size\": 7");
        assert!(err(bad_total).contains("compressed_size"));
    }

    #[test]
    fn manifest_sits_beside_the_image() {
        assert_eq!(
            manifest_url("https://h/os/os-2.img.zst").as_deref(),
            Some("https://h/os/os-2.manifest.json")
        );
        assert_eq!(
            manifest_url("https://h/os-2.img.zst?sig=1").as_deref(),
            Some("https://h/os-2.manifest.json?sig=1")
        );
        assert_eq!(manifest_url("file:///srv/os-2.img"), None);
        let d = [0x5a; 32];
        assert_eq!(parse_blake3(&format_blake3(&d)), Some(d));
        assert_eq!(parse_blake3("sha256:00"), None);
    }
}
