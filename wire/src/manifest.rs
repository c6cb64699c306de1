//! The bundle manifest (docs/bundle.md), `NAME.manifest.json` beside
//! `NAME.img.zst`: written by `os-image bundle`, read by `os-image` (disk,
//! oci) and by the agent. One type, one parser that checks it, one writer.
//!
//! The compressed image is a sequence of independent zstd frames, one per
//! chunk of the uncompressed image, so a download can resume at any chunk
//! boundary and every chunk is verified on its own before the next one. The
//! manifest is never trusted on its own: the request's digest is the trust
//! anchor, and every chunk is hashed as it arrives.

use crate::digest::{self, Digest};
use crate::record::{SlotRecord, SlotState};
use crate::verity::Verity;
use crate::Slot;
use miniserde::{Deserialize, Serialize};

/// The manifest layout written and read (`format`).
pub const FORMAT: u32 = 1;
/// Default uncompressed chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Largest chunk accepted: a chunk's frame must decode within the agent's
/// zstd window limit (2^23 bytes).
pub const MAX_CHUNK_SIZE: u64 = 1 << 23;
/// A manifest larger than this is refused unread: it would describe an image
/// of terabytes, and it is held in memory while the image streams.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// One chunk: `len` uncompressed bytes at `offset` in the image, compressed
/// as one zstd frame at `zoffset..zoffset + zsize` of the `.img.zst`.
/// `offset` and `len` follow from the chunk's index and are not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// BLAKE3 of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
    pub offset: u64,
    pub len: u64,
    pub zoffset: u64,
    pub zsize: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Bundle name (`NAME` of the files).
    pub name: String,
    /// The image's OS version (`VERSION_ID`); recorded with the slot.
    pub os_version: String,
    pub arch: String,
    /// File name of the compressed image, relative to the manifest.
    pub image: String,
    /// Bytes of the uncompressed root image.
    pub image_size: u64,
    /// BLAKE3 of the uncompressed root image: the trust anchor an OS custom
    /// resource carries.
    pub image_digest: Digest,
    /// Bytes of the `.img.zst` (the sum of the frames).
    pub compressed_size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<Chunk>,
    /// The dm-verity tree the image ends with (`image_size` covers data and
    /// tree); absent in bundles built before it.
    pub verity: Option<Verity>,
}

/// The JSON layout, field for field.
#[derive(Serialize, Deserialize)]
struct RawChunk {
    digest: String,
    zoffset: u64,
    zsize: u64,
}

#[derive(Serialize, Deserialize)]
struct RawManifest {
    format: u32,
    name: String,
    os_version: String,
    arch: String,
    image: String,
    image_size: u64,
    image_digest: String,
    compressed_size: u64,
    chunk_size: u64,
    /// [`Verity::to_arg`]; written only when present.
    verity: Option<String>,
    chunks: Vec<RawChunk>,
}

impl Manifest {
    /// The record of `slot` holding this image, written at `written_at`:
    /// version, digest, size and verity from the manifest; no confirmation
    /// policy and no source other than the digest (set them after).
    pub fn slot_record(&self, slot: Slot, state: SlotState, written_at: u64) -> SlotRecord {
        SlotRecord {
            slot,
            state,
            version: self.os_version.clone(),
            digest: self.image_digest.to_string(),
            size: self.image_size,
            written_at,
            confirm: None,
            source: String::new(),
            verity: self.verity.as_ref().map(Verity::to_arg),
        }
    }

    /// Builds a manifest from its chunks as they were compressed, in order:
    /// `(BLAKE3 of the uncompressed chunk, length of its frame)`.
    pub fn from_chunks(
        name: &str,
        os_version: &str,
        image: &str,
        image_size: u64,
        image_digest: Digest,
        chunk_size: u64,
        frames: impl IntoIterator<Item = ([u8; 32], u64)>,
    ) -> Manifest {
        let mut zoffset = 0;
        let chunks = frames
            .into_iter()
            .enumerate()
            .map(|(i, (digest, zsize))| {
                let offset = i as u64 * chunk_size;
                let c = Chunk {
                    digest,
                    offset,
                    len: chunk_size.min(image_size.saturating_sub(offset)),
                    zoffset,
                    zsize,
                };
                zoffset += zsize;
                c
            })
            .collect();
        Manifest {
            name: name.to_owned(),
            os_version: os_version.to_owned(),
            arch: "x86_64".to_owned(),
            image: image.to_owned(),
            image_size,
            image_digest,
            compressed_size: zoffset,
            chunk_size,
            chunks,
            verity: None,
        }
    }

    /// Parses and checks a manifest's JSON text.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest = miniserde::json::from_str(text).map_err(|_| {
            "not valid manifest JSON (a field is missing or has the wrong type)".to_owned()
        })?;
        if raw.format != FORMAT {
            return Err(format!(
                "format {} is not supported (this build reads {FORMAT})",
                raw.format
            ));
        }
        let image_digest =
            Digest::parse_as(&raw.image_digest, digest::Algorithm::Blake3).map_err(|_| {
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
        let mut chunks = Vec::with_capacity(raw.chunks.len().min(1 << 16));
        let mut zoffset = 0u64;
        for (i, c) in raw.chunks.iter().enumerate() {
            let digest = digest::parse_hex32(&c.digest)
                .ok_or_else(|| format!("chunk {i}: digest is not 64 hex digits"))?;
            if c.zoffset != zoffset || c.zsize == 0 {
                return Err(format!(
                    "chunk {i}: frame at {} (+{}) does not follow the previous one at {zoffset}",
                    c.zoffset, c.zsize
                ));
            }
            let offset = i as u64 * raw.chunk_size;
            chunks.push(Chunk {
                digest,
                offset,
                len: raw.chunk_size.min(raw.image_size.saturating_sub(offset)),
                zoffset,
                zsize: c.zsize,
            });
            zoffset = zoffset
                .checked_add(c.zsize)
                .ok_or_else(|| format!("chunk {i}: frame sizes overflow"))?;
        }
        let m = Manifest {
            name: raw.name,
            os_version: raw.os_version,
            arch: raw.arch,
            image: raw.image,
            image_size: raw.image_size,
            image_digest,
            compressed_size: raw.compressed_size,
            chunk_size: raw.chunk_size,
            chunks,
            verity: raw
                .verity
                .as_deref()
                .map(Verity::parse_arg)
                .transpose()
                .map_err(|e| format!("verity: {e}"))?,
        };
        m.check()?;
        Ok(m)
    }

    /// Internal consistency: chunk count, extents and frame layout, and text
    /// that is recorded or used as a file name.
    pub fn check(&self) -> Result<(), String> {
        if !self.image_digest.is_blake3() {
            return Err(format!(
                "image_digest {} is not a blake3: digest",
                self.image_digest
            ));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(format!(
                "chunk_size {} is not between 1 and {MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        let expected = self.image_size.div_ceil(self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "{} chunks listed, {expected} expected for {} bytes",
                self.chunks.len(),
                self.image_size
            ));
        }
        let mut zoffset = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let offset = i as u64 * self.chunk_size;
            let len = self.chunk_size.min(self.image_size - offset);
            if c.offset != offset || c.len != len || c.zoffset != zoffset || c.zsize == 0 {
                return Err(format!("chunk {i} is malformed or out of place"));
            }
            zoffset += c.zsize;
        }
        if zoffset != self.compressed_size {
            return Err(format!(
                "chunk frames cover {zoffset} bytes, compressed_size says {}",
                self.compressed_size
            ));
        }
        if let Some(v) = &self.verity {
            v.check()?;
            if v.total_bytes() != self.image_size {
                return Err(format!(
                    "verity data and tree make {} bytes, image_size says {}",
                    v.total_bytes(),
                    self.image_size
                ));
            }
        }
        // The version is recorded with the slot: one line of text.
        crate::record::check_text(&self.os_version).map_err(|e| format!("os_version {e}"))?;
        let image = std::path::Path::new(&self.image);
        if self.image.is_empty()
            || image.components().count() != 1
            || !matches!(
                image.components().next(),
                Some(std::path::Component::Normal(_))
            )
        {
            return Err(format!(
                "image {:?} is not a file name beside the manifest",
                self.image
            ));
        }
        Ok(())
    }

    /// The manifest as JSON text: one field per line, one chunk per line,
    /// with a trailing newline.
    pub fn to_json(&self) -> String {
        let raw = RawManifest {
            format: FORMAT,
            name: self.name.clone(),
            os_version: self.os_version.clone(),
            arch: self.arch.clone(),
            image: self.image.clone(),
            image_size: self.image_size,
            image_digest: self.image_digest.to_string(),
            compressed_size: self.compressed_size,
            chunk_size: self.chunk_size,
            verity: self.verity.as_ref().map(Verity::to_arg),
            chunks: vec![],
        };
        let head = miniserde::json::to_string(&raw);
        // `…,"chunks":[]}`: the fields, then the chunks one per line.
        let fields = head
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix(r#","chunks":[]}"#))
            .unwrap_or_default();
        let mut out = String::from("{\n");
        // A manifest without verity is byte for byte what older builds wrote.
        for field in split_top_level(fields)
            .into_iter()
            .filter(|f| *f != r#""verity":null"#)
        {
            out.push_str("  ");
            out.push_str(field);
            out.push_str(",\n");
        }
        out.push_str("  \"chunks\": [");
        for (i, c) in self.chunks.iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            out.push_str(&miniserde::json::to_string(&RawChunk {
                digest: digest::hex(&c.digest),
                zoffset: c.zoffset,
                zsize: c.zsize,
            }));
        }
        out.push_str(if self.chunks.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
        out
    }
}

/// Splits `"a":1,"b":"x,y"` at the commas between fields (not inside strings).
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut start, mut in_str, mut esc) = (vec![], 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match (in_str, esc, b) {
            (true, true, _) => esc = false,
            (true, false, b'\\') => esc = true,
            (true, false, b'"') => in_str = false,
            (false, _, b'"') => in_str = true,
            (false, _, b',') => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
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
        assert_eq!(m.image_digest, Digest::blake3([0xcd; 32]));
        let last = m.chunks[2];
        assert_eq!(
            (last.offset, last.len, last.zoffset, last.zsize),
            (8192, 1808, 300, 50)
        );
    }

    #[test]
    fn written_text_parses_back_to_the_same_manifest() {
        let m = Manifest::from_chunks(
            "os-2",
            "2 \"quoted\", with commas",
            "os-2.img.zst",
            10_000,
            Digest::blake3([7; 32]),
            4096,
            [([1; 32], 100), ([2; 32], 200), ([3; 32], 50)],
        );
        m.check().unwrap();
        let text = m.to_json();
        assert!(text.starts_with("{\n  \"format\":1,\n"), "{text}");
        assert!(text.ends_with("\n  ]\n}\n"));
        assert_eq!(text.lines().count(), 16, "{text}");
        assert_eq!(Manifest::parse(&text).unwrap(), m);
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
        let sha = sample(10, 4096, &[1]).replace("blake3:", "sha256:");
        assert!(err(sha).contains("image_digest"));
        let version = sample(10, 4096, &[1])
            .replace(r#""os_version": "2""#, r#""os_version": "2\nstate=good""#);
        assert!(err(version).contains("os_version"));
        let escape = sample(10, 4096, &[1]).replace(
            "\"image\": \"os-2.img.zst\"",
            "\"image\": \"../etc/shadow\"",
        );
        assert!(err(escape).contains("file name"));
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
    }

    #[test]
    fn verity_is_written_only_when_present_and_must_cover_the_image() {
        let data_blocks = 256u64;
        let size = data_blocks * 4096 + crate::verity::tree_bytes(data_blocks);
        let frames = (0..size.div_ceil(1 << 20)).map(|_| ([1u8; 32], 10));
        let mut m = Manifest::from_chunks(
            "os-2",
            "2",
            "os-2.img.zst",
            size,
            Digest::blake3([2; 32]),
            1 << 20,
            frames,
        );
        assert!(!m.to_json().contains("verity"), "{}", m.to_json());
        assert_eq!(Manifest::parse(&m.to_json()).unwrap().verity, None);
        m.verity = Some(Verity {
            data_blocks,
            hash_offset: data_blocks * 4096,
            salt: [3; 32],
            root_hash: [4; 32],
        });
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        m.verity.as_mut().unwrap().data_blocks = 255;
        m.verity.as_mut().unwrap().hash_offset = 255 * 4096;
        let err = Manifest::parse(&m.to_json()).unwrap_err();
        assert!(err.contains("image_size"), "{err}");
        let text = m
            .to_json()
            .replace(&m.verity.as_ref().unwrap().to_arg(), "1:2:3:4");
        assert!(Manifest::parse(&text).unwrap_err().starts_with("verity:"));
    }

    #[test]
    fn a_slot_record_names_the_image_as_its_manifest_does() {
        let frames = (0..3).map(|k| ([k as u8; 32], 10));
        let mut m = Manifest::from_chunks(
            "os-2",
            "2.1",
            "os-2.img.zst",
            3 << 20,
            Digest::blake3([7; 32]),
            1 << 20,
            frames,
        );
        let rec = m.slot_record(Slot::B, SlotState::Written, 42);
        assert_eq!(
            (
                rec.slot,
                rec.state,
                rec.version.as_str(),
                rec.size,
                rec.written_at
            ),
            (Slot::B, SlotState::Written, "2.1", 3 << 20, 42)
        );
        assert_eq!(rec.digest, format!("blake3:{}", "07".repeat(32)));
        assert_eq!(
            (rec.confirm, rec.source.as_str(), rec.verity),
            (None, "", None)
        );
        m.verity = Some(Verity {
            data_blocks: 512,
            hash_offset: 512 * 4096,
            salt: [3; 32],
            root_hash: [4; 32],
        });
        let rec = m.slot_record(Slot::A, SlotState::Good, 1);
        assert_eq!(rec.verity, Some(m.verity.as_ref().unwrap().to_arg()));
    }
}
