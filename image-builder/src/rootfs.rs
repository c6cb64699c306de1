//! The staging copy of the root filesystem that becomes the ext4 root image:
//! copied from a directory (`cp -a`) or unpacked from a tarball (GNU tar),
//! then checked and completed (kernel, mount points) in place.
//!
//! Paths inside the rootfs are resolved against the staging root, never the
//! build host's: `/etc/os-release` is usually a symlink to
//! `../usr/lib/os-release`, and an absolute link must not escape to the host.

use crate::tools;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Mount points `os-init` and the booted system need in the read-only root
/// (they cannot be created later): PERSIST, /var and the /etc overlay, the
/// kernel filesystems.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("persist", 0o755),
    ("var", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
];
/// A bzImage's version string lies within its first 64 KiB (real-mode setup).
const KERNEL_HEADER: usize = 64 << 10;
/// ext4 block size of the root image, for the size estimate.
const BLOCK: u64 = 4096;
/// Symlink targets up to this length live in the inode, longer ones take a block.
const FAST_SYMLINK_MAX: u64 = 59;

/// Copies or unpacks `source` into the existing, empty directory `staging`.
/// `as_root`: owners and extended attributes can be kept.
pub fn stage(source: &Path, staging: &Path, as_root: bool) -> Result<()> {
    let meta = fs::metadata(source).with_context(|| format!("rootfs {}", source.display()))?;
    if meta.is_dir() {
        if let Err(e) = copy_tree(source, staging, true) {
            log::info!("cannot hard-link the rootfs into staging (another filesystem, or others' files); copying it");
            log::debug!("{e:#}");
            fs::remove_dir_all(staging)
                .and_then(|()| fs::create_dir(staging))
                .with_context(|| format!("empty {}", staging.display()))?;
            copy_tree(source, staging, false)?;
        }
    } else if meta.is_file() {
        extract(source, staging, as_root)?;
    } else {
        bail!(
            "rootfs {} is neither a directory nor a tar archive",
            source.display()
        );
    }
    Ok(())
}

/// `cp -a`, or `cp -al`: hard links instead of copies, which is instant and
/// safe because nothing in staging is written in place (a file the build adds
/// or replaces is unlinked first). Links fail across filesystems and, for
/// others' files, under fs.protected_hardlinks; the caller then copies.
fn copy_tree(source: &Path, staging: &Path, link: bool) -> Result<()> {
    let mut cp = tools::command("cp")?;
    cp.arg(if link { "-al" } else { "-a" })
        .arg("--")
        .arg(source.join("."))
        .arg(staging);
    tools::run(&mut cp).with_context(|| format!("copy rootfs {}", source.display()))?;
    Ok(())
}

fn extract(tarball: &Path, staging: &Path, as_root: bool) -> Result<()> {
    let name = tarball.to_string_lossy();
    // GNU tar detects the compression itself but runs zstd for it.
    if (name.ends_with(".zst") || name.ends_with(".tzst")) && tools::find("zstd").is_err() {
        bail!("`zstd` not found: install the Debian package zstd to unpack {name}");
    }
    let mut tar = tools::command("tar")?;
    tar.arg("-x")
        .arg("-f")
        .arg(tarball)
        .arg("-C")
        .arg(staging)
        .args(["--numeric-owner", "--same-permissions"]);
    if as_root {
        tar.args(["--same-owner", "--xattrs", "--xattrs-include=*"]);
    }
    tools::run(&mut tar).with_context(|| format!("unpack rootfs {name}"))?;
    Ok(())
}

/// `rel` (e.g. `etc/os-release`) inside `root`, with symlinks followed as
/// they would be after a chroot into `root`.
pub fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut todo: Vec<OsString> = components(rel);
    todo.reverse();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    bail!(
                        "too many symlinks resolving /{} in {}",
                        rel.display(),
                        root.display()
                    );
                }
                let target = fs::read_link(&full)
                    .with_context(|| format!("read link {}", full.display()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                todo.extend(components(&target).into_iter().rev());
            }
            _ => cur = next,
        }
    }
    Ok(root.join(cur))
}

/// Normal and `..` components; `/` and `.` mean nothing inside the root.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// The value of `key` in os-release text, without its quotes.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k != key {
            return None;
        }
        let v = v.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(v);
        Some(unquoted.to_string())
    })
}

/// The text of the rootfs's `/etc/os-release`.
pub fn os_release(root: &Path) -> Result<String> {
    let path = resolve_in_root(root, Path::new("etc/os-release"))?;
    // A regular file, bounded: a FIFO there (tar and cp make them rootless)
    // blocked the build.
    bootctl::small_file::read(&path, 1 << 20)
        .with_context(|| format!("read {}", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("{} does not exist", path.display()))
}

/// The rootfs must say it is `version`: the agent and `os-init` compare the
/// booted os-release with the slot record.
pub fn check_version(root: &Path, version: &str) -> Result<()> {
    let text = os_release(root)
        .with_context(|| format!("the rootfs needs /etc/os-release with VERSION_ID={version}"))?;
    match os_release_value(&text, "VERSION_ID") {
        Some(v) if v == version => Ok(()),
        Some(v) => {
            bail!("/etc/os-release of the rootfs says VERSION_ID={v}, but --version is {version}")
        }
        None => bail!("/etc/os-release of the rootfs has no VERSION_ID (--version is {version})"),
    }
}

/// The kernel to boot: `/boot/vmlinuz`, else the only `/boot/vmlinuz-*`.
pub fn find_kernel(root: &Path) -> Result<PathBuf> {
    let plain = resolve_in_root(root, Path::new("boot/vmlinuz"))?;
    if plain.is_file() {
        return Ok(plain);
    }
    let boot = root.join("boot");
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(&boot) {
        for entry in entries {
            let name = entry
                .with_context(|| format!("list {}", boot.display()))?
                .file_name();
            if name.to_string_lossy().starts_with("vmlinuz-") {
                let path = resolve_in_root(root, &Path::new("boot").join(&name))?;
                if path.is_file() {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no kernel in the rootfs: looked for /boot/vmlinuz and /boot/vmlinuz-*"),
        _ => bail!(
            "several kernels in the rootfs ({}) and no /boot/vmlinuz: link the one to boot as /boot/vmlinuz",
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The release a bzImage kernel reports (`6.1.0-56-amd64`): the setup header
/// ("HdrS" at 0x202) points at its version string (x86 boot protocol,
/// `kernel_version` at 0x20e). `None` for anything else.
pub fn kernel_release(header: &[u8]) -> Option<String> {
    if header.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let at = usize::from(u16::from_le_bytes([
        *header.get(0x20e)?,
        *header.get(0x20f)?,
    ])) + 0x200;
    let version = header.get(at..)?;
    let end = version.iter().position(|&b| b == b' ' || b == 0)?;
    String::from_utf8(version[..end].to_vec())
        .ok()
        .filter(|r| !r.is_empty())
}

/// The kernel must be the one the modules were built for, or none will load.
pub fn check_kernel_release(kernel: &Path, release: &str) -> Result<()> {
    let mut header = Vec::with_capacity(KERNEL_HEADER);
    fs::File::open(kernel)
        .and_then(|f| f.take(KERNEL_HEADER as u64).read_to_end(&mut header))
        .with_context(|| format!("read {}", kernel.display()))?;
    match kernel_release(&header) {
        Some(r) if r != release => bail!(
            "the kernel {} is release {r}, but the rootfs's modules are for {release}",
            kernel.display()
        ),
        Some(_) => Ok(()),
        None => {
            log::warn!(
                "{} is not a bzImage; cannot check it against modules {release}",
                kernel.display()
            );
            Ok(())
        }
    }
}

/// Makes `/boot/vmlinuz` a regular file (GRUB loads that path): a hard link to
/// `kernel` when it is another name, replacing a symlink.
pub fn place_kernel(root: &Path, kernel: &Path) -> Result<()> {
    let boot = root.join("boot");
    if fs::symlink_metadata(&boot).is_ok_and(|m| !m.is_dir()) {
        bail!("/boot in the rootfs is not a directory; the image needs a real /boot");
    }
    let target = boot.join("vmlinuz");
    if target == kernel {
        return Ok(());
    }
    if fs::symlink_metadata(&target).is_ok() {
        fs::remove_file(&target).with_context(|| format!("remove {}", target.display()))?;
    }
    fs::hard_link(kernel, &target)
        .or_else(|_| fs::copy(kernel, &target).map(drop))
        .with_context(|| format!("place {} as {}", kernel.display(), target.display()))
}

/// The one `lib/modules/<release>` (or `usr/lib/modules/<release>`) directory.
pub fn find_modules(root: &Path) -> Result<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut seen = HashSet::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        let dir = resolve_in_root(root, Path::new(base))?;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let meta = entry.metadata()?;
            // Merged /usr: lib/modules and usr/lib/modules are the same directory.
            if meta.is_dir() && seen.insert((meta.dev(), meta.ino())) {
                found.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.path(),
                ));
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no kernel modules in the rootfs: looked for /lib/modules/<release>/ and /usr/lib/modules/<release>/"),
        _ => bail!(
            "several kernel releases in the rootfs's modules directories ({}): keep only the one of the kernel",
            found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Creates the mount points that are missing.
pub fn add_mount_points(root: &Path) -> Result<()> {
    for (name, mode) in MOUNT_POINTS {
        let dir = root.join(name);
        if fs::symlink_metadata(&dir).is_err() {
            fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    Ok(())
}

/// What the staging tree holds, for sizing the image and dating its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Files, directories, links... (hard links counted once), the root included.
    pub inodes: u64,
    /// Bytes of data blocks the content needs on ext4.
    pub bytes: u64,
    /// Newest mtime below the root, whole seconds.
    pub newest_mtime: i64,
}

pub fn tree_stats(root: &Path) -> Result<TreeStats> {
    let mut stats = TreeStats {
        inodes: 1,
        bytes: BLOCK,
        newest_mtime: 0,
    };
    let mut linked = HashSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            stats.newest_mtime = stats.newest_mtime.max(meta.mtime());
            if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            stats.inodes += 1;
            stats.bytes += data_blocks(&meta) * BLOCK;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(stats)
}

fn data_blocks(meta: &fs::Metadata) -> u64 {
    let kind = meta.file_type();
    if kind.is_dir() {
        meta.len().div_ceil(BLOCK).max(1)
    } else if kind.is_file() {
        meta.len().div_ceil(BLOCK)
    } else if kind.is_symlink() && meta.len() > FAST_SYMLINK_MAX {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn os_release_values() {
        let text = "NAME=\"Demo OS\"\nVERSION_ID='2.1'\n# VERSION_ID=no\nID=demo\n";
        assert_eq!(os_release_value(text, "VERSION_ID").as_deref(), Some("2.1"));
        assert_eq!(os_release_value(text, "NAME").as_deref(), Some("Demo OS"));
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("demo"));
        assert_eq!(
            os_release_value("VERSION_ID=3", "VERSION_ID").as_deref(),
            Some("3")
        );
        assert_eq!(os_release_value(text, "VERSION"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("usr/lib/os-release"), "VERSION_ID=7\n").unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        let resolved = resolve_in_root(root, Path::new("etc/os-release")).unwrap();
        assert_eq!(resolved, root.join("usr/lib/os-release"));
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/os-release")).unwrap(),
            resolved
        );
        check_version(root, "7").unwrap();
        let err = check_version(root, "8").unwrap_err().to_string();
        assert!(
            err.contains("VERSION_ID=7") && err.contains("--version is 8"),
            "{err}"
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("loop")).is_err());
    }

    #[test]
    fn kernel_choice() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = find_kernel(root).unwrap_err().to_string();
        assert!(err.contains("/boot/vmlinuz-*"), "{err}");
        fs::create_dir(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinuz-6.1.0-1-amd64"), "k1").unwrap();
        let one = find_kernel(root).unwrap();
        fs::write(root.join("boot/vmlinuz-6.1.0-2-amd64"), "k2").unwrap();
        assert!(find_kernel(root)
            .unwrap_err()
            .to_string()
            .contains("several kernels"));
        place_kernel(root, &one).unwrap();
        assert_eq!(find_kernel(root).unwrap(), root.join("boot/vmlinuz"));
        assert_eq!(fs::read(root.join("boot/vmlinuz")).unwrap(), b"k1");
    }

    #[test]
    fn bzimage_release() {
        let mut header = vec![0u8; 0x300];
        header[0x202..0x206].copy_from_slice(b"HdrS");
        header[0x20e..0x210].copy_from_slice(&0x80u16.to_le_bytes());
        header[0x280..0x29b].copy_from_slice(b"6.1.0-56-amd64 (debian) #1\0");
        assert_eq!(kernel_release(&header).as_deref(), Some("6.1.0-56-amd64"));
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        fs::write(&kernel, &header).unwrap();
        check_kernel_release(&kernel, "6.1.0-56-amd64").unwrap();
        let err = check_kernel_release(&kernel, "6.1.0-55-amd64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("release 6.1.0-56-amd64") && err.contains("for 6.1.0-55-amd64"),
            "{err}"
        );
        header[0x202] = 0;
        assert_eq!(kernel_release(&header), None);
        assert_eq!(kernel_release(&[]), None);
    }

    #[test]
    fn modules_directory_with_merged_usr() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(find_modules(root)
            .unwrap_err()
            .to_string()
            .contains("/lib/modules/<release>/"));
        fs::create_dir_all(root.join("usr/lib/modules/6.1.0-9-amd64")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        let (release, path) = find_modules(root).unwrap();
        assert_eq!(release, "6.1.0-9-amd64");
        assert!(path.is_dir());
    }

    #[test]
    fn stats_count_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
        symlink("x".repeat(100), root.join("long")).unwrap();
        symlink("short", root.join("short")).unwrap();
        let s = tree_stats(root).unwrap();
        // root, d, f (once), long, short
        assert_eq!(s.inodes, 5);
        // root dir + d + 2 blocks of f + 1 for the long link
        assert_eq!(s.bytes, 5 * BLOCK);
        assert!(s.newest_mtime > 0);
        add_mount_points(root).unwrap();
        let tmp = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    }
}
