//! The node's boot state and the transitions the agent makes on it: activate
//! (arm a trial), confirm, mark failed, roll back, and what to do after a boot.
//!
//! Decisions are pure functions over a [`NodeView`] (the A/B env plus both slot
//! records); the functions that write go through bootctl only (the ESP copies
//! in place, the records atomically) and then reboot when configured to.
//!
//! Crash-safe ordering (DESIGN.md §4): the env is changed first and the slot
//! record second, so a power cut in between leaves a state the next boot's
//! [`boot_plan`] completes (a committed slot still `written` becomes `good`, a
//! failed trial still `written` becomes `failed`). The trial file (below) is
//! written after arming, so a stale one can only describe an older image,
//! which [`boot_plan`] recognises by its identity (digest and write time).

use crate::config::Config;
use crate::prepare::Prepared;
use bootctl::grub_model::Source;
use bootctl::record::{self, RecordError, SlotRecord, SlotState};
use bootctl::state::Confirmed;
use bootctl::store::{Esp, StoreError};
use bootctl::{AbState, Slot};
use log::{info, warn};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use wire::rpc::Reason;

/// The agent's own state directory under PERSIST.
pub fn agent_dir(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("os-agent")
}

fn trial_path(cfg: &Config) -> PathBuf {
    agent_dir(cfg).join("trial")
}

/// The boot state and both slot records, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub booted: Slot,
    pub ab: AbState,
    /// Which env copy the state came from (`Default`: both unusable).
    pub source: Source,
    /// Indexed by slot: `records[0]` is A.
    pub records: [SlotRecord; 2],
}

impl NodeView {
    pub fn record(&self, slot: Slot) -> &SlotRecord {
        &self.records[slot_index(slot)]
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// What the agent last armed, kept so a later boot can tell which image a
/// fallback (`ab_fail`) refers to and why it failed: the env says only "slot B".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialInfo {
    pub slot: Slot,
    pub version: String,
    pub digest: String,
    /// The record's `written_at` when armed: with the digest, the identity of
    /// one write of an image (a re-write of the same image is a new identity).
    pub written_at: u64,
    /// Why the health gate failed it, when it did.
    pub failure: Option<String>,
}

impl TrialInfo {
    fn of(rec: &SlotRecord) -> TrialInfo {
        TrialInfo {
            slot: rec.slot,
            version: rec.version.clone(),
            digest: rec.digest.clone(),
            written_at: rec.written_at,
            failure: None,
        }
    }

    /// Whether `rec` is the very image this trial was armed for.
    pub fn describes(&self, rec: &SlotRecord) -> bool {
        rec.slot == self.slot && rec.digest == self.digest && rec.written_at == self.written_at
    }

    fn to_text(&self) -> String {
        let mut s = format!(
            "slot={}\nversion={}\ndigest={}\nwritten_at={}\n",
            self.slot, self.version, self.digest, self.written_at
        );
        if let Some(f) = &self.failure {
            // One line: the reason is free text (a check's output, a server's
            // message), so every control character becomes a blank.
            let f: String = f
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            s.push_str(&format!("failure={f}\n"));
        }
        s
    }

    /// `None` for an unreadable file, which includes a key given twice (what
    /// an injected line looks like).
    fn parse(text: &str) -> Option<TrialInfo> {
        let mut keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != n {
            return None;
        }
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
        };
        Some(TrialInfo {
            slot: Slot::parse(field("slot")?)?,
            version: field("version")?.to_owned(),
            digest: field("digest")?.to_owned(),
            written_at: field("written_at")?.parse().ok()?,
            failure: field("failure").map(str::to_owned),
        })
    }
}

/// A transition the agent refuses, with the reason an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A trial is armed (and not for the booted slot).
    TrialArmed { trial: Slot },
    /// The booted slot is on trial and not yet confirmed.
    BootedOnTrial { slot: Slot },
    /// The slot is the committed one, which boots next and is the fallback.
    SlotIsCommitted { slot: Slot },
    /// Only the slot not running can be written or armed.
    NotInactive { slot: Slot, booted: Slot },
    /// Rollback target without a verified image that booted before.
    NotGood {
        slot: Slot,
        state: SlotState,
        version: String,
    },
    /// The slot's record does not say `written` (prepare did not finish).
    NotWritten { slot: Slot, state: SlotState },
    /// The record holds another image than the one just prepared.
    DigestMismatch {
        slot: Slot,
        recorded: String,
        prepared: String,
    },
    /// `upgrade` without a successful `prepare_upgrade` before it.
    NothingPrepared,
    /// Both env copies are unusable; GRUB boots its default and nothing can change.
    NoBootState,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TrialArmed { trial } => write!(
                f,
                "a trial boot of slot {trial} is armed; reboot into it, or end it with \
                 `bootctl mark-failed {trial}`"
            ),
            Refusal::BootedOnTrial { slot } => write!(
                f,
                "the booted slot {slot} is on trial and not confirmed yet; wait for the health \
                 gate or run `os-agent confirm`"
            ),
            Refusal::SlotIsCommitted { slot } => write!(
                f,
                "slot {slot} is the committed slot (it boots next and is the fallback); reboot \
                 into it first"
            ),
            Refusal::NotInactive { slot, booted } => write!(
                f,
                "slot {slot} is the booted slot; only slot {} can be written",
                booted.other()
            ),
            Refusal::NotGood {
                slot,
                state,
                version,
            } => match state {
                SlotState::Empty => write!(f, "slot {slot} holds no image"),
                SlotState::Written => write!(
                    f,
                    "slot {slot} holds version {version}, which never completed a boot"
                ),
                SlotState::Failed => write!(
                    f,
                    "slot {slot} holds version {version}, whose trial boot failed"
                ),
                SlotState::Good => write!(f, "slot {slot} holds version {version}"),
            },
            Refusal::NotWritten { slot, state } => write!(
                f,
                "slot {slot} is recorded as {}, not as a freshly written image; run \
                 prepare_upgrade again",
                state.as_str()
            ),
            Refusal::DigestMismatch {
                slot,
                recorded,
                prepared,
            } => write!(
                f,
                "slot {slot} records image {recorded}, not the prepared {prepared}; run \
                 prepare_upgrade again"
            ),
            Refusal::NothingPrepared => f.write_str(
                "the inactive slot holds no prepared image (its record does not say written); \
                 send prepare_upgrade first (it resumes an interrupted write)",
            ),
            Refusal::NoBootState => f.write_str(
                "neither A/B env copy on the ESP is usable; repair it with `bootctl init --force`",
            ),
        }
    }
}

#[derive(Debug)]
pub enum NodeError {
    Refused(Refusal),
    Boot(StoreError),
    Record(RecordError),
    SeedEtc(crate::etc_overlay::SeedError),
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Reboot(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Refused(r) => write!(f, "refused: {r}"),
            NodeError::Boot(e) => write!(f, "A/B boot state: {e}"),
            NodeError::Record(e) => write!(f, "{e}"),
            NodeError::SeedEtc(e) => write!(f, "{e}"),
            NodeError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            NodeError::Reboot(e) => write!(f, "reboot: {e}"),
        }
    }
}

impl Refusal {
    /// The stable reason sent to clients.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::TrialArmed { .. } => Reason::TrialArmed,
            Refusal::BootedOnTrial { .. } => Reason::BootedOnTrial,
            Refusal::SlotIsCommitted { .. } => Reason::SlotInUse,
            Refusal::NotInactive { .. } => Reason::NotInactive,
            Refusal::NotGood { .. } => Reason::NotGood,
            Refusal::NotWritten { .. }
            | Refusal::DigestMismatch { .. }
            | Refusal::NothingPrepared => Reason::NothingPrepared,
            Refusal::NoBootState => Reason::NoBootState,
        }
    }
}

impl NodeError {
    /// The stable reason sent to clients.
    pub fn reason(&self) -> Reason {
        match self {
            NodeError::Refused(r) => r.reason(),
            NodeError::Boot(_) => Reason::BootState,
            NodeError::Record(_) | NodeError::Io { .. } => Reason::RecordIo,
            NodeError::SeedEtc(_) => Reason::SlotIo,
            NodeError::Reboot(_) => Reason::Reboot,
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Boot(e) => Some(e),
            NodeError::Record(e) => Some(e),
            NodeError::SeedEtc(e) => Some(e),
            NodeError::Io { source, .. } => Some(source),
            NodeError::Refused(_) | NodeError::Reboot(_) => None,
        }
    }
}

impl From<Refusal> for NodeError {
    fn from(r: Refusal) -> Self {
        NodeError::Refused(r)
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Boot(e)
    }
}

impl From<RecordError> for NodeError {
    fn from(e: RecordError) -> Self {
        NodeError::Record(e)
    }
}

/// Reads the env (without repairing it: bootctl owns repairs) and both records.
pub fn load(cfg: &Config) -> Result<NodeView, NodeError> {
    let status = Esp::new(&cfg.esp).status(false, cfg.booted)?;
    let records = [
        record::read(&cfg.state_dir, Slot::A)?,
        record::read(&cfg.state_dir, Slot::B)?,
    ];
    Ok(NodeView {
        booted: cfg.booted,
        ab: status.state,
        source: status.source,
        records,
    })
}

/// The slot an upgrade may write now: the one not running, provided it is
/// neither the committed slot (the only known-good boot) nor armed for a trial
/// (a reboot would boot it half-written).
pub fn writable_slot(view: &NodeView) -> Result<Slot, Refusal> {
    let slot = view.booted.other();
    if view.source == Source::Default {
        return Err(Refusal::NoBootState);
    }
    if view.ab.trial == Some(view.booted) {
        return Err(Refusal::BootedOnTrial { slot: view.booted });
    }
    if view.ab.active == slot {
        return Err(Refusal::SlotIsCommitted { slot });
    }
    if view.ab.trial == Some(slot) {
        return Err(Refusal::TrialArmed { trial: slot });
    }
    Ok(slot)
}

/// What the inactive slot holds ready to arm: its record says `written`
/// (verified, never booted), or it is armed already.
pub fn prepared_in(view: &NodeView) -> Option<Prepared> {
    let rec = view.record(view.booted.other());
    (rec.state == SlotState::Written).then(|| Prepared::of(rec))
}

/// Whether `prepared` may be armed: it is the inactive slot's current record,
/// verified and written, and nothing else is on trial. `Ok(false)`: it is
/// armed already (a repeated `upgrade` is harmless).
pub fn activation_check(view: &NodeView, prepared: &Prepared) -> Result<bool, Refusal> {
    let slot = prepared.slot;
    if slot == view.booted {
        return Err(Refusal::NotInactive {
            slot,
            booted: view.booted,
        });
    }
    if view.ab.trial == Some(slot) {
        return Ok(false);
    }
    writable_slot(view)?;
    let rec = view.record(slot);
    if rec.state != SlotState::Written {
        return Err(Refusal::NotWritten {
            slot,
            state: rec.state,
        });
    }
    if rec.digest != prepared.digest {
        return Err(Refusal::DigestMismatch {
            slot,
            recorded: rec.digest.clone(),
            prepared: prepared.digest.clone(),
        });
    }
    Ok(true)
}

/// The slot a rollback commits: the other one, only when its record says it
/// holds a verified image that completed a confirmed boot (DESIGN.md §4).
pub fn rollback_target(view: &NodeView) -> Result<Slot, Refusal> {
    if view.source == Source::Default {
        return Err(Refusal::NoBootState);
    }
    if let Some(trial) = view.ab.trial {
        return Err(if trial == view.booted {
            Refusal::BootedOnTrial { slot: trial }
        } else {
            Refusal::TrialArmed { trial }
        });
    }
    let target = view.ab.active.other();
    let rec = view.record(target);
    if rec.state != SlotState::Good {
        return Err(Refusal::NotGood {
            slot: target,
            state: rec.state,
            version: rec.version.clone(),
        });
    }
    Ok(target)
}

/// What to do after a boot; each part independent of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootPlan {
    /// The booted slot is on trial: run the health gate.
    pub gate: Option<Slot>,
    /// The committed slot booted and its record still says `written`
    /// (os-init confirmed it, or the agent crashed after confirming).
    pub mark_good: Option<Slot>,
    /// A trial fell back and its record still says `written`.
    pub mark_failed: Option<Slot>,
}

pub fn boot_plan(view: &NodeView, trial: Option<&TrialInfo>) -> BootPlan {
    let booted = view.booted;
    let mut plan = BootPlan::default();
    if view.ab.trial == Some(booted) {
        plan.gate = Some(booted);
    }
    if view.ab.active == booted && view.record(booted).state == SlotState::Written {
        plan.mark_good = Some(booted);
    }
    if let Some(failed) = view.ab.fail {
        let rec = view.record(failed);
        // Only the image that was armed: the slot may hold a newer, untried one.
        if rec.state == SlotState::Written && trial.is_some_and(|t| t.describes(rec)) {
            plan.mark_failed = Some(failed);
        }
    }
    plan
}

/// A trial that fell back, as reported to the proxy: a rollback with the
/// version that failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub slot: Slot,
    /// `None` when the agent has no record of arming that trial.
    pub version: Option<String>,
    pub reason: String,
}

/// Said when the failed boot left no reason behind (GRUB used up the tries, or
/// os-init refused the root before the agent ran).
const FALLBACK_REASON: &str = "the trial boot did not complete: GRUB used up its tries or os-init \
     refused the root, and the committed slot booted instead";

pub fn last_failure(view: &NodeView, trial: Option<&TrialInfo>) -> Option<Failure> {
    let slot = view.ab.fail?;
    let known = trial.filter(|t| t.slot == slot);
    Some(Failure {
        slot,
        version: known.map(|t| t.version.clone()),
        reason: known
            .and_then(|t| t.failure.clone())
            .unwrap_or_else(|| FALLBACK_REASON.to_owned()),
    })
}

/// A trial file is a few short lines; one longer than this is not one.
const MAX_TRIAL_BYTES: u64 = 64 << 10;

pub fn read_trial(cfg: &Config) -> Result<Option<TrialInfo>, NodeError> {
    let path = trial_path(cfg);
    match bootctl::small_file::read(&path, MAX_TRIAL_BYTES) {
        Ok(Some(text)) => Ok(TrialInfo::parse(&text).or_else(|| {
            warn!("ignoring unreadable trial file {}", path.display());
            None
        })),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            warn!("ignoring unreadable trial file {}: {e}", path.display());
            Ok(None)
        }
        Err(source) => Err(NodeError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

fn write_trial(cfg: &Config, info: &TrialInfo) -> Result<(), NodeError> {
    let path = trial_path(cfg);
    for (name, value) in [("version", &info.version), ("digest", &info.digest)] {
        record::check_text(value).map_err(|e| record::RecordError::Invalid {
            path: path.clone(),
            reason: format!("{name} {e}"),
        })?;
    }
    Ok(record::write_atomic(&path, info.to_text().as_bytes())?)
}

fn set_record_state(cfg: &Config, rec: &SlotRecord, state: SlotState) -> Result<(), NodeError> {
    let mut rec = rec.clone();
    info!(
        "slot {}: record {} -> {} (version {})",
        rec.slot,
        rec.state.as_str(),
        state.as_str(),
        rec.version
    );
    rec.state = state;
    record::write(&cfg.state_dir, &rec)?;
    Ok(())
}

/// Seeds the prepared slot's /etc layer from the booted slot's, then arms a
/// trial of it with `cfg.tries` boots. Returns the new boot state. Does not
/// reboot.
pub fn activate(cfg: &Config, prepared: &Prepared) -> Result<AbState, NodeError> {
    let view = load(cfg)?;
    let slot = prepared.slot;
    let arm = activation_check(&view, prepared)?;
    if arm {
        // Before arming: once armed, any reboot boots the slot with its layer.
        crate::etc_overlay::seed(&cfg.state_dir, view.booted, slot).map_err(NodeError::SeedEtc)?;
    }
    let (_, state) = Esp::new(&cfg.esp).update(|s| match s.trial {
        Some(t) if t == slot => Ok(()),
        _ => s.arm_trial(slot, cfg.tries),
    })?;
    if arm {
        info!(
            "slot {slot}: armed a trial boot of version {} ({} tries) on ESP {}",
            prepared.version,
            cfg.tries,
            cfg.esp.display()
        );
    } else {
        info!("slot {slot}: trial boot already armed");
    }
    write_trial(cfg, &TrialInfo::of(view.record(slot)))?;
    Ok(state)
}

/// Commits the booted slot (ending its trial) and records it `good`. A slot
/// already committed with no trial is confirmed again harmlessly.
pub fn confirm(cfg: &Config) -> Result<Confirmed, NodeError> {
    let slot = cfg.booted;
    let (outcome, _) = Esp::new(&cfg.esp).update(|s| s.confirm(slot))?;
    let rec = record::read(&cfg.state_dir, slot)?;
    if rec.state == SlotState::Written {
        set_record_state(cfg, &rec, SlotState::Good)?;
    }
    info!("slot {slot}: confirmed ({outcome:?})");
    Ok(outcome)
}

/// Ends the booted slot's trial as failed, keeping `reason` for the report.
/// Does not reboot.
pub fn fail_trial(cfg: &Config, reason: &str) -> Result<(), NodeError> {
    let slot = cfg.booted;
    let esp = Esp::new(&cfg.esp);
    let trial = esp.status(false, slot)?.state.trial;
    if trial != Some(slot) {
        return Err(NodeError::Boot(StoreError::Transition(
            bootctl::state::TransitionError::NotOnTrial { slot, trial },
        )));
    }
    let rec = record::read(&cfg.state_dir, slot)?;
    let mut info = TrialInfo::of(&rec);
    info.failure = Some(reason.to_owned());
    // The reason goes first: once the env says failed, a crash must not lose it.
    write_trial(cfg, &info)?;
    esp.update(|s| s.mark_failed(slot))?;
    warn!(
        "slot {slot}: trial of version {} failed: {reason}",
        rec.version
    );
    if rec.state == SlotState::Written {
        set_record_state(cfg, &rec, SlotState::Failed)?;
    }
    Ok(())
}

/// Commits the other slot when it is eligible. Returns it. Does not reboot.
pub fn rollback(cfg: &Config) -> Result<Slot, NodeError> {
    let view = load(cfg)?;
    let target = rollback_target(&view)?;
    let (slot, _) = Esp::new(&cfg.esp).update(|s| s.rollback())?;
    info!(
        "rolled back: slot {slot} (version {}) is committed on ESP {}",
        view.record(target).version,
        cfg.esp.display()
    );
    Ok(slot)
}

/// Applies the record fixes of a boot plan (the gate is the caller's).
pub fn apply_record_fixes(cfg: &Config, view: &NodeView, plan: &BootPlan) -> Result<(), NodeError> {
    if let Some(slot) = plan.mark_good {
        set_record_state(cfg, view.record(slot), SlotState::Good)?;
    }
    if let Some(slot) = plan.mark_failed {
        warn!(
            "slot {slot}: the trial of version {} fell back to slot {}",
            view.record(slot).version,
            view.ab.active
        );
        set_record_state(cfg, view.record(slot), SlotState::Failed)?;
    }
    Ok(())
}

/// Restarts the machine, unless `cfg.reboot` is off. Orderly through systemd
/// when it runs (services stop, filesystems unmount); else sync + reboot(2).
pub fn reboot(cfg: &Config, why: &str) -> Result<(), NodeError> {
    if !cfg.reboot {
        info!("not rebooting ({why}): reboot is disabled in the configuration");
        return Ok(());
    }
    info!("rebooting: {why}");
    if Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemctl")
            .arg("reboot")
            .status()
            .map_err(|e| NodeError::Reboot(format!("run systemctl reboot: {e}")))?;
        if status.success() {
            return Ok(());
        }
        warn!("systemctl reboot failed ({status}); rebooting directly");
    }
    Err(NodeError::Reboot(format!(
        "reboot(2): {}",
        crate::sys::sync_and_reboot()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slot: Slot, state: SlotState, version: &str) -> SlotRecord {
        SlotRecord {
            slot,
            state,
            version: version.into(),
            digest: format!("blake3:{version}"),
            size: 1,
            written_at: 100,
            confirm: None,
            source: String::new(),
            verity: None,
        }
    }

    fn view(booted: Slot, ab: AbState, a: SlotState, b: SlotState) -> NodeView {
        NodeView {
            booted,
            ab,
            source: Source::Copy1,
            records: [rec(Slot::A, a, "1"), rec(Slot::B, b, "3")],
        }
    }

    fn armed(active: Slot, trial: Slot) -> AbState {
        let mut ab = AbState::new(active);
        ab.arm_trial(trial, 3).unwrap();
        ab
    }

    fn prepared(slot: Slot, digest: &str) -> Prepared {
        Prepared {
            slot,
            version: "3".into(),
            digest: digest.into(),
            size: 1,
            source: String::new(),
            verity: None,
        }
    }

    #[test]
    fn rollback_only_to_a_good_slot() {
        use SlotState::*;
        let ok = view(Slot::A, AbState::new(Slot::A), Good, Good);
        assert_eq!(rollback_target(&ok), Ok(Slot::B));
        let never = view(Slot::A, AbState::new(Slot::A), Good, Written);
        let err = rollback_target(&never).unwrap_err();
        assert_eq!(
            err.to_string(),
            "slot B holds version 3, which never completed a boot"
        );
        let failed = view(Slot::A, AbState::new(Slot::A), Good, Failed);
        assert!(rollback_target(&failed)
            .unwrap_err()
            .to_string()
            .contains("whose trial boot failed"));
        let empty = view(Slot::A, AbState::new(Slot::A), Good, Empty);
        assert_eq!(
            rollback_target(&empty).unwrap_err().to_string(),
            "slot B holds no image"
        );
        let trial = view(Slot::A, armed(Slot::A, Slot::B), Good, Good);
        assert_eq!(
            rollback_target(&trial),
            Err(Refusal::TrialArmed { trial: Slot::B })
        );
        let on_trial = view(Slot::B, armed(Slot::A, Slot::B), Good, Written);
        assert_eq!(
            rollback_target(&on_trial),
            Err(Refusal::BootedOnTrial { slot: Slot::B })
        );
        // After a rollback without reboot the target is relative to the
        // committed slot: back to the booted one.
        let rolled = view(Slot::A, AbState::new(Slot::B), Good, Good);
        assert_eq!(rollback_target(&rolled), Ok(Slot::A));
    }

    #[test]
    fn writes_never_touch_the_committed_or_armed_slot() {
        use SlotState::*;
        let v = view(Slot::A, AbState::new(Slot::A), Good, Empty);
        assert_eq!(writable_slot(&v), Ok(Slot::B));
        let v = view(Slot::A, armed(Slot::A, Slot::B), Good, Written);
        assert_eq!(
            writable_slot(&v),
            Err(Refusal::TrialArmed { trial: Slot::B })
        );
        let v = view(Slot::B, armed(Slot::A, Slot::B), Good, Written);
        assert_eq!(
            writable_slot(&v),
            Err(Refusal::BootedOnTrial { slot: Slot::B })
        );
        let v = view(Slot::A, AbState::new(Slot::B), Good, Good);
        assert_eq!(
            writable_slot(&v),
            Err(Refusal::SlotIsCommitted { slot: Slot::B })
        );
        let mut v = view(Slot::A, AbState::new(Slot::A), Good, Empty);
        v.source = Source::Default;
        assert_eq!(writable_slot(&v), Err(Refusal::NoBootState));
    }

    #[test]
    fn activation_needs_the_prepared_written_image() {
        use SlotState::*;
        let v = view(Slot::A, AbState::new(Slot::A), Good, Written);
        assert_eq!(
            activation_check(&v, &prepared(Slot::B, "blake3:3")),
            Ok(true)
        );
        assert!(matches!(
            activation_check(&v, &prepared(Slot::B, "blake3:4")),
            Err(Refusal::DigestMismatch { .. })
        ));
        assert!(matches!(
            activation_check(&v, &prepared(Slot::A, "blake3:1")),
            Err(Refusal::NotInactive { .. })
        ));
        let v = view(Slot::A, AbState::new(Slot::A), Good, Empty);
        assert_eq!(
            activation_check(&v, &prepared(Slot::B, "blake3:3")),
            Err(Refusal::NotWritten {
                slot: Slot::B,
                state: Empty
            })
        );
        let v = view(Slot::A, armed(Slot::A, Slot::B), Good, Written);
        assert_eq!(
            activation_check(&v, &prepared(Slot::B, "blake3:3")),
            Ok(false)
        );
    }

    #[test]
    fn boot_plan_gates_trials_and_fixes_records() {
        use SlotState::*;
        let v = view(Slot::B, armed(Slot::A, Slot::B), Good, Written);
        assert_eq!(boot_plan(&v, None).gate, Some(Slot::B));
        assert_eq!(boot_plan(&v, None).mark_good, None);
        // os-init confirmed the trial: committed, record still written.
        let v = view(Slot::B, AbState::new(Slot::B), Good, Written);
        assert_eq!(
            boot_plan(&v, None),
            BootPlan {
                mark_good: Some(Slot::B),
                ..BootPlan::default()
            }
        );
        // Fallback: GRUB recorded B as failed and A booted.
        let mut ab = AbState::new(Slot::A);
        ab.fail = Some(Slot::B);
        let v = view(Slot::A, ab, Good, Written);
        let trial = TrialInfo::of(v.record(Slot::B));
        assert_eq!(boot_plan(&v, Some(&trial)).mark_failed, Some(Slot::B));
        // A newer image written into B since then is not the one that failed.
        let mut newer = v.clone();
        newer.records[1].written_at = 200;
        assert_eq!(boot_plan(&newer, Some(&trial)), BootPlan::default());
        assert_eq!(boot_plan(&v, None), BootPlan::default());
    }

    #[test]
    fn fallback_is_reported_with_version_and_reason() {
        use SlotState::*;
        let mut ab = AbState::new(Slot::A);
        ab.fail = Some(Slot::B);
        let v = view(Slot::A, ab, Good, Failed);
        let mut trial = TrialInfo::of(v.record(Slot::B));
        let f = last_failure(&v, Some(&trial)).unwrap();
        assert_eq!((f.slot, f.version.as_deref()), (Slot::B, Some("3")));
        assert!(f.reason.contains("GRUB used up its tries"), "{}", f.reason);
        trial.failure = Some("check 10-kubelet exited with status 1".into());
        let f = last_failure(&v, Some(&trial)).unwrap();
        assert_eq!(f.reason, "check 10-kubelet exited with status 1");
        assert_eq!(last_failure(&v, None).unwrap().version, None);
        let clean = view(Slot::A, AbState::new(Slot::A), Good, Failed);
        assert_eq!(last_failure(&clean, Some(&trial)), None);
    }

    #[test]
    fn trial_file_round_trip() {
        let mut t = TrialInfo::of(&rec(Slot::B, SlotState::Written, "3"));
        t.failure = Some("two\nlines".into());
        let back = TrialInfo::parse(&t.to_text()).unwrap();
        let twice = format!("{}version=9\n", t.to_text());
        assert_eq!(
            TrialInfo::parse(&twice),
            None,
            "a repeated key is unreadable"
        );
        assert_eq!(back.failure.as_deref(), Some("two lines"));
        assert_eq!((back.slot, back.written_at), (Slot::B, 100));
        assert_eq!(TrialInfo::parse("slot=Q\n"), None);
        t.failure = Some("a\rversion=1\u{1b}[2J".into());
        let back = TrialInfo::parse(&t.to_text()).unwrap();
        assert_eq!(back.failure.as_deref(), Some("a version=1 [2J"));
        assert_eq!(back.version, "3");
    }
}
