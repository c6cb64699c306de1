//! Finds the A/B disk's partitions by GPT partition name (DESIGN.md §3), from
//! sysfs: the kernel puts `PARTNAME=` in each GPT partition's `uevent`. Never by
//! filesystem label or UUID (both slots may hold byte-identical images), never
//! by guessing device names.
//!
//! `sys` and `dev` are passed in so tests can use a temp dir for both.

use crate::state::Slot;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const NAME_ESP: &str = "ESP";
pub const NAME_ROOT_A: &str = "ROOT-A";
pub const NAME_ROOT_B: &str = "ROOT-B";
pub const NAME_PERSIST: &str = "PERSIST";

/// Device nodes of the four partitions, all on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    /// Kernel name of the disk holding them (`vda`, `nvme0n1`).
    pub disk: String,
    pub esp: PathBuf,
    pub root_a: PathBuf,
    pub root_b: PathBuf,
    pub persist: PathBuf,
}

impl Partitions {
    pub fn root(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.root_a,
            Slot::B => &self.root_b,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    /// No disk carries all four names; `seen` lists `disk: name=device` found.
    NotFound { seen: Vec<String> },
    /// More than one disk carries all four names.
    Ambiguous { disks: Vec<String> },
    /// One disk carries a name twice.
    Duplicate { disk: String, name: String },
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::NotFound { seen } if seen.is_empty() => {
                write!(f, "no disk has GPT partitions named ESP, ROOT-A, ROOT-B and PERSIST (no named partitions at all)")
            }
            DiscoveryError::NotFound { seen } => write!(
                f,
                "no disk has GPT partitions named ESP, ROOT-A, ROOT-B and PERSIST (found: {})",
                seen.join(", ")
            ),
            DiscoveryError::Ambiguous { disks } => {
                write!(
                    f,
                    "several disks carry the A/B partitions: {}",
                    disks.join(", ")
                )
            }
            DiscoveryError::Duplicate { disk, name } => {
                write!(f, "disk {disk} has more than one partition named {name}")
            }
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// One partition as sysfs shows it.
#[derive(Debug, Clone)]
struct Part {
    disk: String,
    name: String,
    devname: String,
}

fn scan(sys: &Path) -> Vec<Part> {
    let mut parts = vec![];
    let Ok(entries) = fs::read_dir(sys.join("class/block")) else {
        return parts;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("partition").exists() {
            continue;
        }
        let Ok(uevent) = fs::read_to_string(path.join("uevent")) else {
            continue;
        };
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(name), Some(devname)) = (field("PARTNAME="), field("DEVNAME=")) else {
            continue;
        };
        // A partition's sysfs directory sits inside its disk's directory.
        let Some(disk) = fs::canonicalize(&path).ok().and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        }) else {
            continue;
        };
        parts.push(Part {
            disk,
            name,
            devname,
        });
    }
    parts.sort_by(|a, b| (&a.disk, &a.devname).cmp(&(&b.disk, &b.devname)));
    parts
}

/// Finds the one disk with partitions named ESP, ROOT-A, ROOT-B and PERSIST.
pub fn discover(sys: &Path, dev: &Path) -> Result<Partitions, DiscoveryError> {
    let parts = scan(sys);
    let mut by_disk: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for p in &parts {
        let names = by_disk.entry(&p.disk).or_default();
        if [NAME_ESP, NAME_ROOT_A, NAME_ROOT_B, NAME_PERSIST].contains(&p.name.as_str())
            && names.insert(&p.name, &p.devname).is_some()
        {
            return Err(DiscoveryError::Duplicate {
                disk: p.disk.clone(),
                name: p.name.clone(),
            });
        }
    }
    let complete: Vec<(&str, &BTreeMap<&str, &str>)> = by_disk
        .iter()
        .filter(|(_, n)| {
            [NAME_ESP, NAME_ROOT_A, NAME_ROOT_B, NAME_PERSIST]
                .iter()
                .all(|k| n.contains_key(k))
        })
        .map(|(d, n)| (*d, n))
        .collect();
    match complete.as_slice() {
        [(disk, names)] => Ok(Partitions {
            disk: disk.to_string(),
            esp: dev.join(names[NAME_ESP]),
            root_a: dev.join(names[NAME_ROOT_A]),
            root_b: dev.join(names[NAME_ROOT_B]),
            persist: dev.join(names[NAME_PERSIST]),
        }),
        [] => Err(DiscoveryError::NotFound {
            seen: parts
                .iter()
                .map(|p| format!("{}: {}={}", p.disk, p.name, p.devname))
                .collect(),
        }),
        many => Err(DiscoveryError::Ambiguous {
            disks: many.iter().map(|(d, _)| d.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a fake sysfs: devices/.../block/DISK/PART with a class/block link.
    fn fake(sys: &Path, disk: &str, parts: &[(&str, &str)]) {
        for (dev, name) in parts {
            let dir = sys.join("devices/virtual/block").join(disk).join(dev);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            fs::write(
                dir.join("uevent"),
                format!("MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\nPARTN=1\nPARTNAME={name}\n"),
            )
            .unwrap();
            fs::create_dir_all(sys.join("class/block")).unwrap();
            std::os::unix::fs::symlink(&dir, sys.join("class/block").join(dev)).unwrap();
        }
    }

    const AB: [&str; 4] = [NAME_ESP, NAME_ROOT_A, NAME_ROOT_B, NAME_PERSIST];

    #[test]
    fn finds_the_disk_with_all_four() {
        let t = tempfile::tempdir().unwrap();
        fake(
            t.path(),
            "vda",
            &[
                ("vda1", AB[0]),
                ("vda2", AB[1]),
                ("vda3", AB[2]),
                ("vda4", AB[3]),
            ],
        );
        // Another disk with only an ESP must not confuse discovery.
        fake(t.path(), "sdb", &[("sdb1", "ESP")]);
        let p = discover(t.path(), Path::new("/dev")).unwrap();
        assert_eq!(p.disk, "vda");
        assert_eq!(p.root(Slot::B), Path::new("/dev/vda3"));
        assert_eq!(p.persist, Path::new("/dev/vda4"));
    }

    #[test]
    fn missing_and_ambiguous_are_errors() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "vda", &[("vda1", AB[0]), ("vda2", AB[1])]);
        let err = discover(t.path(), Path::new("/dev")).unwrap_err();
        assert!(err.to_string().contains("vda: ESP=vda1"), "{err}");
        fake(
            t.path(),
            "vdb",
            &[
                ("vdb1", AB[0]),
                ("vdb2", AB[1]),
                ("vdb3", AB[2]),
                ("vdb4", AB[3]),
            ],
        );
        fake(
            t.path(),
            "vdc",
            &[
                ("vdc1", AB[0]),
                ("vdc2", AB[1]),
                ("vdc3", AB[2]),
                ("vdc4", AB[3]),
            ],
        );
        assert!(matches!(
            discover(t.path(), Path::new("/dev")),
            Err(DiscoveryError::Ambiguous { .. })
        ));
    }
}
