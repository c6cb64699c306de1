//! The userspace health gate after a trial boot (DESIGN.md §4 step 5).
//!
//! Checks are the executables in `cfg.health_dir`, run one at a time in file
//! name order (`10-network`, `20-kubelet`, ...), each with its own timeout and
//! all within one deadline, with `OS_AGENT_SLOT` naming the slot on trial.
//! Exit status 0 passes. The first check that fails, hangs or cannot start
//! fails the gate; the rest do not run. Each check runs in its own process
//! group, so a timeout kills whatever the check started as well. No checks at
//! all is a pass: the boot got as far as starting the agent.

use crate::sys;
use bootctl::Slot;
use log::{info, warn};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Passed,
    /// Exited unsuccessfully; the exit status as text.
    Failed(String),
    /// Ran past its own timeout and was killed.
    TimedOut(Duration),
    /// Ran past the gate's deadline and was killed (or had no time left).
    DeadlinePassed,
    Unstartable(String),
    Cancelled,
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy(String),
    /// Stopped by `cancel`: no decision, the trial stays armed.
    Cancelled,
}

/// The time a check may take: its own timeout, or what is left of the
/// deadline if that is less. `bool`: the deadline is the limit.
pub fn check_budget(
    check_timeout: Duration,
    deadline: Duration,
    elapsed: Duration,
) -> (Duration, bool) {
    let left = deadline.saturating_sub(elapsed);
    if left < check_timeout {
        (left, true)
    } else {
        (check_timeout, false)
    }
}

/// The verdict from the checks run so far, in order.
pub fn verdict(results: &[(PathBuf, CheckOutcome)], deadline: Duration) -> Verdict {
    for (path, outcome) in results {
        let path = path.display();
        let reason = match outcome {
            CheckOutcome::Passed => continue,
            CheckOutcome::Cancelled => return Verdict::Cancelled,
            CheckOutcome::Failed(status) => format!("health check {path} failed ({status})"),
            CheckOutcome::TimedOut(t) => format!(
                "health check {path} did not finish within {} s and was killed",
                t.as_secs()
            ),
            CheckOutcome::DeadlinePassed => format!(
                "the health deadline of {} s passed during health check {path}",
                deadline.as_secs()
            ),
            CheckOutcome::Unstartable(e) => {
                format!("health check {path} could not be started: {e}")
            }
        };
        return Verdict::Unhealthy(reason);
    }
    Verdict::Healthy
}

/// The checks in `dir`, sorted by file name. A missing directory has none;
/// hidden and non-executable files are skipped (with a log line: a check that
/// silently never runs is worse than one that fails).
pub fn list_checks(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut checks = vec![];
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = fs::metadata(&path)?;
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            warn!("health check {} is not executable: skipped", path.display());
            continue;
        }
        checks.push(path);
    }
    checks.sort();
    Ok(checks)
}

/// Limits of one gate run.
#[derive(Debug, Clone)]
pub struct Gate {
    pub dir: PathBuf,
    pub check_timeout: Duration,
    pub deadline: Duration,
    pub slot: Slot,
}

impl Gate {
    /// Runs the checks; `on_step` hears which one runs now (for `status`).
    pub fn run(&self, cancel: &AtomicBool, on_step: &dyn Fn(String)) -> Verdict {
        let checks = match list_checks(&self.dir) {
            Ok(c) => c,
            Err(e) => {
                return Verdict::Unhealthy(format!(
                    "cannot list health checks in {}: {e}",
                    self.dir.display()
                ))
            }
        };
        info!(
            "slot {}: health gate: {} check(s) in {}, {} s each, {} s in all",
            self.slot,
            checks.len(),
            self.dir.display(),
            self.check_timeout.as_secs(),
            self.deadline.as_secs()
        );
        let start = Instant::now();
        let mut results = vec![];
        for (i, path) in checks.iter().enumerate() {
            on_step(format!(
                "health check {}/{}: {}",
                i + 1,
                checks.len(),
                path.display()
            ));
            let (limit, by_deadline) =
                check_budget(self.check_timeout, self.deadline, start.elapsed());
            let outcome = match run_one(path, limit, cancel, self.slot) {
                CheckOutcome::TimedOut(_) if by_deadline => CheckOutcome::DeadlinePassed,
                other => other,
            };
            info!("health check {}: {outcome:?}", path.display());
            let passed = outcome == CheckOutcome::Passed;
            results.push((path.clone(), outcome));
            if !passed {
                break;
            }
        }
        verdict(&results, self.deadline)
    }
}

fn run_one(path: &Path, limit: Duration, cancel: &AtomicBool, slot: Slot) -> CheckOutcome {
    if limit.is_zero() {
        return CheckOutcome::DeadlinePassed;
    }
    let spawned = Command::new(path)
        .env("OS_AGENT_SLOT", slot.as_str())
        .stdin(Stdio::null())
        // The agent's stdout may be a protocol stream; a check's chatter goes
        // to the log (stderr: the journal).
        .stdout(Stdio::from(io::stderr()))
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return CheckOutcome::Unstartable(e.to_string()),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return CheckOutcome::Passed,
            Ok(Some(status)) => return CheckOutcome::Failed(status.to_string()),
            Ok(None) => {}
            Err(e) => {
                kill(&mut child);
                return CheckOutcome::Unstartable(format!("waiting for it: {e}"));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            kill(&mut child);
            return CheckOutcome::Cancelled;
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            kill(&mut child);
            return CheckOutcome::TimedOut(limit);
        }
        std::thread::sleep((limit - elapsed).min(Duration::from_millis(50)));
    }
}

/// Kills the check's whole process group and reaps the check.
fn kill(child: &mut Child) {
    if let Err(e) = sys::kill_process_group(child.id()) {
        warn!("killing health check process group {}: {e}", child.id());
        let _ = child.kill();
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn budget_is_the_smaller_of_timeout_and_time_left() {
        assert_eq!(check_budget(60 * S, 300 * S, 10 * S), (60 * S, false));
        assert_eq!(check_budget(60 * S, 300 * S, 250 * S), (50 * S, true));
        assert_eq!(
            check_budget(60 * S, 300 * S, 400 * S),
            (Duration::ZERO, true)
        );
    }

    #[test]
    fn first_non_pass_decides() {
        let p = |n: &str| PathBuf::from(n);
        assert_eq!(verdict(&[], 300 * S), Verdict::Healthy);
        assert_eq!(
            verdict(&[(p("a"), CheckOutcome::Passed)], 300 * S),
            Verdict::Healthy
        );
        let v = verdict(
            &[
                (p("10-a"), CheckOutcome::Passed),
                (p("20-b"), CheckOutcome::Failed("exit status: 3".into())),
            ],
            300 * S,
        );
        assert_eq!(
            v,
            Verdict::Unhealthy("health check 20-b failed (exit status: 3)".into())
        );
        let v = verdict(&[(p("x"), CheckOutcome::DeadlinePassed)], 300 * S);
        assert_eq!(
            v,
            Verdict::Unhealthy("the health deadline of 300 s passed during health check x".into())
        );
        let v = verdict(&[(p("x"), CheckOutcome::TimedOut(60 * S))], 300 * S);
        assert!(matches!(v, Verdict::Unhealthy(r) if r.contains("within 60 s")));
        let v = verdict(&[(p("x"), CheckOutcome::Cancelled)], 300 * S);
        assert_eq!(v, Verdict::Cancelled);
    }
}
