//! `os-image disk`. (Being written.)

use crate::cli::Format;
use anyhow::{bail, Result};
use bootctl::Slot;
use std::path::PathBuf;

/// Kernel command line both slots get unless told otherwise.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=10";

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub bundle: PathBuf,
    pub bundle_b: Option<PathBuf>,
    pub arm: Option<Slot>,
    pub tries: u8,
    pub size: Option<u64>,
    pub slot_size: Option<u64>,
    pub format: Format,
    pub cmdline: String,
    pub out: PathBuf,
}

pub fn run(_opts: &DiskOptions) -> Result<()> {
    bail!("not implemented yet")
}
