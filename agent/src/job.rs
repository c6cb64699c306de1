//! One mutating job at a time on a node, whoever asks (the JSON-RPC server, or
//! the CLI in another process).
//!
//! Two locks: an in-process slot, so the server knows which job runs and can
//! report and cancel it, and an exclusive `flock` on
//! `STATE_DIR/os-agent/lock`, so a CLI run and the server cannot interleave.
//! The lock file holds a line naming the holder, for the "busy" message.
//!
//! Operations that end in a reboot return their [`JobGuard`]: the caller
//! answers its client first and reboots while still holding the job, so
//! nothing else starts on a machine that is going down.

use crate::config::Config;
use crate::configure::{self, ConfigureError, ConfigureRequest, Outcome};
use crate::health::{Gate, Verdict};
use crate::node::{self, NodeError, Refusal};
use crate::prepare::{self, PrepareError, PrepareRequest, Prepared};
use crate::progress::{Phase, Progress};
use crate::sys;
use bootctl::state::Confirmed;
use bootctl::{AbState, Slot};
use log::{error, info, warn};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wire::rpc::Reason;

/// The write path, injectable so the job layer can be tested without it.
pub type PrepareFn = Box<
    dyn Fn(&Config, &PrepareRequest, &Progress, &AtomicBool) -> Result<Prepared, PrepareError>
        + Send
        + Sync,
>;

/// The real write path ([`prepare::prepare`]).
pub fn real_prepare() -> PrepareFn {
    Box::new(prepare::prepare)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Write and verify an image into the inactive slot.
    Prepare,
    /// Arm a trial boot of the prepared slot.
    Activate,
    /// Prepare, then activate (the CLI's `upgrade`).
    Upgrade,
    Rollback,
    Confirm,
    /// Record fixes and the health gate after a boot.
    BootCheck,
    /// Node configuration (`configure`).
    Configure,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prepare => "prepare",
            JobKind::Activate => "activate",
            JobKind::Upgrade => "upgrade",
            JobKind::Rollback => "rollback",
            JobKind::Confirm => "confirm",
            JobKind::BootCheck => "boot-check",
            JobKind::Configure => "configure",
        }
    }
}

/// A running job, shared with whoever reports or cancels it.
#[derive(Debug)]
pub struct Job {
    pub kind: JobKind,
    /// What it works on: a URL, a slot.
    pub detail: String,
    pub progress: Progress,
    pub cancel: AtomicBool,
    started: Instant,
    step: Mutex<String>,
}

impl Job {
    fn new(kind: JobKind, detail: String) -> Job {
        Job {
            kind,
            detail,
            progress: Progress::default(),
            cancel: AtomicBool::new(false),
            started: Instant::now(),
            step: Mutex::new(String::new()),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What the job is doing right now, beyond its progress phase.
    pub fn step(&self) -> String {
        lock(&self.step).clone()
    }

    pub fn set_step(&self, step: String) {
        *lock(&self.step) = step;
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let mut s = self.kind.as_str().to_owned();
        if !self.detail.is_empty() {
            s.push_str(&format!(" ({})", self.detail));
        }
        format!("{s}, running for {} s", self.elapsed().as_secs())
    }
}

/// Mutex poisoning means a job thread panicked; the data (a job slot, a
/// string) is still consistent, so carry on rather than take the server down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub enum AgentError {
    /// Another job runs (in this process or another).
    Busy(String),
    Node(NodeError),
    /// The write path failed.
    Prepare(PrepareError),
    Cancelled(JobKind),
    Configure(ConfigureError),
    Lock {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Busy(m) => f.write_str(m),
            AgentError::Node(e) => write!(f, "{e}"),
            AgentError::Prepare(m) => write!(f, "prepare: {m}"),
            AgentError::Cancelled(k) => write!(f, "{} was cancelled", k.as_str()),
            AgentError::Configure(e) => write!(f, "configure: {e}"),
            AgentError::Lock { path, source } => {
                write!(f, "job lock {}: {source}", path.display())
            }
        }
    }
}

impl AgentError {
    /// The stable reason sent to clients, which gives the error's kind.
    pub fn reason(&self) -> Reason {
        match self {
            AgentError::Busy(_) => Reason::Busy,
            AgentError::Node(e) => e.reason(),
            AgentError::Prepare(e) => e.reason(),
            AgentError::Cancelled(_) => Reason::Cancelled,
            AgentError::Configure(e) => e.reason(),
            AgentError::Lock { .. } => Reason::Lock,
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Node(e) => Some(e),
            AgentError::Prepare(e) => Some(e),
            AgentError::Configure(e) => Some(e),
            AgentError::Lock { source, .. } => Some(source),
            AgentError::Busy(_) | AgentError::Cancelled(_) => None,
        }
    }
}

impl From<NodeError> for AgentError {
    fn from(e: NodeError) -> Self {
        AgentError::Node(e)
    }
}

impl From<Refusal> for AgentError {
    fn from(r: Refusal) -> Self {
        AgentError::Node(NodeError::Refused(r))
    }
}

/// What the lock file says about its holder ("pid N runs KIND DETAIL"),
/// read bounded; empty when it cannot be read.
fn holder_text(path: &Path) -> String {
    bootctl::small_file::read(path, 4096)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The pid holding a `flock` on the file `dev`/`ino`, from `/proc/locks`,
/// whose lines read `1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF`
/// (major and minor in hex; a waiter's line has `->` after the number).
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let id = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == id => pid.parse().ok(),
            _ => None,
        }
    })
}

/// How the after-boot check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBoot {
    /// Nothing on trial (record fixes may have been made).
    NoTrial,
    Confirmed(Slot),
    /// The trial failed its health gate and was marked failed (and the
    /// machine reboots, when configured to).
    Failed {
        slot: Slot,
        reason: String,
    },
    /// The gate was cancelled; the trial stays armed.
    GateCancelled(Slot),
}

/// The agent: configuration, write path, the running job, the last image
/// prepared. Shared by reference between the server's threads.
pub struct Agent {
    cfg: Config,
    prepare: PrepareFn,
    current: Mutex<Option<Arc<Job>>>,
}

/// Holds the job slot and the node lock until dropped.
pub struct JobGuard<'a> {
    agent: &'a Agent,
    pub job: Arc<Job>,
    _lock: File,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let mut current = lock(&self.agent.current);
        if current.as_ref().is_some_and(|j| Arc::ptr_eq(j, &self.job)) {
            *current = None;
        }
    }
}

impl Agent {
    pub fn new(cfg: Config, prepare: PrepareFn) -> Agent {
        Agent {
            cfg,
            prepare,
            current: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn current_job(&self) -> Option<Arc<Job>> {
        lock(&self.current).clone()
    }

    /// Asks the running job to stop. Returns which job that was.
    pub fn cancel(&self) -> Option<JobKind> {
        let job = self.current_job()?;
        info!("cancelling {}", job.describe());
        job.cancel.store(true, Ordering::Relaxed);
        Some(job.kind)
    }

    fn lock_path(&self) -> PathBuf {
        node::agent_dir(&self.cfg).join("lock")
    }

    /// Starts a job, or says which one is in the way.
    pub fn begin(&self, kind: JobKind, detail: String) -> Result<JobGuard<'_>, AgentError> {
        // The detail comes from a request (an image URL) and is written to the
        // lock file, the log and status before the request's own checks: one
        // line of text, control characters escaped.
        let detail = wire::record::one_line(&detail).into_owned();
        let mut current = lock(&self.current);
        if let Some(job) = current.as_ref() {
            return Err(AgentError::Busy(format!(
                "os-agent is busy: {}; retry when it ends, or cancel it",
                job.describe()
            )));
        }
        let file = self.take_node_lock(kind, &detail)?;
        let job = Arc::new(Job::new(kind, detail));
        *current = Some(job.clone());
        Ok(JobGuard {
            agent: self,
            job,
            _lock: file,
        })
    }

    fn take_node_lock(&self, kind: JobKind, detail: &str) -> Result<File, AgentError> {
        let path = self.lock_path();
        let err = |source| AgentError::Lock {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        if !sys::try_flock_exclusive(&file).map_err(err)? {
            return Err(AgentError::Busy(format!(
                "os-agent is busy: another process holds {} ({}); retry when it ends",
                path.display(),
                holder_text(&path).trim()
            )));
        }
        let holder = format!(
            "pid {} runs {} {detail}\n",
            std::process::id(),
            kind.as_str()
        );
        file.set_len(0).map_err(err)?;
        file.write_all_at(holder.as_bytes(), 0).map_err(err)?;
        Ok(file)
    }

    /// Who holds the node lock, when another process does (for `status`).
    /// Read from `/proc/locks`: probing by taking the lock, even briefly,
    /// could make a job starting at that moment fail as busy.
    pub fn other_holder(&self) -> Option<String> {
        if self.current_job().is_some() {
            return None;
        }
        let path = self.lock_path();
        let meta = fs::metadata(&path).ok()?;
        let locks = fs::read_to_string("/proc/locks").ok()?;
        let pid = flock_holder(&locks, meta.dev(), meta.ino())?;
        Some(match holder_text(&path).trim() {
            "" => format!("pid {pid} holds {}", path.display()),
            h => h.to_owned(),
        })
    }

    /// Writes and verifies an image into the inactive slot (`prepare_upgrade`).
    pub fn prepare_upgrade(&self, req: &PrepareRequest) -> Result<Prepared, AgentError> {
        let guard = self.begin(JobKind::Prepare, req.url.clone())?;
        self.run_prepare(&guard.job, req)
    }

    fn run_prepare(&self, job: &Job, req: &PrepareRequest) -> Result<Prepared, AgentError> {
        let slot = node::writable_slot(&node::load(&self.cfg)?)?;
        info!(
            "prepare: {} -> slot {slot} ({}), digest {}",
            wire::record::one_line(&req.url),
            self.cfg.slot_device(slot).display(),
            wire::record::one_line(&req.digest)
        );
        match (self.prepare)(&self.cfg, req, &job.progress, &job.cancel) {
            Ok(p) => {
                job.progress.set_phase(Phase::Done);
                info!(
                    "prepare: slot {} holds version {} ({}, {} bytes), verified",
                    p.slot, p.version, p.digest, p.size
                );
                Ok(p)
            }
            Err(_) if job.cancelled() => {
                job.progress.set_phase(Phase::Failed);
                warn!("prepare of {} cancelled", req.url);
                Err(AgentError::Cancelled(job.kind))
            }
            Err(e) => {
                job.progress.set_phase(Phase::Failed);
                error!("prepare of {} failed: {e}", req.url);
                Err(AgentError::Prepare(e))
            }
        }
    }

    /// Arms a trial of the image the inactive slot's record says was
    /// written and verified (`upgrade`): the record, not this process's
    /// memory, so an agent restarted after `prepare_upgrade` still arms it,
    /// and a request refused or failed before it touched the slot leaves it
    /// armable. The caller reboots, holding the returned guard.
    pub fn upgrade(&self) -> Result<(AbState, JobGuard<'_>), AgentError> {
        let guard = self.begin(JobKind::Activate, String::new())?;
        let view = node::load(&self.cfg)?;
        let prepared = node::prepared_in(&view).ok_or(Refusal::NothingPrepared)?;
        let state = node::activate(&self.cfg, &prepared)?;
        Ok((state, guard))
    }

    /// Prepares and arms in one job (the CLI's `upgrade`). The caller reboots.
    pub fn install(
        &self,
        req: &PrepareRequest,
    ) -> Result<(Prepared, AbState, JobGuard<'_>), AgentError> {
        let guard = self.begin(JobKind::Upgrade, req.url.clone())?;
        let prepared = self.run_prepare(&guard.job, req)?;
        let state = node::activate(&self.cfg, &prepared)?;
        Ok((prepared, state, guard))
    }

    /// Commits the other slot when it is eligible. The caller reboots.
    pub fn rollback(&self) -> Result<(Slot, JobGuard<'_>), AgentError> {
        let guard = self.begin(JobKind::Rollback, String::new())?;
        let slot = node::rollback(&self.cfg)?;
        Ok((slot, guard))
    }

    /// Commits the booted slot now, without health checks.
    pub fn confirm(&self) -> Result<Confirmed, AgentError> {
        let _guard = self.begin(JobKind::Confirm, format!("slot {}", self.cfg.booted))?;
        Ok(node::confirm(&self.cfg)?)
    }

    /// Applies a node configuration request as one transaction (configure.rs).
    pub fn configure(&self, req: &ConfigureRequest) -> Result<Outcome, AgentError> {
        let models: Vec<&str> = req.configs.iter().map(|c| c.model.as_str()).collect();
        let _guard = self.begin(JobKind::Configure, models.join(", "))?;
        let node = configure::Node {
            settings: &self.cfg.configure,
            esp: &self.cfg.esp,
            booted: self.cfg.booted,
        };
        configure::configure(&node, req).map_err(AgentError::Configure)
    }

    /// After a boot: completes records, reports a fallback, and gates a trial.
    pub fn after_boot(&self) -> Result<AfterBoot, AgentError> {
        let guard = self.begin(JobKind::BootCheck, format!("slot {}", self.cfg.booted))?;
        self.run_after_boot(guard)
    }

    /// [`after_boot`](Self::after_boot) in a job already begun (the server
    /// begins it before it accepts requests, so none can slip in first).
    pub fn run_after_boot(&self, guard: JobGuard<'_>) -> Result<AfterBoot, AgentError> {
        let cfg = &self.cfg;
        let view = node::load(cfg)?;
        let trial = node::read_trial(cfg)?;
        let plan = node::boot_plan(&view, trial.as_ref());
        node::apply_record_fixes(cfg, &view, &plan)?;
        if let Some(f) = node::last_failure(&view, trial.as_ref()) {
            warn!(
                "rollback: the trial of slot {} (version {}) failed and slot {} runs: {}",
                f.slot,
                f.version.as_deref().unwrap_or("unknown"),
                view.ab.active,
                f.reason
            );
        }
        let Some(slot) = plan.gate else {
            return Ok(AfterBoot::NoTrial);
        };
        let gate = Gate {
            dir: cfg.health_dir.clone(),
            check_timeout: cfg.check_timeout,
            deadline: cfg.health_deadline,
            slot,
        };
        let job = &guard.job;
        match gate.run(&job.cancel, &|step| job.set_step(step)) {
            Verdict::Healthy => {
                node::confirm(cfg)?;
                Ok(AfterBoot::Confirmed(slot))
            }
            Verdict::Cancelled => {
                warn!("slot {slot}: health gate cancelled; the trial stays armed");
                Ok(AfterBoot::GateCancelled(slot))
            }
            Verdict::Unhealthy(reason) => {
                node::fail_trial(cfg, &reason)?;
                let why = format!(
                    "the trial of slot {slot} failed its health gate; slot {} boots next",
                    slot.other()
                );
                node::reboot(cfg, &why)?;
                Ok(AfterBoot::Failed { slot, reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_holder_from_proc_locks() {
        let dev = libc::makedev(0xfe, 0);
        let locks = "1: POSIX  ADVISORY  WRITE 7 fe:00:42 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 8 fe:00:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 1057 fe:00:42 0 EOF\n";
        assert_eq!(flock_holder(locks, dev, 42), Some(1057));
        assert_eq!(flock_holder(locks, dev, 43), None);
        assert_eq!(flock_holder(locks, libc::makedev(8, 1), 42), None);
    }
}
