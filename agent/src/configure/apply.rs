//! Step 2 of a configure transaction: write the plan, restart what the
//! changed models name, and on any failure put the snapshot back.
//!
//! Files are replaced, never rewritten in place: `.NAME.os-agent.tmp` beside
//! the file with the old file's mode and owner, written, fsynced, renamed
//! over, and the directory fsynced. A power cut leaves the old file or the
//! new one (plus at most a temp file the next write replaces), never half of
//! either. On the ESP (FAT) the same sequence is what the kernel offers; GRUB
//! reads either the old block or the new one.
//!
//! A service restart that fails after a successful write restores every
//! file and restarts the services again, so the service runs on the
//! configuration it had; the error says both.

use super::paths::{check_below, file_id};
use super::plan::{Change, Plan, Target};
use super::{ConfigureError, Model, Restored, Settings};
use bootctl::durable;
use log::{error, info, warn};
use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a request changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Paths written (files, sysctls, args files), in order.
    pub changed: Vec<String>,
    /// Units restarted.
    pub restarted: Vec<String>,
    /// What had nothing to do ([`Plan::warnings`]).
    pub warnings: Vec<String>,
}

/// Writes `plan`, then restarts the units of the models whose files changed.
pub fn apply(settings: &Settings, plan: &Plan) -> Result<Outcome, ConfigureError> {
    let changes = &plan.changes;
    if changes.is_empty() {
        info!("configure: nothing to change");
        return Ok(Outcome {
            warnings: plan.warnings.clone(),
            ..Outcome::default()
        });
    }
    for (i, c) in changes.iter().enumerate() {
        info!(
            "configure: {} writes {} ({})",
            c.model,
            c.path.display(),
            c.keys.join(", ")
        );
        if let Err(source) = recheck(c).and_then(|()| write(c, &c.after)) {
            error!(
                "configure: {} write {}: {source}",
                c.model,
                c.path.display()
            );
            // The failed write itself changed nothing: a replace leaves the
            // old file, a sysctl write is taken or refused whole.
            let restore = restore(&changes[..i]);
            return Err(ConfigureError::Write {
                model: c.model,
                keys: c.keys.clone(),
                path: c.path.clone(),
                source,
                restore,
            });
        }
    }
    let units: BTreeSet<(&'static str, Model)> = changes
        .iter()
        .filter_map(|c| c.model.unit().map(|u| (u, c.model)))
        .collect();
    let mut restarted = vec![];
    for &(unit, model) in &units {
        if let Err(reason) = restart(settings, unit) {
            error!("configure: restarting {unit} failed: {reason}; restoring");
            let restore = restore(changes);
            for &(again, _) in &units {
                if let Err(e) = restart(settings, again) {
                    error!("configure: restarting {again} on the old configuration: {e}");
                }
            }
            return Err(ConfigureError::Restart {
                model,
                unit: unit.to_owned(),
                reason,
                restore,
            });
        }
        restarted.push(unit.to_owned());
    }
    Ok(Outcome {
        changed: changes
            .iter()
            .map(|c| c.path.display().to_string())
            .collect(),
        restarted,
        warnings: plan.warnings.clone(),
    })
}

/// The target is still the file the plan read: same path through no
/// symlink, same inode (or still missing). Between plan and write a file can
/// be swapped for a symlink or another file; writing then would change
/// something the request was never checked against.
fn recheck(c: &Change) -> io::Result<()> {
    let changed = |why: String| {
        io::Error::other(format!(
            "{} changed since the request was checked ({why}); nothing written to it",
            c.path.display()
        ))
    };
    check_below(&c.base, &c.path).map_err(changed)?;
    let now = file_id(&c.path)?;
    if now != c.id {
        return Err(changed(match now {
            None => "it was removed".into(),
            Some(_) if c.id.is_none() => "it was created".into(),
            Some(_) => "it is another file now".into(),
        }));
    }
    Ok(())
}

/// Puts back the `before` of each change, last first.
fn restore(changes: &[Change]) -> Restored {
    let mut failures = vec![];
    for c in changes.iter().rev() {
        let result = match &c.before {
            Some(bytes) => write(c, bytes),
            None => remove(&c.path),
        };
        match result {
            Ok(()) => info!("configure: restored {}", c.path.display()),
            Err(e) => {
                error!("configure: could not restore {}: {e}", c.path.display());
                failures.push(format!("{}: {e}", c.path.display()));
            }
        }
    }
    Restored { failures }
}

fn write(c: &Change, bytes: &[u8]) -> io::Result<()> {
    match c.target {
        // Sysctls are not files: one write, which the kernel takes or refuses.
        Target::Sysctl => OpenOptions::new()
            .write(true)
            .open(&c.path)?
            .write_all(bytes),
        Target::File => replace(&c.path, bytes, true),
        Target::GrubArgs => {
            if let Some(dir) = c.path.parent() {
                durable::create_dirs(dir)?;
            }
            replace(&c.path, bytes, false)
        }
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    durable::sync_parent(path)
}

/// Atomic replace (see the module doc); `keep_owner` carries the old file's
/// owner over (not on FAT, which has none).
fn replace(path: &Path, bytes: &[u8], keep_owner: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.os-agent.tmp"));
    let old = fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        if let (true, Some(m)) = (keep_owner, &old) {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        durable::rename_over(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs the restart command for `unit`, killed after the timeout.
fn restart(settings: &Settings, unit: &str) -> Result<(), String> {
    let (program, args) = settings
        .restart
        .split_first()
        .ok_or("config-restart is empty")?;
    info!(
        "configure: restarting {unit}: {} {unit}",
        settings.restart.join(" ")
    );
    let mut child = Command::new(program)
        .args(args)
        .arg(unit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= settings.restart_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer within {} s",
                    settings.restart_timeout.as_secs()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.by_ref().take(4096).read_to_string(&mut stderr);
    }
    warn!("configure: {program} {unit}: {status}: {}", stderr.trim());
    Err(format!("{status}: {}", stderr.trim()))
}
