//! Step 1 of a configure transaction: check the whole request and compute
//! every change in memory, reading (never writing) the targets.

use super::model::{normalize, Model};
use super::paths::{check_below, file_id, FileId};
use super::request::{ConfigureRequest, Entry, Operation, Sysconfig};
use super::{cmdline, key_path, lines, toml, yaml, ConfigureError, Node};
use bootctl::grubcfg::args_path;
use log::warn;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What a change writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A config file under `config-root`, replaced atomically.
    File,
    /// A `/proc/sys` value, written in place.
    Sysctl,
    /// A slot's extra-arguments file on the ESP, replaced atomically.
    GrubArgs,
}

/// One target's snapshot and new content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub model: Model,
    pub target: Target,
    pub path: PathBuf,
    /// The bytes before (`None`: the file did not exist).
    pub before: Option<Vec<u8>>,
    pub after: Vec<u8>,
    /// The request's keys that touch this target.
    pub keys: Vec<String>,
    /// The directory the path must stay under, through no symlink.
    pub base: PathBuf,
    /// The file the plan read (`None`: it did not exist); apply replaces
    /// only that very file.
    pub id: Option<FileId>,
}

/// The changes a request makes, in request order; targets it leaves as they
/// are do not appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Parts of the request that have nothing to do (KubeOS logs them as
    /// warnings and carries on): reported in the result.
    pub warnings: Vec<String>,
}

/// A target being edited: its text as the request's entries so far left it.
struct Work {
    change: Change,
    text: String,
    /// The text as read (for grub args: the arguments, not the block bytes).
    original: String,
}

/// Checks `req` and computes its changes, touching nothing.
pub fn plan(node: &Node<'_>, req: &ConfigureRequest) -> Result<Plan, ConfigureError> {
    let mut work: Vec<Work> = vec![];
    let mut warnings = vec![];
    for sc in &req.configs {
        let model = Model::parse(&sc.model).ok_or_else(|| ConfigureError::UnknownModel {
            model: sc.model.clone(),
        })?;
        match model {
            Model::Sysctl => plan_sysctl(node, sc, &mut work, &mut warnings)?,
            _ => {
                let (target, base, path) = target_of(node, model, sc)?;
                let at = match work.iter().position(|w| w.change.path == path) {
                    Some(at) => at,
                    None => {
                        work.push(read_target(model, target, base, path)?);
                        work.len() - 1
                    }
                };
                for entry in &sc.contents {
                    edit(model, &mut work[at], entry, &node.settings.cmdline_allow)?;
                }
            }
        }
    }
    let changes = work
        .into_iter()
        .filter_map(finish)
        .collect::<Result<_, _>>()?;
    Ok(Plan { changes, warnings })
}

/// The file a non-sysctl model edits, checked against the allow-list.
fn target_of(
    node: &Node<'_>,
    model: Model,
    sc: &Sysconfig,
) -> Result<(Target, PathBuf, PathBuf), ConfigureError> {
    let slot = match model {
        Model::GrubCurrent => Some(node.booted),
        Model::GrubNext => Some(node.booted.other()),
        _ => None,
    };
    if let Some(slot) = slot {
        if !sc.config_path.is_empty() {
            warn!(
                "{model}: config_path {:?} ignored; slot {slot}'s file is fixed",
                sc.config_path
            );
        }
        return Ok((
            Target::GrubArgs,
            node.esp.to_path_buf(),
            node.esp.join(args_path(slot)),
        ));
    }
    let named = match sc.config_path.trim() {
        "" => model.default_path().unwrap_or_default(),
        p => p,
    };
    let allow = &node.settings.allow;
    let refused = || ConfigureError::PathNotAllowed {
        model,
        path: named.to_owned(),
        allowed: allow.patterns(model),
    };
    let path = normalize(named).ok_or_else(refused)?;
    if !allow.allows(model, &path) {
        return Err(refused());
    }
    Ok((
        Target::File,
        node.settings.root.clone(),
        node.settings.root.join(path.trim_start_matches('/')),
    ))
}

/// Largest file a configuration edits (it is read whole, edited and written back): far
/// above any sysctl, kubelet or GRUB argument file; a larger one is refused, not read.
pub const MAX_EDITED_FILE: u64 = 1 << 20;

fn read_target(
    model: Model,
    target: Target,
    base: PathBuf,
    path: PathBuf,
) -> Result<Work, ConfigureError> {
    let read_err = |source| ConfigureError::Read {
        model,
        path: path.clone(),
        source,
    };
    check_below(&base, &path).map_err(|e| read_err(io::Error::other(e)))?;
    let id = file_id(&path).map_err(read_err)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if !m.is_file() => {
            let kind = if m.is_symlink() {
                "a symlink"
            } else {
                "not a regular file"
            };
            return Err(read_err(io::Error::other(format!(
                "is {kind}; name the real file"
            ))));
        }
        _ => {}
    }
    let before = bootctl::small_file::read_bytes(&path, MAX_EDITED_FILE).map_err(read_err)?;
    let bytes = before.as_deref().unwrap_or_default();
    let original = match target {
        Target::GrubArgs if before.is_none() => Ok(String::new()),
        Target::GrubArgs => cmdline::decode(bytes),
        _ => String::from_utf8(bytes.to_vec()).map_err(|_| "is not UTF-8 text".to_owned()),
    }
    .map_err(|reason| ConfigureError::Edit {
        model,
        key: String::new(),
        path: path.clone(),
        reason,
    })?;
    Ok(Work {
        change: Change {
            model,
            target,
            path,
            before,
            after: vec![],
            keys: vec![],
            base,
            id,
        },
        text: original.clone(),
        original,
    })
}

/// Applies one entry to a target's text in memory.
fn edit(
    model: Model,
    w: &mut Work,
    e: &Entry,
    cmdline_allow: &[String],
) -> Result<(), ConfigureError> {
    let bad = |reason: String| ConfigureError::BadKey {
        model,
        key: e.key.clone(),
        reason,
    };
    let text = e.text();
    let scalar = || {
        let t = text
            .clone()
            .ok_or_else(|| bad("the value must be a string, number, boolean or null".into()))?;
        lines::check_line_value(&t).map_err(bad)?;
        Ok::<_, ConfigureError>(t.trim().to_owned())
    };
    let edited = match model {
        Model::SysctlPersist => {
            let value = scalar()?;
            lines::check_sysctl_key(&e.key).map_err(bad)?;
            if e.operation == Operation::Set && value.is_empty() {
                return Err(bad(
                    "an empty value cannot be set; use operation delete".into()
                ));
            }
            Ok(lines::edit_sysctl(&w.text, &e.key, e.operation, &value))
        }
        Model::PamLimits => {
            let limit = lines::Limit::parse(&e.key, &scalar()?, e.operation).map_err(bad)?;
            lines::edit_limits(&w.text, &limit, e.operation)
        }
        Model::GrubCurrent | Model::GrubNext => {
            let value = scalar()?;
            cmdline::check(&e.key, &value, cmdline_allow).map_err(bad)?;
            Ok(cmdline::edit(&w.text, &e.key, e.operation, &value))
        }
        Model::Kubelet | Model::Containerd => {
            let path = key_path(&e.key).map_err(bad)?;
            match model {
                Model::Kubelet => yaml::edit(&w.text, &path, e.operation, &e.value),
                _ => toml::edit(&w.text, &path, e.operation, &e.value),
            }
        }
        Model::Sysctl => unreachable!("kernel.sysctl has one target per key"),
    };
    w.text = edited.map_err(|reason| ConfigureError::Edit {
        model,
        key: e.key.clone(),
        path: w.change.path.clone(),
        reason,
    })?;
    w.change.keys.push(e.key.clone());
    Ok(())
}

/// The change a finished target makes, if any.
fn finish(w: Work) -> Option<Result<Change, ConfigureError>> {
    let mut change = w.change;
    match change.target {
        Target::File if w.text.as_bytes() == change.before.as_deref().unwrap_or_default() => None,
        Target::File => {
            change.after = w.text.into_bytes();
            Some(Ok(change))
        }
        Target::GrubArgs if w.text == w.original => None,
        Target::GrubArgs => Some(match cmdline::encode(&w.text) {
            Ok(block) => {
                change.after = block;
                Ok(change)
            }
            Err(reason) => Err(ConfigureError::Edit {
                model: change.model,
                key: change.keys.join(", "),
                path: change.path,
                reason,
            }),
        }),
        // Computed whole by plan_sysctl, and only when the value differs.
        Target::Sysctl => Some(Ok(change)),
    }
}

/// `kernel.sysctl`: one `/proc/sys` file per key, set only (a runtime value
/// cannot be deleted; KubeOS logged and skipped such a delete).
fn plan_sysctl(
    node: &Node<'_>,
    sc: &Sysconfig,
    work: &mut Vec<Work>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigureError> {
    let model = Model::Sysctl;
    if !sc.config_path.is_empty() {
        warn!(
            "{model}: config_path {:?} ignored; values go to /proc/sys",
            sc.config_path
        );
    }
    for e in &sc.contents {
        let bad = |reason: &str| ConfigureError::BadKey {
            model,
            key: e.key.clone(),
            reason: reason.to_owned(),
        };
        lines::check_sysctl_key(&e.key).map_err(|r| bad(&r))?;
        if e.operation == Operation::Delete {
            // KubeOS warns and carries on; refusing would make a proxy retry
            // a KubeOS custom resource for ever.
            let w = format!(
                "{model} {:?}: a runtime sysctl cannot be deleted, nothing was done (delete it \
                 from kernel.sysctl.persist so that the next boot does not set it)",
                e.key
            );
            warn!("{w}");
            warnings.push(w);
            continue;
        }
        if e.key.contains('*') {
            return Err(bad("a runtime sysctl is one name, not a pattern"));
        }
        let value = e
            .text()
            .ok_or_else(|| bad("the value must be a string, number or boolean"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("the value must be one non-empty line"));
        }
        lines::check_line_value(value).map_err(|r| bad(&r))?;
        let base = node.settings.proc_dir.join("sys");
        let path = sysctl_path(&base, &e.key).map_err(|r| bad(&r))?;
        check_below(&base, &path).map_err(|r| bad(&r))?;
        let id = file_id(&path).map_err(|source| ConfigureError::Read {
            model,
            path: path.clone(),
            source,
        })?;
        let current = read_sysctl(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => bad(&format!(
                "no such sysctl ({} does not exist)",
                path.display()
            )),
            _ => ConfigureError::Read {
                model,
                path: path.clone(),
                source,
            },
        })?;
        let current_text = String::from_utf8_lossy(&current).into_owned();
        work.retain(|w| w.change.path != path);
        if current_text.split_whitespace().eq(value.split_whitespace()) {
            continue;
        }
        work.push(Work {
            change: Change {
                model,
                target: Target::Sysctl,
                path,
                before: Some(current),
                after: format!("{value}\n").into_bytes(),
                keys: vec![e.key.clone()],
                base,
                id,
            },
            text: String::new(),
            original: String::new(),
        });
    }
    Ok(())
}

/// `net.ipv4.ip_forward` → `PROC/sys/net/ipv4/ip_forward`; a `/` in a key
/// stands for a `.` inside one name (`net.ipv4.conf.eth0/1.rp_filter`), as
/// sysctl(8) reads it. Each name is checked after that mapping: `net.//.//`
/// would otherwise be `net/../..` and climb out of the sysctl root.
fn sysctl_path(sys: &Path, key: &str) -> Result<PathBuf, String> {
    let mut p = sys.to_path_buf();
    for part in key.split('.') {
        let name = part.replace('/', ".");
        if name.is_empty() || name == "." || name == ".." {
            return Err(format!(
                "has an empty, `.` or `..` name ({part:?}) once `/` is read as `.`"
            ));
        }
        p.push(name);
    }
    Ok(p)
}

/// A sysctl's current value; reads at most 4 KiB (every sysctl is smaller).
fn read_sysctl(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = vec![];
    fs::File::open(path)?.take(4096).read_to_end(&mut buf)?;
    Ok(buf)
}
