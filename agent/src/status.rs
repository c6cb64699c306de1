//! What `status` reports, for JSON-RPC and the CLI alike: the booted slot, the
//! A/B env, both slot records, the last failed trial, and the running job.

use crate::job::{Agent, AgentError, Job};
use crate::node::{self, Failure, NodeView};
use crate::progress::Snapshot;
use crate::trust::Trust;
use bootctl::grub_model::Source;
use bootctl::record::{self, RescueNote};
use bootctl::Slot;
use std::fmt::Write;
use wire::rpc as msg;
use wire::verity::{BootCheck, CheckState};

#[derive(Debug, Clone)]
pub struct JobReport {
    pub kind: &'static str,
    pub detail: String,
    pub step: String,
    pub elapsed_s: u64,
    pub progress: Snapshot,
}

impl JobReport {
    pub fn of(j: &Job) -> JobReport {
        JobReport {
            kind: j.kind.as_str(),
            detail: j.detail.clone(),
            step: j.step(),
            elapsed_s: j.elapsed().as_secs(),
            progress: j.progress.snapshot(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub view: NodeView,
    pub last_failure: Option<Failure>,
    /// Why os-init handed the boot to the other slot, while that note stands.
    pub rescue: Option<RescueNote>,
    pub job: Option<JobReport>,
    /// The lock holder's line when another process runs a job.
    pub other_job: Option<String>,
    /// Which signing keys the node trusts.
    pub trust: Trust,
    /// os-init's dm-verity report on the booted root: `Err` when it is
    /// there but unreadable.
    pub verity: Option<Result<BootCheck, String>>,
}

pub fn report(agent: &Agent) -> Result<Report, AgentError> {
    let cfg = agent.config();
    let view = node::load(cfg)?;
    let trial = node::read_trial(cfg)?;
    let job = agent.current_job().map(|j| JobReport::of(&j));
    // A status must not fail because of an unreadable note: report none.
    let rescue = record::read_rescue(&cfg.state_dir).unwrap_or_else(|e| {
        log::warn!("{e}");
        None
    });
    Ok(Report {
        last_failure: node::last_failure(&view, trial.as_ref()),
        rescue,
        view,
        job,
        other_job: agent.other_holder(),
        trust: Trust::load(&cfg.keys_dirs),
        verity: read_boot_check(&cfg.boot_check),
    })
}

/// os-init's report; `None` when there is none (an os-init before verity).
fn read_boot_check(path: &std::path::Path) -> Option<Result<BootCheck, String>> {
    let max = wire::verity::MAX_BOOT_CHECK_BYTES as u64;
    let text = match bootctl::small_file::read(path, max) {
        Ok(text) => text?,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
    };
    Some(BootCheck::parse(&text).map_err(|e| format!("{}: {e}", path.display())))
}

fn source_str(s: Source) -> &'static str {
    match s {
        Source::Copy1 => "1",
        Source::Copy2 => "2",
        Source::Default => "default",
    }
}

impl JobReport {
    fn to_wire(&self) -> msg::JobStatus {
        let p = &self.progress;
        msg::JobStatus {
            kind: self.kind.to_owned(),
            detail: self.detail.clone(),
            step: self.step.clone(),
            elapsed_s: self.elapsed_s,
            phase: p.phase.as_str().to_owned(),
            bytes: p.bytes,
            total: p.total,
            fetched: p.fetched,
            percent: p.percent,
            rate: p.rate,
        }
    }
}

impl Report {
    /// The `status` result ([`wire::rpc::Status`]).
    pub fn to_wire(&self) -> msg::Status {
        let v = &self.view;
        msg::Status {
            booted: v.booted,
            active: v.ab.active,
            trial: v.ab.trial,
            tries: v.ab.tries,
            fail: v.ab.fail,
            on_trial: v.ab.trial == Some(v.booted),
            source: source_str(v.source).to_owned(),
            slots: msg::Slots {
                a: v.record(Slot::A).clone(),
                b: v.record(Slot::B).clone(),
            },
            last_failure: self.last_failure.as_ref().map(|f| msg::LastFailure {
                slot: f.slot,
                version: f.version.clone(),
                reason: f.reason.clone(),
            }),
            rescue: self.rescue.clone(),
            job: self.job.as_ref().map(JobReport::to_wire),
            other_job: self.other_job.clone(),
            trust: Some(self.trust.report()),
            verity: self.verity.as_ref().and_then(|v| v.as_ref().ok()).cloned(),
        }
    }

    /// The same, for people.
    pub fn to_text(&self) -> String {
        let v = &self.view;
        let mut s = String::new();
        let trial = match v.ab.trial {
            Some(t) if t == v.booted => format!(" (on trial, {} tries left)", v.ab.tries),
            Some(t) => format!("; slot {t} armed for a trial, {} tries left", v.ab.tries),
            None => String::new(),
        };
        let _ = writeln!(s, "booted:     {}{trial}", v.booted);
        let _ = writeln!(
            s,
            "committed:  {} (env copy {})",
            v.ab.active,
            source_str(v.source)
        );
        for slot in Slot::ALL {
            let r = v.record(slot);
            let _ = writeln!(
                s,
                "slot {slot}:     {:<8} version {:<10} {} ({} bytes, written at {})",
                r.state.as_str(),
                if r.version.is_empty() {
                    "-"
                } else {
                    &r.version
                },
                if r.digest.is_empty() { "-" } else { &r.digest },
                r.size,
                r.written_at
            );
            if !r.source.is_empty() {
                let _ = writeln!(s, "            from {}", r.source);
            }
        }
        let _ = match &self.last_failure {
            Some(f) => writeln!(
                s,
                "last failure: slot {} version {}: {}",
                f.slot,
                f.version.as_deref().unwrap_or("unknown"),
                f.reason
            ),
            None => writeln!(s, "last failure: none"),
        };
        if let Some(r) = &self.rescue {
            let _ = writeln!(
                s,
                "rescued:    slot {} could not be used, os-init tried slot {}: {}",
                r.from, r.to, r.reason
            );
        }
        let t = &self.trust;
        let _ = match (t.required(), t.keys.is_empty()) {
            (false, _) => writeln!(
                s,
                "signatures: not checked (no trusted keys installed): any bundle \
                 matching the request's digest is written"
            ),
            (true, false) => writeln!(
                s,
                "signatures: required, trusted keys {}",
                t.keys
                    .iter()
                    .map(|(path, k)| format!("{} ({})", k.id(), path.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (true, true) => writeln!(
                s,
                "signatures: required, but no key is usable: every bundle is refused"
            ),
        };
        for u in &t.unusable {
            let _ = writeln!(s, "            unusable key: {u}");
        }
        let _ = match &self.verity {
            None => writeln!(s, "verity:     no report from os-init"),
            Some(Err(e)) => writeln!(s, "verity:     unreadable report: {e}"),
            Some(Ok(c)) => writeln!(
                s,
                "verity:     slot {} {}{}: {}",
                c.slot,
                c.state.as_str(),
                match c.state {
                    CheckState::Corrupt => " (CORRUPT: its bytes changed after they were written)",
                    CheckState::Unavailable => " (mounted WITHOUT integrity checking)",
                    _ => "",
                },
                c.detail
            ),
        };
        let _ = match (&self.job, &self.other_job) {
            (Some(j), _) => writeln!(s, "job:        {}", progress_line(j)),
            (None, Some(o)) => writeln!(s, "job:        {o}"),
            (None, None) => writeln!(s, "job:        none"),
        };
        s
    }
}

/// One line of job progress, as `status` and the CLI's `upgrade` print it.
pub fn progress_line(j: &JobReport) -> String {
    let p = &j.progress;
    let mut s = format!("{} {}", j.kind, p.phase.as_str());
    if let Some(pct) = p.percent {
        let _ = write!(s, " {pct:.1}%");
    }
    if p.total > 0 {
        let _ = write!(s, " ({} of {} MiB", p.bytes >> 20, p.total >> 20);
        let _ = write!(s, ", {:.1} MiB/s)", p.rate / f64::from(1 << 20));
    }
    if !j.step.is_empty() {
        let _ = write!(s, " {}", j.step);
    }
    if !j.detail.is_empty() {
        let _ = write!(s, " [{}]", j.detail);
    }
    let _ = write!(s, " {} s", j.elapsed_s);
    s
}
