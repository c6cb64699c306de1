//! `os-image bundle`. (Being written.)

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub rootfs: PathBuf,
    pub version: String,
    pub out: PathBuf,
    pub name: Option<String>,
    pub root_size: Option<u64>,
    pub os_init: Option<PathBuf>,
    pub chunk_size: u64,
    pub level: i32,
}

/// Paths of the files a bundle build wrote.
#[derive(Debug, Clone)]
pub struct BundleOutput {
    pub image: PathBuf,
    pub manifest: PathBuf,
}

pub fn run(_opts: &BundleOptions) -> Result<BundleOutput> {
    bail!("not implemented yet")
}
