//! Node configuration: KubeOS's `configure` (its config models, its
//! `ConfigureRequest`), done as one transaction.
//!
//! 1. [`plan`]: the whole request is checked and every edit computed in
//!    memory from the files as they are: an unknown model, a bad key or
//!    value, a file outside the model's allow-list, a file that cannot be
//!    parsed: refused before anything is touched. The bytes of everything
//!    that will change are kept (the snapshot).
//! 2. [`apply`]: each changed file is replaced atomically (temp file, fsync,
//!    rename, fsync the directory), each changed sysctl written; then the
//!    services whose config changed restart. A failure at any step restores
//!    the snapshot (and restarts those services again, on the old config)
//!    and names the model, key and path that failed.
//!
//! Applying the same request again computes no change: nothing is written
//! and nothing restarts.
//!
//! Paths are `config-root`-relative (so tests run on temp dirs); the ESP for
//! the `grub.cmdline.*` files and `/proc` are their own settings.

mod apply;
mod cmdline;
mod lines;
mod model;
pub(crate) mod paths;
mod plan;
mod request;
mod toml;
mod yaml;

pub use apply::{apply, Outcome};
pub use cmdline::check_allow as check_cmdline_allow;
pub use model::{AllowList, Model};
pub use plan::{plan, Change, Plan, Target};
pub use request::{ConfigureRequest, Entry, Operation, Sysconfig};

use bootctl::Slot;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node's configure settings (agent config keys `config-root`,
/// `proc-dir`, `config-allow`, `config-restart`, `config-restart-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Prefix of every model's file path (`/` on a node).
    pub root: PathBuf,
    /// Where `kernel.sysctl` finds `sys/...` (`/proc` on a node).
    pub proc_dir: PathBuf,
    pub allow: AllowList,
    /// Command restarting a unit, the unit's name appended.
    pub restart: Vec<String>,
    pub restart_timeout: Duration,
    /// Kernel-argument names (`NAME`, or `PREFIX*`) that `grub.cmdline.*`
    /// may set although they are denied by default (`cmdline-allow`).
    pub cmdline_allow: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            root: "/".into(),
            proc_dir: "/proc".into(),
            allow: AllowList::default(),
            restart: vec!["systemctl".into(), "restart".into()],
            restart_timeout: Duration::from_secs(120),
            cmdline_allow: Vec::new(),
        }
    }
}

/// Where a request lands on this node.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub settings: &'a Settings,
    /// Mounted ESP (the `grub.cmdline.*` files).
    pub esp: &'a Path,
    pub booted: Slot,
}

/// Why a request was refused or failed. Refusals (the first five) come
/// before anything is touched; the last two after a restore.
#[derive(Debug)]
pub enum ConfigureError {
    UnknownModel {
        model: String,
    },
    BadKey {
        model: Model,
        key: String,
        reason: String,
    },
    PathNotAllowed {
        model: Model,
        path: String,
        allowed: Vec<String>,
    },
    Read {
        model: Model,
        path: PathBuf,
        source: io::Error,
    },
    /// The file as it is cannot take the edit (does not parse, the key
    /// crosses a value that is not a mapping, ...).
    Edit {
        model: Model,
        key: String,
        path: PathBuf,
        reason: String,
    },
    /// Writing failed; everything written before was restored.
    Write {
        model: Model,
        keys: Vec<String>,
        path: PathBuf,
        source: io::Error,
        restore: Restored,
    },
    /// A service did not restart; the files were restored and the services
    /// restarted again.
    Restart {
        model: Model,
        unit: String,
        reason: String,
        restore: Restored,
    },
}

impl ConfigureError {
    /// Refused (nothing was changed) or failed (changes were rolled back).
    pub fn reason(&self) -> wire::rpc::Reason {
        use wire::rpc::Reason;
        match self {
            ConfigureError::UnknownModel { .. }
            | ConfigureError::BadKey { .. }
            | ConfigureError::PathNotAllowed { .. } => Reason::ConfigureRefused,
            ConfigureError::Read { .. }
            | ConfigureError::Edit { .. }
            | ConfigureError::Write { .. }
            | ConfigureError::Restart { .. } => Reason::ConfigureFailed,
        }
    }
}

/// How the restore after a failure went: what could not be put back.
#[derive(Debug, Default)]
pub struct Restored {
    pub failures: Vec<String>,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            f.write_str("every change was rolled back")
        } else {
            write!(f, "ROLLBACK INCOMPLETE: {}", self.failures.join("; "))
        }
    }
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfigureError::*;
        match self {
            UnknownModel { model } => {
                let known: Vec<_> = Model::ALL.iter().map(|m| m.name()).collect();
                write!(
                    f,
                    "unknown model {model:?} (known: {}); nothing was changed",
                    known.join(", ")
                )
            }
            BadKey { model, key, reason } => {
                write!(f, "{model} key {key:?}: {reason}; nothing was changed")
            }
            PathNotAllowed {
                model,
                path,
                allowed,
            } => write!(
                f,
                "{model}: {path:?} is not allowed on this node (allowed: {}; set config-allow \
                 in the agent config to change); nothing was changed",
                allowed.join(", ")
            ),
            Read {
                model,
                path,
                source,
            } => {
                write!(
                    f,
                    "{model}: read {}: {source}; nothing was changed",
                    path.display()
                )
            }
            Edit {
                model,
                key,
                path,
                reason,
            } => write!(
                f,
                "{model} key {key:?} in {}: {reason}; nothing was changed",
                path.display()
            ),
            Write {
                model,
                keys,
                path,
                source,
                restore,
            } => write!(
                f,
                "{model} key {:?}: write {}: {source}; {restore}",
                keys.join(", "),
                path.display()
            ),
            Restart {
                model,
                unit,
                reason,
                restore,
            } => write!(
                f,
                "{model}: restarting {unit} failed: {reason}; {restore} and the services \
                 restarted on the old configuration"
            ),
        }
    }
}

impl std::error::Error for ConfigureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigureError::Read { source, .. } | ConfigureError::Write { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Checks, computes and applies `req` on `node`.
pub fn configure(node: &Node<'_>, req: &ConfigureRequest) -> Result<Outcome, ConfigureError> {
    let plan = plan(node, req)?;
    apply(node.settings, &plan)
}

/// Splits a dotted key path; a segment in `"` or `'` may hold dots
/// (`plugins."io.containerd.grpc.v1.cri".sandbox_image`), as in KubeOS.
pub fn key_path(key: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut rest = key;
    loop {
        let (segment, after) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = rest[1..]
                    .find(q)
                    .ok_or_else(|| format!("unbalanced {q} in key path"))?;
                (&rest[1..1 + end], &rest[end + 2..])
            }
            _ => rest.split_at(rest.find('.').unwrap_or(rest.len())),
        };
        if segment.is_empty() {
            return Err("empty segment in key path".into());
        }
        out.push(segment.to_owned());
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(out),
            None => return Err("a quoted segment must be followed by `.` or the end".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let p = key_path(r#"plugins."io.containerd.grpc.v1.cri".sandbox_image"#).unwrap();
        assert_eq!(p, ["plugins", "io.containerd.grpc.v1.cri", "sandbox_image"]);
        assert_eq!(key_path("a").unwrap(), ["a"]);
        assert_eq!(key_path("'x.y'").unwrap(), ["x.y"]);
        assert!(key_path("").is_err());
        assert!(key_path("a..b").is_err());
        assert!(key_path("a.").is_err());
        assert!(key_path("\"a").is_err());
        assert!(key_path("\"a\"b").is_err());
    }
}
