//! Writes a bundle's root image into place, one zstd frame (chunk) at a time,
//! checking each chunk's BLAKE3 and the whole image's digest against the
//! manifest. Memory: one compressed and one uncompressed chunk.

use crate::manifest::Manifest;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub fn write_image(m: &Manifest, image: &Path, out: &mut File, offset: u64) -> Result<()> {
    let mut input =
        File::open(image).with_context(|| format!("open bundle image {}", image.display()))?;
    let actual = input.metadata()?.len();
    if actual != m.compressed_size {
        bail!(
            "{} is {actual} bytes, its manifest says {}",
            image.display(),
            m.compressed_size
        );
    }
    let mut whole = blake3::Hasher::new();
    let mut frame = Vec::new();
    out.seek(SeekFrom::Start(offset))?;
    for (i, chunk) in m.chunks.iter().enumerate() {
        frame.resize(chunk.zsize as usize, 0);
        input
            .read_exact(&mut frame)
            .with_context(|| format!("read chunk {i} of {}", image.display()))?;
        let expected_len = (m.image_size - i as u64 * m.chunk_size).min(m.chunk_size) as usize;
        let data = zstd::bulk::decompress(&frame, expected_len).with_context(|| {
            format!("chunk {i} of {} is not a valid zstd frame", image.display())
        })?;
        if data.len() != expected_len || *blake3::hash(&data).as_bytes() != chunk.digest {
            bail!(
                "chunk {i} of {} does not match its manifest digest",
                image.display()
            );
        }
        whole.update(&data);
        out.write_all(&data)?;
    }
    let digest = wire::Digest::blake3(*whole.finalize().as_bytes());
    if digest != m.image_digest {
        bail!(
            "{} decompresses to {digest}, its manifest says {}",
            image.display(),
            m.image_digest
        );
    }
    Ok(())
}
