//! `os-image demo-rootfs`. (Being written.)

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub version: String,
    pub kernel_deb: PathBuf,
    pub out: PathBuf,
    pub agent: Option<PathBuf>,
    pub broken: bool,
}

pub fn run(_opts: &DemoOptions) -> Result<()> {
    bail!("not implemented yet")
}
