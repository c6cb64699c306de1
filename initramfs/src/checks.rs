//! Sanity checks on a mounted slot before it is switched into (DESIGN.md §4,
//! step 4): its init can be executed and it holds the version its slot record
//! says was written.
//!
//! Paths inside the slot are resolved as the slot will see them after the
//! switch: symlinks are followed relative to the slot's root (`/sysroot`), never
//! into the initramfs, and `..` stops at that root.

use bootctl::record::{SlotRecord, SlotState};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Why a slot is not fit to boot, or not the image its record describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// A filesystem of the new root did not mount (the slot, /persist, /var, /etc).
    Mount { what: String, error: String },
    /// The init program is missing or cannot be executed.
    Init { path: PathBuf, problem: String },
    /// The slot's os-release is missing or names no `VERSION_ID`.
    OsRelease { problem: String },
    /// The slot record does not vouch for the image (unreadable, empty, failed).
    Record { problem: String },
    /// The slot holds another version than its record says was written.
    VersionMismatch { image: String, record: String },
    /// The slot's dm-verity root could not be set up, or some block of it
    /// does not match the tree (its bytes changed after they were written).
    Verity { problem: String },
}

impl CheckFailure {
    /// True when switching into the slot cannot work at all; otherwise the image
    /// may run but is not the one the record describes.
    pub fn prevents_boot(&self) -> bool {
        matches!(self, CheckFailure::Mount { .. } | CheckFailure::Init { .. })
    }
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckFailure::Mount { what, error } => write!(f, "cannot mount {what}: {error}"),
            CheckFailure::Init { path, problem } => {
                write!(f, "init {} {problem}", path.display())
            }
            CheckFailure::OsRelease { problem } => write!(f, "os-release: {problem}"),
            CheckFailure::Record { problem } => write!(f, "slot record: {problem}"),
            CheckFailure::Verity { problem } => write!(f, "verity: {problem}"),
            CheckFailure::VersionMismatch { image, record } => write!(
                f,
                "the slot holds version {image:?} (VERSION_ID in its os-release) but its \
                 record says {record:?} was written"
            ),
        }
    }
}

/// Most symlinks followed in one resolution, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside `root` as if `root` were `/`: absolute symlink targets
/// start again at `root`, and `..` never climbs above it. The result need not
/// exist; a missing intermediate directory is an error.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = vec![];
    push_components(&mut pending, path);
    let mut resolved: Vec<OsString> = vec![];
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let here = join(root, &resolved).join(&name);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links at {}",
                        here.display()
                    )));
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => resolved.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound && pending.is_empty() => {
                resolved.push(name)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &resolved))
}

/// Pushes the components of `path` so that the first one is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_os_string()),
            Component::ParentDir => stack.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

/// Checks that `init` (absolute, as seen from inside the slot) is an
/// executable regular file in the slot mounted at `root`.
pub fn check_init(root: &Path, init: &Path) -> Result<(), CheckFailure> {
    let fail = |problem: String| CheckFailure::Init {
        path: init.to_path_buf(),
        problem,
    };
    let meta = resolve_in_root(root, init)
        .and_then(fs::metadata)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => fail("does not exist in the slot".into()),
            _ => fail(format!("cannot be resolved: {e}")),
        })?;
    let mode = meta.permissions().mode();
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    if mode & 0o111 == 0 {
        return Err(fail(format!(
            "is not executable (mode {:04o})",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// The `VERSION_ID` of an os-release file, unquoted as os-release(5) allows
/// (shell-style single or double quotes, backslash escapes inside double quotes).
pub fn version_id(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("VERSION_ID="))
        .next_back()?;
    Some(unquote(value))
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'') {
        return inner.split('\'').next().unwrap_or("").to_owned();
    }
    let Some(inner) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some(e @ ('\\' | '"' | '$' | '`')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// An os-release file is a few lines; a longer one is not read whole.
const MAX_OS_RELEASE_BYTES: u64 = 64 << 10;

/// The slot's `VERSION_ID`: `/etc/os-release`, else `/usr/lib/os-release`
/// (os-release(5)), both resolved inside `root`.
pub fn slot_version(root: &Path) -> Result<String, CheckFailure> {
    let mut errors = Vec::new();
    for candidate in ["/etc/os-release", "/usr/lib/os-release"] {
        let text = resolve_in_root(root, Path::new(candidate)).and_then(|path| {
            bootctl::small_file::read(&path, MAX_OS_RELEASE_BYTES)?
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        });
        match text {
            Ok(t) => {
                return version_id(&t).filter(|v| !v.is_empty()).ok_or_else(|| {
                    CheckFailure::OsRelease {
                        problem: format!("{candidate} has no VERSION_ID"),
                    }
                })
            }
            Err(e) => errors.push(format!("{candidate}: {e}")),
        }
    }
    Err(CheckFailure::OsRelease {
        problem: format!("no os-release in the slot ({})", errors.join("; ")),
    })
}

/// Checks that the record vouches for a written image and that the slot holds
/// the version it names. A record that is `written` (installed or upgraded but
/// not yet confirmed) is as good as `good` here.
pub fn check_version(root: &Path, record: &Result<SlotRecord, String>) -> Result<(), CheckFailure> {
    let rec = record
        .as_ref()
        .map_err(|e| CheckFailure::Record { problem: e.clone() })?;
    match rec.state {
        SlotState::Written | SlotState::Good => {}
        SlotState::Empty | SlotState::Failed => {
            return Err(CheckFailure::Record {
                problem: format!(
                    "slot {} is recorded as {}, not as holding a written image",
                    rec.slot,
                    rec.state.as_str()
                ),
            })
        }
    }
    if rec.version.is_empty() {
        return Err(CheckFailure::Record {
            problem: format!("the record of slot {} names no version", rec.slot),
        });
    }
    let image = slot_version(root)?;
    if image != rec.version {
        return Err(CheckFailure::VersionMismatch {
            image,
            record: rec.version.clone(),
        });
    }
    Ok(())
}

/// All checks of a mounted slot, init first: the first failure is reported.
pub fn check_slot(
    root: &Path,
    init: &Path,
    record: &Result<SlotRecord, String>,
) -> Result<(), CheckFailure> {
    check_init(root, init)?;
    check_version(root, record)
}

/// Whether the slot ships `os-agent`, whose health gate can confirm a trial.
pub fn agent_installed(root: &Path) -> bool {
    ["/usr/bin/os-agent", "/usr/sbin/os-agent"].iter().any(|p| {
        resolve_in_root(root, Path::new(p))
            .map(|r| r.is_file())
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use bootctl::Slot;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn record(state: SlotState, version: &str) -> Result<SlotRecord, String> {
        Ok(SlotRecord {
            state,
            version: version.into(),
            ..SlotRecord::empty(Slot::B)
        })
    }

    fn os_release(root: &Path, text: &str) {
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/os-release"), text).unwrap();
    }

    #[test]
    fn init_missing() {
        let t = TempDir::new();
        let err = check_init(t.path(), Path::new("/sbin/init")).unwrap_err();
        assert!(err.prevents_boot());
        assert_eq!(
            err.to_string(),
            "init /sbin/init does not exist in the slot"
        );
        fs::create_dir(t.path().join("sbin")).unwrap();
        let err = check_init(t.path(), Path::new("/sbin/init")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "init /sbin/init does not exist in the slot"
        );
    }

    #[test]
    fn init_not_executable_or_not_a_file() {
        let t = TempDir::new();
        exe(&t.path().join("sbin/init"), 0o644);
        let err = check_init(t.path(), Path::new("/sbin/init")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "init /sbin/init is not executable (mode 0644)"
        );
        fs::create_dir_all(t.path().join("bin/init")).unwrap();
        let err = check_init(t.path(), Path::new("/bin/init")).unwrap_err();
        assert_eq!(err.to_string(), "init /bin/init is not a regular file");
        exe(&t.path().join("sbin/init"), 0o755);
        assert_eq!(check_init(t.path(), Path::new("/sbin/init")), Ok(()));
    }

    #[test]
    fn init_symlinks_resolve_inside_the_root() {
        let t = TempDir::new();
        let root = t.path();
        exe(&root.join("bin/busybox"), 0o755);
        fs::create_dir(root.join("sbin")).unwrap();
        symlink("../bin/busybox", root.join("sbin/init")).unwrap();
        assert_eq!(check_init(root, Path::new("/sbin/init")), Ok(()));

        // Absolute targets and `..` past the top stay inside the root: the host's
        // /lib/systemd/systemd must not count, only the slot's.
        symlink("/lib/systemd/systemd", root.join("sbin/init-abs")).unwrap();
        assert!(check_init(root, Path::new("/sbin/init-abs")).is_err());
        exe(&root.join("lib/systemd/systemd"), 0o755);
        assert_eq!(check_init(root, Path::new("/sbin/init-abs")), Ok(()));
        symlink("../../../../../bin/busybox", root.join("sbin/init-up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/sbin/init-up")).unwrap(),
            root.join("bin/busybox")
        );
    }

    #[test]
    fn merged_usr_directory_links() {
        let t = TempDir::new();
        let root = t.path();
        exe(&root.join("usr/lib/systemd/systemd"), 0o755);
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        symlink("usr/sbin", root.join("sbin")).unwrap();
        symlink("/usr/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/sbin/init")).unwrap(),
            root.join("usr/lib/systemd/systemd")
        );
        assert_eq!(check_init(root, Path::new("/sbin/init")), Ok(()));
    }

    #[test]
    fn symlink_loops_are_errors() {
        let t = TempDir::new();
        fs::create_dir(t.path().join("sbin")).unwrap();
        symlink("init", t.path().join("sbin/init")).unwrap();
        let err = check_init(t.path(), Path::new("/sbin/init")).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn version_id_forms() {
        assert_eq!(version_id("ID=x\nVERSION_ID=1.2\n"), Some("1.2".into()));
        assert_eq!(
            version_id("VERSION_ID=\"1.2 beta\"\n"),
            Some("1.2 beta".into())
        );
        assert_eq!(version_id("VERSION_ID='2'"), Some("2".into()));
        assert_eq!(
            version_id("VERSION_ID=\"a\\\"b\\\\c\""),
            Some("a\"b\\c".into())
        );
        assert_eq!(version_id("# VERSION_ID=9\nNAME=x"), None);
        assert_eq!(version_id("VERSION_ID=1\nVERSION_ID=2"), Some("2".into()));
    }

    #[test]
    fn version_matches_record_even_quoted_and_via_symlink() {
        let t = TempDir::new();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(
            root.join("usr/lib/os-release"),
            "NAME=ab\nVERSION_ID=\"2.0\"\n",
        )
        .unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        assert_eq!(
            check_version(root, &record(SlotState::Written, "2.0")),
            Ok(())
        );
        assert_eq!(check_version(root, &record(SlotState::Good, "2.0")), Ok(()));
        fs::remove_file(root.join("etc/os-release")).unwrap();
        assert_eq!(
            check_version(root, &record(SlotState::Written, "2.0")),
            Ok(())
        );
    }

    #[test]
    fn version_mismatch() {
        let t = TempDir::new();
        os_release(t.path(), "VERSION_ID=1.0\n");
        let err = check_version(t.path(), &record(SlotState::Written, "2.0")).unwrap_err();
        assert_eq!(
            err,
            CheckFailure::VersionMismatch {
                image: "1.0".into(),
                record: "2.0".into()
            }
        );
        assert!(!err.prevents_boot());
    }

    #[test]
    fn os_release_missing_or_without_version() {
        let t = TempDir::new();
        let err = check_version(t.path(), &record(SlotState::Written, "2")).unwrap_err();
        assert!(matches!(err, CheckFailure::OsRelease { .. }), "{err}");
        os_release(t.path(), "NAME=ab\n");
        let err = check_version(t.path(), &record(SlotState::Written, "2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "os-release: /etc/os-release has no VERSION_ID"
        );
    }

    #[test]
    fn a_huge_os_release_is_not_read_whole() {
        let t = TempDir::new();
        os_release(t.path(), "VERSION_ID=2\n");
        // 64 GiB (sparse), which read whole would exhaust the initramfs's memory.
        fs::File::options()
            .write(true)
            .open(t.path().join("etc/os-release"))
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let err = check_version(t.path(), &record(SlotState::Written, "2")).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn record_must_vouch_for_the_image() {
        let t = TempDir::new();
        os_release(t.path(), "VERSION_ID=2\n");
        for state in [SlotState::Empty, SlotState::Failed] {
            let err = check_version(t.path(), &record(state, "2")).unwrap_err();
            assert!(matches!(err, CheckFailure::Record { .. }), "{err}");
        }
        let err = check_version(t.path(), &record(SlotState::Written, "")).unwrap_err();
        assert!(matches!(err, CheckFailure::Record { .. }), "{err}");
        let err = check_version(t.path(), &Err("corrupt".into())).unwrap_err();
        assert_eq!(err.to_string(), "slot record: corrupt");
    }

    #[test]
    fn check_slot_reports_init_first() {
        let t = TempDir::new();
        os_release(t.path(), "VERSION_ID=1\n");
        let err = check_slot(
            t.path(),
            Path::new("/sbin/init"),
            &record(SlotState::Written, "2"),
        )
        .unwrap_err();
        assert!(matches!(err, CheckFailure::Init { .. }), "{err}");
        exe(&t.path().join("sbin/init"), 0o755);
        let err = check_slot(
            t.path(),
            Path::new("/sbin/init"),
            &record(SlotState::Written, "2"),
        )
        .unwrap_err();
        assert!(matches!(err, CheckFailure::VersionMismatch { .. }), "{err}");
    }

    #[test]
    fn agent_detection() {
        let t = TempDir::new();
        assert!(!agent_installed(t.path()));
        exe(&t.path().join("usr/sbin/os-agent"), 0o755);
        assert!(agent_installed(t.path()));
        let t = TempDir::new();
        exe(&t.path().join("usr/bin/os-agent"), 0o755);
        assert!(agent_installed(t.path()));
    }
}
