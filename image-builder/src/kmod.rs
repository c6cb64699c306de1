//! The kernel modules `os-init` loads to find and mount the slots, and the
//! order to load them in.
//!
//! Resolved from the modules themselves (each `.ko`'s `.modinfo` section:
//! `depends=`, `softdep=pre:`, `alias=`), not from depmod's output, so a rootfs
//! unpacked from a kernel package without running depmod works as well. The
//! initramfs has no modprobe: whatever a module would request at run time has
//! to be loaded before it, hence the load order with dependencies first.

use crate::elf;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules for the disks of the usual virtual and physical machines, the root
/// and persistent filesystems, the ESP (FAT with its code pages) and the /etc
/// overlay. crc32c_generic provides "crypto-crc32c", which ext4 and jbd2 ask
/// the crypto API for when they mount a metadata_csum filesystem. dm_verity
/// (with dm_mod, dm_bufio): os-init mounts the root through it.
pub const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "overlay",
    "crc32c_generic",
    VERITY_MODULE,
];

/// Left out of bundles built with `--no-verity`.
pub const VERITY_MODULE: &str = "dm_verity";

/// A module file to put in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Name with `-` as `_`, as the kernel compares them.
    pub name: String,
    pub path: PathBuf,
}

impl Module {
    /// The file's own name, e.g. `nvme-core.ko`.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// What `.modinfo` says about a module's relations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub depends: Vec<String>,
    pub softdep_pre: Vec<String>,
    pub aliases: Vec<String>,
}

/// Module names treat `-` and `_` as the same character.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses a `.modinfo` section: NUL-separated `key=value` strings.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "depends" => info
                .depends
                .extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "softdep" => info.softdep_pre.extend(softdep_pre(value)),
            "alias" => info.aliases.push(value.to_string()),
            _ => {}
        }
    }
    info
}

/// The `pre:` names of a softdep value such as `pre: crc32c post: foo`.
fn softdep_pre(value: &str) -> Vec<String> {
    let mut pre = false;
    let mut names = Vec::new();
    for word in value.split_whitespace() {
        match word {
            "pre:" => pre = true,
            "post:" => pre = false,
            name if pre => names.push(normalize(name)),
            _ => {}
        }
    }
    names
}

/// The modules of one kernel release: files by name, and what is built in.
#[derive(Debug, Default)]
pub struct ModuleTree {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    compressed: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeSet<String>,
}

impl ModuleTree {
    /// Indexes `dir` (`lib/modules/<release>`): every `*.ko` below it, and the
    /// kernel's own lists of built-in modules.
    pub fn scan(dir: &Path) -> Result<ModuleTree> {
        let mut tree = ModuleTree {
            dir: dir.to_path_buf(),
            ..ModuleTree::default()
        };
        let mut found = Vec::new();
        walk(dir, &mut found)?;
        // depmod's search order: updates/ overrides the kernel's own modules.
        found.sort_by_cached_key(|p| (!p.starts_with(dir.join("updates")), p.clone()));
        for path in found {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some(stem) = file.strip_suffix(".ko") {
                tree.files.entry(normalize(stem)).or_insert(path.clone());
            } else if let Some((stem, _)) = file.split_once(".ko.") {
                tree.compressed
                    .entry(normalize(stem))
                    .or_insert(path.clone());
            }
        }
        tree.read_builtin()?;
        Ok(tree)
    }

    fn read_builtin(&mut self) -> Result<()> {
        let list = self.dir.join("modules.builtin");
        if let Some(text) = read_optional(&list)? {
            let names = text
                .lines()
                .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"));
            self.builtin.extend(names.map(normalize));
        }
        let modinfo = self.dir.join("modules.builtin.modinfo");
        if let Some(text) = read_optional(&modinfo)? {
            for entry in text.split('\0') {
                if let Some((_, alias)) = entry.split_once(".alias=") {
                    self.builtin_aliases.insert(normalize(alias));
                }
            }
        }
        Ok(())
    }

    fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name) || self.builtin_aliases.contains(name)
    }

    /// The file of module `name`, with an error that says what was looked for.
    fn file(&self, name: &str, needed_by: Option<&str>) -> Result<&PathBuf> {
        if let Some(path) = self.files.get(name) {
            return Ok(path);
        }
        let why = needed_by
            .map(|m| format!(" (needed by {m})"))
            .unwrap_or_default();
        if let Some(path) = self.compressed.get(name) {
            bail!(
                "module {name}{why} is compressed ({}): unpack the rootfs's modules to plain .ko files",
                path.display()
            );
        }
        bail!(
            "module {name}{why} is neither a .ko file under {} nor listed in its modules.builtin",
            self.dir.display()
        )
    }
}

/// Bound on `modules.builtin` and `modules.builtin.modinfo` (about 1 MiB in a
/// distribution kernel).
const MAX_BUILTIN_LIST: u64 = 64 << 20;

/// A list file of the input rootfs: a regular file, not through a symlink
/// (an absolute one would name a file of the build host: `/dev/zero` read
/// until memory ran out, a FIFO blocked the build), bounded.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "{} is a symlink; the rootfs's module lists must be regular files",
                path.display()
            )
        }
        _ => {}
    }
    let bytes = bootctl::small_file::read_bytes(path, MAX_BUILTIN_LIST)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Regular files below `dir`; symlinks (`build`, `source`) are not followed.
fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), found)?;
        } else if kind.is_file() {
            found.push(entry.path());
        }
    }
    Ok(())
}

/// Files of the modules `wanted` and of everything they depend on, relative
/// to `modules_dir` (`lib/modules/<release>`), dependencies first: what to
/// copy into a rootfs that should carry only those modules.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let tree = ModuleTree::scan(modules_dir)?;
    Ok(tree
        .resolve(wanted)?
        .into_iter()
        .map(|m| {
            m.path
                .strip_prefix(modules_dir)
                .unwrap_or(&m.path)
                .to_path_buf()
        })
        .collect())
}

impl ModuleTree {
    /// The modules `wanted` and everything they depend on, dependencies first.
    /// A wanted module built into the kernel is skipped with a warning.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let mut roots = Vec::new();
        for name in wanted.iter().map(|w| normalize(w)) {
            if !self.files.contains_key(&name) && self.is_builtin(&name) {
                log::warn!("module {name} is built into the kernel; skipped");
                continue;
            }
            self.file(&name, None)?;
            roots.push(name);
        }
        let infos = closure(self, &roots)?;
        let edges = edges(self, &infos);
        let order = load_order(&edges, &roots).map_err(anyhow::Error::msg)?;
        Ok(order
            .into_iter()
            .map(|name| Module {
                path: self.files[&name].clone(),
                name,
            })
            .collect())
    }
}

/// Reads `.modinfo` of the roots and, transitively, of every module they
/// depend on or soft-depend on by module name.
fn closure(tree: &ModuleTree, roots: &[String]) -> Result<BTreeMap<String, ModInfo>> {
    let mut infos = BTreeMap::new();
    let mut queue: Vec<(String, Option<String>)> =
        roots.iter().map(|r| (r.clone(), None)).collect();
    while let Some((name, needed_by)) = queue.pop() {
        if infos.contains_key(&name) {
            continue;
        }
        let path = tree.file(&name, needed_by.as_deref())?;
        let section = elf::section(path, ".modinfo")?
            .with_context(|| format!("{} has no .modinfo section", path.display()))?;
        let info = parse_modinfo(&section);
        for dep in &info.depends {
            if !tree.is_builtin(dep) || tree.files.contains_key(dep) {
                queue.push((dep.clone(), Some(name.clone())));
            }
        }
        for soft in info
            .softdep_pre
            .iter()
            .filter(|s| tree.files.contains_key(*s))
        {
            queue.push((soft.clone(), Some(name.clone())));
        }
        infos.insert(name, info);
    }
    Ok(infos)
}

/// For each module, the modules that must be loaded before it: its
/// `depends=`, then its `pre:` softdeps, named directly or by an alias of a
/// module in the set (e.g. "crypto-crc32c" of crc32c_generic).
fn edges(tree: &ModuleTree, infos: &BTreeMap<String, ModInfo>) -> BTreeMap<String, Vec<String>> {
    let mut by_alias = BTreeMap::new();
    for (name, info) in infos {
        for alias in &info.aliases {
            by_alias.entry(normalize(alias)).or_insert(name.clone());
        }
    }
    let mut edges = BTreeMap::new();
    for (name, info) in infos {
        let mut before: Vec<String> = info
            .depends
            .iter()
            .filter(|d| infos.contains_key(*d))
            .cloned()
            .collect();
        for soft in &info.softdep_pre {
            match infos
                .get_key_value(soft)
                .map(|(k, _)| k)
                .or(by_alias.get(soft))
            {
                Some(m) if m != name => before.push(m.clone()),
                Some(_) => {}
                None if tree.is_builtin(soft) => {}
                None => log::info!(
                    "softdep {soft} of {name} is not in the initramfs (optional, skipped)"
                ),
            }
        }
        edges.insert(name.clone(), before);
    }
    edges
}

/// Depth-first post-order from `roots` in their order: every module after
/// what it needs, each once. A dependency cycle is an error naming it.
pub fn load_order(
    edges: &BTreeMap<String, Vec<String>>,
    roots: &[String],
) -> Result<Vec<String>, String> {
    fn visit<'a>(
        name: &'a str,
        edges: &'a BTreeMap<String, Vec<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(at) = path.iter().position(|p| *p == name) {
            let cycle: Vec<&str> = path[at..].iter().copied().chain([name]).collect();
            return Err(format!("module dependency cycle: {}", cycle.join(" -> ")));
        }
        path.push(name);
        for dep in edges.get(name).into_iter().flatten() {
            visit(dep, edges, path, done, order)?;
        }
        path.pop();
        done.insert(name);
        order.push(name.to_string());
        Ok(())
    }
    let (mut path, mut done, mut order) = (Vec::new(), BTreeSet::new(), Vec::new());
    for root in roots {
        visit(root, edges, &mut path, &mut done, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn module_lists_are_read_only_from_regular_files_of_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("modules.builtin");
        assert_eq!(read_optional(&list).unwrap(), None);
        // An absolute symlink names the build host's file (was read whole).
        std::os::unix::fs::symlink("/dev/zero", &list).unwrap();
        let err = format!("{:#}", read_optional(&list).unwrap_err());
        assert!(err.contains("is a symlink"), "{err}");
        // A FIFO (was an open that never returned).
        std::fs::remove_file(&list).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&list)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(read_optional(&list).is_err());
        std::fs::remove_file(&list).unwrap();
        std::fs::write(&list, "kernel/a/b.ko\n").unwrap();
        assert_eq!(
            read_optional(&list).unwrap().as_deref(),
            Some("kernel/a/b.ko\n")
        );
    }

    #[test]
    fn modinfo_fields() {
        let section =
            b"license=GPL\0depends=jbd2,mbcache,crc16\0softdep=pre: crypto-crc32c post: x\0\
                        alias=fs-ext4\0alias=ext3\0name=ext4\0\0\0";
        let info = parse_modinfo(section);
        assert_eq!(info.depends, names(&["jbd2", "mbcache", "crc16"]));
        assert_eq!(info.softdep_pre, names(&["crypto_crc32c"]));
        assert_eq!(info.aliases, names(&["fs-ext4", "ext3"]));
        assert_eq!(parse_modinfo(b"depends=\0"), ModInfo::default());
    }

    #[test]
    fn softdeps_keep_only_pre() {
        assert_eq!(
            softdep_pre("pre: a b-c post: d pre: e"),
            names(&["a", "b_c", "e"])
        );
        assert!(softdep_pre("post: a").is_empty());
    }

    #[test]
    fn order_puts_dependencies_first_following_the_roots() {
        let g = graph(&[
            ("ext4", &["jbd2", "mbcache", "crc16"]),
            ("jbd2", &["crc32c_generic"]),
            ("vfat", &["fat"]),
            ("fat", &[]),
            ("mbcache", &[]),
            ("crc16", &[]),
            ("crc32c_generic", &[]),
        ]);
        let order = load_order(&g, &names(&["vfat", "ext4", "crc32c_generic"])).unwrap();
        assert_eq!(
            order,
            names(&[
                "fat",
                "vfat",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ])
        );
    }

    #[test]
    fn cycle_is_named() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(
            load_order(&g, &names(&["a"])).unwrap_err(),
            "module dependency cycle: a -> b -> c -> a"
        );
    }
}
