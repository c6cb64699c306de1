//! What `status` reports, for JSON-RPC and the CLI alike: the booted slot, the
//! A/B env, both slot records, the last failed trial, and the running job.

use crate::job::{Agent, AgentError, Job};
use crate::json::{float, object, opt_string, string, uint};
use crate::node::{self, Failure, NodeView};
use crate::progress::Snapshot;
use bootctl::grub_model::Source;
use bootctl::record::{self, RescueNote, SlotRecord};
use bootctl::Slot;
use miniserde::json::Value;
use std::fmt::Write;

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
    })
}

fn source_str(s: Source) -> &'static str {
    match s {
        Source::Copy1 => "1",
        Source::Copy2 => "2",
        Source::Default => "default",
    }
}

fn slot_value(s: Option<Slot>) -> Value {
    opt_string(s.map(Slot::as_str))
}

fn record_json(r: &SlotRecord) -> Value {
    object([
        ("state", string(r.state.as_str())),
        ("version", string(&r.version)),
        ("digest", string(&r.digest)),
        ("size", uint(r.size)),
        ("written_at", uint(r.written_at)),
        ("source", string(&r.source)),
    ])
}

fn job_json(j: &JobReport) -> Value {
    let p = &j.progress;
    object([
        ("kind", string(j.kind)),
        ("detail", string(&j.detail)),
        ("step", string(&j.step)),
        ("elapsed_s", uint(j.elapsed_s)),
        ("phase", string(p.phase.as_str())),
        ("bytes", uint(p.bytes)),
        ("total", uint(p.total)),
        ("fetched", uint(p.fetched)),
        ("percent", p.percent.map_or(Value::Null, float)),
        ("rate", float(p.rate)),
    ])
}

impl Report {
    /// The `status` result object (see rpc.rs for the field list).
    pub fn to_json(&self) -> Value {
        let v = &self.view;
        let failure = self.last_failure.as_ref().map_or(Value::Null, |f| {
            object([
                ("slot", string(f.slot.as_str())),
                ("version", opt_string(f.version.clone())),
                ("reason", string(&f.reason)),
            ])
        });
        object([
            ("booted", string(v.booted.as_str())),
            ("active", string(v.ab.active.as_str())),
            ("trial", slot_value(v.ab.trial)),
            ("tries", uint(v.ab.tries.into())),
            ("fail", slot_value(v.ab.fail)),
            ("on_trial", Value::Bool(v.ab.trial == Some(v.booted))),
            ("source", string(source_str(v.source))),
            (
                "slots",
                object([
                    ("A", record_json(v.record(Slot::A))),
                    ("B", record_json(v.record(Slot::B))),
                ]),
            ),
            ("last_failure", failure),
            (
                "rescue",
                self.rescue.as_ref().map_or(Value::Null, |r| {
                    object([
                        ("from", string(r.from.as_str())),
                        ("to", string(r.to.as_str())),
                        ("reason", string(&r.reason)),
                    ])
                }),
            ),
            ("job", self.job.as_ref().map_or(Value::Null, job_json)),
            ("other_job", opt_string(self.other_job.clone())),
        ])
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
