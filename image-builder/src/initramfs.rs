//! The initramfs inside each root image (`/boot/initramfs.img`): `os-init` as
//! `/init`, the mount points it uses, and the kernel modules it loads.
//!
//! Contract with `os-init`: modules lie flat in `/modules/<file>.ko`, and
//! `/modules/load-order` lists their file names one per line, dependencies
//! before dependents; `os-init` loads them in that order with finit_module.
//!
//! A gzip-compressed cpio (the Debian kernel has RD_GZIP built in), written
//! by our own [`CpioWriter`] so that it needs no root (a `dev/console` node is
//! only a header) and is deterministic: fixed entry order, inode numbers,
//! owners and mtime, and a gzip header with mtime 0 and no file name.

use crate::cpio::CpioWriter;
use crate::kmod::Module;
use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Directories `os-init` mounts on or works in before the switch to the root.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("sysroot", 0o755),
    ("tmp", 0o1777),
    ("modules", 0o755),
];

/// Name of the load-order file inside `/modules`.
pub const LOAD_ORDER: &str = "load-order";

/// Text of `/modules/load-order`: one file name per line, in load order.
pub fn load_order_text(modules: &[Module]) -> String {
    modules.iter().map(|m| m.file_name() + "\n").collect()
}

/// Writes the cpio archive (uncompressed) to `out`.
pub fn write_cpio<W: Write>(out: W, os_init: &Path, modules: &[Module], mtime: u32) -> Result<W> {
    let mut cpio = CpioWriter::new(out, mtime);
    for (dir, perm) in DIRS {
        cpio.dir(dir, *perm)?;
    }
    // Without it the kernel starts /init with no stdin, stdout or stderr.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    add_file(&mut cpio, "init", 0o755, os_init)?;
    for m in modules {
        add_file(
            &mut cpio,
            &format!("modules/{}", m.file_name()),
            0o644,
            &m.path,
        )?;
    }
    let order = load_order_text(modules);
    let name = format!("modules/{LOAD_ORDER}");
    cpio.file(&name, 0o644, order.len() as u64, &mut order.as_bytes())?;
    Ok(cpio.finish()?)
}

fn add_file<W: Write>(cpio: &mut CpioWriter<W>, name: &str, perm: u32, path: &Path) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = file.metadata()?.len();
    cpio.file(name, perm, len, &mut file)
        .with_context(|| format!("add {} to the initramfs as /{name}", path.display()))
}

/// Writes the gzip-compressed initramfs to `path`, which must not exist: a
/// file there may be a hard link into the user's rootfs (see rootfs::stage).
pub fn build(path: &Path, os_init: &Path, modules: &[Module], mtime: u32) -> Result<()> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let gz: GzEncoder<BufWriter<File>> = GzBuilder::new()
        .mtime(0)
        .write(BufWriter::new(file), Compression::default());
    let gz = write_cpio(gz, os_init, modules, mtime)?;
    let mut file = gz
        .finish()
        .with_context(|| format!("write {}", path.display()))?;
    file.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn same_bytes_twice_and_load_order_last() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("os-init");
        std::fs::write(&init, b"#!init").unwrap();
        let m = |name: &str| {
            let path = dir.path().join(format!("{name}.ko"));
            std::fs::write(&path, name).unwrap();
            Module {
                name: name.replace('-', "_"),
                path,
            }
        };
        let modules = [m("fat"), m("nvme-core"), m("vfat")];
        assert_eq!(load_order_text(&modules), "fat.ko\nnvme-core.ko\nvfat.ko\n");
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        build(&a, &init, &modules, 5).unwrap();
        build(&b, &init, &modules, 5).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut cpio)
            .unwrap();
        let text = String::from_utf8_lossy(&cpio);
        for name in [
            "dev/console\0",
            "init\0",
            "#!init",
            "modules/nvme-core.ko\0",
            "modules/load-order\0",
        ] {
            assert!(text.contains(name), "{name:?} missing");
        }
    }
}
