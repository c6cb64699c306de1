//! Running the external tools the builder relies on, with errors that say what
//! to install and show what the tool printed.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Debian package that ships `tool`, for the "install it" hint.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.ext4" | "e2fsck" | "debugfs" | "mke2fs" => "e2fsprogs",
        "mcopy" | "mmd" | "mformat" | "mdir" | "mshowfat" => "mtools",
        "mkfs.vfat" | "fsck.fat" => "dosfstools",
        "sgdisk" => "gdisk",
        "grub-mkimage" => "grub-common (with grub-efi-amd64-bin for the x86_64-efi modules)",
        "qemu-img" => "qemu-utils",
        "busybox" => "busybox-static",
        "dpkg-deb" => "dpkg",
        "mmdebstrap" => "mmdebstrap",
        _ => "the package that provides it",
    }
}

/// Finds `tool` in PATH (plus /sbin and /usr/sbin, where e2fsprogs lives).
pub fn find(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{tool}` not found: install the Debian package {}",
        package_of(tool)
    )
}

/// A command for `tool`, located with [`find`].
pub fn command(tool: &str) -> Result<Command> {
    Ok(Command::new(find(tool)?))
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Sets the modification time of `root` and everything below it (no
/// symlinks followed) to `time`, seconds since the epoch: tools that copy a
/// tree into an image keep these times.
pub fn set_tree_mtime(root: &Path, time: u64) -> Result<()> {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(time);
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("read {}", path.display()))?
            {
                stack.push(entry?.path());
            }
        }
        if meta.is_dir() || meta.is_file() {
            let file =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            file.set_times(
                std::fs::FileTimes::new()
                    .set_modified(when)
                    .set_accessed(when),
            )
            .with_context(|| format!("set the times of {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let err = find("no-such-tool-here").unwrap_err().to_string();
        assert!(err.contains("`no-such-tool-here` not found"), "{err}");
        assert_eq!(package_of("sgdisk"), "gdisk");
        assert_eq!(package_of("mcopy"), "mtools");
        assert!(find("mkfs.ext4").is_ok(), "e2fsprogs is a test dependency");
    }

    #[test]
    fn a_failing_tool_reports_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boom") && err.contains("exit status: 3"),
            "{err}"
        );
    }
}
