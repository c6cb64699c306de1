//! The bundle manifest is [`wire::manifest`], one definition for os-image
//! (which writes it) and the agent (which reads it); docs/bundle.md documents
//! it field by field. Here: reading and writing it as a file.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
pub use wire::manifest::{Chunk, Manifest, DEFAULT_CHUNK_SIZE, FORMAT, MAX_MANIFEST_BYTES};

/// A manifest as a file beside its image.
pub trait ManifestFile: Sized {
    /// Reads and checks a manifest file.
    fn load(path: &Path) -> Result<Self>;
    /// Writes the manifest's JSON text.
    fn save(&self, path: &Path) -> Result<()>;
    /// Path of the compressed image, for a manifest read from `manifest_path`.
    fn image_path(&self, manifest_path: &Path) -> PathBuf;
}

impl ManifestFile for Manifest {
    fn load(path: &Path) -> Result<Manifest> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("read manifest {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_MANIFEST_BYTES,
            "manifest {} is {size} bytes, more than a bundle manifest can be ({MAX_MANIFEST_BYTES})",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read manifest {}", path.display()))?;
        Manifest::parse(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("manifest {}", path.display()))
    }

    fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json())
            .with_context(|| format!("write manifest {}", path.display()))
    }

    fn image_path(&self, manifest_path: &Path) -> PathBuf {
        manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.image)
    }
}
