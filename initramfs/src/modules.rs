//! Kernel modules shipped in the initramfs: flat under `/modules/<name>.ko`,
//! loaded in the order `/modules/load-order` lists them (dependencies first;
//! the image builder resolves them from `modules.dep` at build time, so no
//! depmod or modprobe is needed here).

use crate::sys;
use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Name of the list inside the modules directory.
pub const LOAD_ORDER: &str = "load-order";

/// The module file names in `text`, one a line; blank lines and `#` comments
/// are skipped. A name that is not a plain file name is returned as a warning.
pub fn parse_load_order(text: &str) -> (Vec<String>, Vec<String>) {
    let mut names = vec![];
    let mut warnings = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains('/') || line == "." || line == ".." {
            warnings.push(format!(
                "{LOAD_ORDER}: skipping {line:?}: not a file name in the modules directory"
            ));
            continue;
        }
        names.push(line.to_owned());
    }
    (names, warnings)
}

/// How a module load ended.
#[derive(Debug)]
pub enum Loaded {
    Loaded,
    /// Built into the kernel or loaded before (EEXIST).
    AlreadyPresent,
    Failed(io::Error),
}

fn load_one(path: &Path) -> Loaded {
    let result = File::open(path).and_then(|f| sys::finit_module(&f));
    match result {
        Ok(()) => Loaded::Loaded,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Loaded::AlreadyPresent,
        Err(e) => Loaded::Failed(e),
    }
}

/// Loads every module `dir/load-order` lists. Failures are logged and skipped:
/// whatever was essential shows up later as a disk or filesystem that does not
/// appear, with a clearer message than a module error.
pub fn load_all(dir: &Path) {
    let list = dir.join(LOAD_ORDER);
    let text = match fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::info!("no {}: loading no kernel modules", list.display());
            return;
        }
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; loading no kernel modules",
                list.display()
            );
            return;
        }
    };
    let (names, warnings) = parse_load_order(&text);
    for w in warnings {
        log::warn!("{w}");
    }
    let mut loaded = vec![];
    let mut present = vec![];
    for name in &names {
        let path = dir.join(name);
        match load_one(&path) {
            Loaded::Loaded => loaded.push(name.as_str()),
            Loaded::AlreadyPresent => present.push(name.as_str()),
            Loaded::Failed(e) => log::warn!("cannot load module {}: {e}", path.display()),
        }
    }
    log::info!(
        "loaded {} of {} kernel modules from {}: {}",
        loaded.len(),
        names.len(),
        dir.display(),
        loaded.join(" ")
    );
    if !present.is_empty() {
        log::info!("already present: {}", present.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_lines() {
        let (names, warnings) = parse_load_order(
            "# virtio disk first\nvirtio_pci.ko\n\n  virtio_blk.ko  \r\nnls_cp437.ko\n",
        );
        assert_eq!(names, ["virtio_pci.ko", "virtio_blk.ko", "nls_cp437.ko"]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn paths_are_refused() {
        let (names, warnings) =
            parse_load_order("kernel/fs/fat/vfat.ko\n../evil.ko\n..\next4.ko\n");
        assert_eq!(names, ["ext4.ko"]);
        assert_eq!(warnings.len(), 3);
        assert!(
            warnings[0].contains("\"kernel/fs/fat/vfat.ko\""),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn empty_list() {
        assert_eq!(parse_load_order(""), (vec![], vec![]));
        assert_eq!(parse_load_order("\n# nothing\n"), (vec![], vec![]));
    }

    #[test]
    fn missing_module_file_is_a_failure_not_a_panic() {
        let t = crate::testutil::TempDir::new();
        match load_one(&t.path().join("nope.ko")) {
            Loaded::Failed(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
