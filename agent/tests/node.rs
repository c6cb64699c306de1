//! Activate, health gate, confirm, fallback and rollback on file-backed slots
//! and a temp ESP, through the job layer with a fake write path (these test
//! the control plane, not the write path). Reboots are disabled.

mod node_fixture;

use agent::config::Config;
use agent::job::{AfterBoot, Agent, AgentError, JobKind, PrepareFn};
use agent::node::{self, NodeError, Refusal};
use agent::prepare::{PrepareError, PrepareRequest, Prepared, Tls};
use agent::progress::Progress;
use agent::status;
use bootctl::record::{self, SlotRecord, SlotState};
use bootctl::store::Esp;
use bootctl::{AbState, Slot};
use node_fixture::Node;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Stands in for the write path: records the inactive slot as `written`.
fn fake_prepare() -> PrepareFn {
    Box::new(
        |cfg: &Config, req: &PrepareRequest, _: &Progress, _: &AtomicBool| {
            let slot = cfg.inactive();
            let rec = SlotRecord {
                slot,
                state: SlotState::Written,
                version: req.version.clone().unwrap_or_default(),
                digest: req.digest.clone(),
                size: 4096,
                written_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64,
                confirm: None,
                source: String::new(),
                verity: None,
            };
            record::write(&cfg.state_dir, &rec)
                .map_err(|source| PrepareError::Record { slot, source })?;
            Ok(Prepared {
                slot,
                version: rec.version,
                digest: rec.digest,
                size: rec.size,
                source: String::new(),
                verity: None,
            })
        },
    )
}

fn request(version: &str) -> PrepareRequest {
    PrepareRequest {
        url: format!("file:///bundles/os-{version}.img.zst"),
        digest: format!("blake3:{}", blake3::hash(version.as_bytes()).to_hex()),
        version: Some(version.into()),
        tls: Tls::default(),
        allow_http: false,
    }
}

fn agent(node: &Node, booted: Slot) -> Agent {
    Agent::new(node.config(booted), fake_prepare())
}

fn refusal(e: AgentError) -> Refusal {
    match e {
        AgentError::Node(NodeError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Node booted from A with version 2 prepared in B and armed.
fn armed_node() -> Node {
    let node = Node::new();
    let a = agent(&node, Slot::A);
    a.prepare_upgrade(&request("2")).unwrap();
    let (state, _guard) = a.upgrade().unwrap();
    assert_eq!(state.trial, Some(Slot::B));
    node
}

#[test]
fn upgrade_arms_what_the_inactive_slots_record_says_was_written() {
    let node = Node::new();
    let a = agent(&node, Slot::A);
    assert_eq!(
        refusal(a.upgrade().err().unwrap()),
        Refusal::NothingPrepared
    );
    a.prepare_upgrade(&request("2")).unwrap();
    // The record, not memory, says what is ready: one that no longer says
    // `written` (rewritten, failed) has nothing to arm.
    for state in [SlotState::Empty, SlotState::Failed, SlotState::Good] {
        node.set_record(Slot::B, state, "2");
        assert_eq!(
            refusal(a.upgrade().err().unwrap()),
            Refusal::NothingPrepared,
            "{state:?}"
        );
    }
    assert_eq!(node.ab().trial, None);
    a.prepare_upgrade(&request("2")).unwrap();
    let (state, guard) = a.upgrade().unwrap();
    drop(guard);
    let mut expected = AbState::new(Slot::A);
    expected.arm_trial(Slot::B, 3).unwrap();
    assert_eq!((state, node.ab()), (expected, expected));
    // A repeated upgrade (the proxy retrying) is harmless.
    let (again, _guard) = a.upgrade().unwrap();
    assert_eq!(again, expected);
}

#[test]
fn an_agent_restarted_after_prepare_arms_the_prepared_slot() {
    let node = Node::new();
    let first = agent(&node, Slot::A);
    first.prepare_upgrade(&request("2")).unwrap();
    drop(first);
    // A new process: nothing in memory, the record on PERSIST.
    let second = agent(&node, Slot::A);
    let (state, _guard) = second.upgrade().unwrap();
    assert_eq!(state.trial, Some(Slot::B));
    assert_eq!(node.record(Slot::B).version, "2");
}

#[test]
fn a_refused_prepare_leaves_the_earlier_preparation_armable() {
    let node = Node::new();
    let a = agent(&node, Slot::A);
    a.prepare_upgrade(&request("2")).unwrap();
    // Busy: another job holds the node (here: a second agent's job guard).
    let other = agent(&node, Slot::A);
    let guard = other.begin(JobKind::Configure, "x".into()).unwrap();
    let err = a.prepare_upgrade(&request("3")).unwrap_err();
    assert!(matches!(err, AgentError::Busy(_)), "{err}");
    drop(guard);
    let (state, _guard) = a.upgrade().unwrap();
    assert_eq!(state.trial, Some(Slot::B));
    assert_eq!(node.record(Slot::B).version, "2");
}

#[test]
fn no_write_into_an_armed_or_committed_slot() {
    let node = armed_node();
    let a = agent(&node, Slot::A);
    let err = a.prepare_upgrade(&request("3")).unwrap_err();
    assert_eq!(refusal(err), Refusal::TrialArmed { trial: Slot::B });
    // Booted on trial: A is the fallback and must not be written.
    let b = agent(&node, Slot::B);
    let err = b.prepare_upgrade(&request("3")).unwrap_err();
    assert_eq!(refusal(err), Refusal::BootedOnTrial { slot: Slot::B });
    assert_eq!(node.record(Slot::A).state, SlotState::Good);
}

#[test]
fn healthy_trial_is_confirmed() {
    let node = armed_node();
    node.add_check("10-ok", "test \"$OS_AGENT_SLOT\" = B");
    node.add_check("20-ok", "exit 0");
    let b = agent(&node, Slot::B);
    assert_eq!(b.after_boot().unwrap(), AfterBoot::Confirmed(Slot::B));
    assert_eq!(node.ab(), AbState::new(Slot::B));
    assert_eq!(node.record(Slot::B).state, SlotState::Good);
    // Nothing left to do on the next start.
    assert_eq!(b.after_boot().unwrap(), AfterBoot::NoTrial);
}

#[test]
fn failed_check_marks_the_trial_failed_and_is_reported() {
    let node = armed_node();
    node.add_check("10-ok", "exit 0");
    node.add_check("20-kubelet", "exit 3");
    node.add_check("30-never-runs", "touch \"$0.ran\"");
    let b = agent(&node, Slot::B);
    let AfterBoot::Failed { slot, reason } = b.after_boot().unwrap() else {
        panic!("the gate should fail");
    };
    assert_eq!(slot, Slot::B);
    assert!(
        reason.contains("20-kubelet") && reason.contains("3"),
        "{reason}"
    );
    assert!(!node.health.join("30-never-runs.ran").exists());
    let ab = node.ab();
    assert_eq!(
        (ab.active, ab.trial, ab.fail),
        (Slot::A, None, Some(Slot::B))
    );
    assert_eq!(node.record(Slot::B).state, SlotState::Failed);

    // Back on A: the fallback is reported with the version and the reason.
    let a = agent(&node, Slot::A);
    assert_eq!(a.after_boot().unwrap(), AfterBoot::NoTrial);
    let report = status::report(&a).unwrap();
    let f = report.last_failure.unwrap();
    assert_eq!((f.slot, f.version.as_deref()), (Slot::B, Some("2")));
    assert_eq!(f.reason, reason);
    let err = refusal(a.rollback().err().unwrap());
    assert_eq!(
        err.to_string(),
        "slot B holds version 2, whose trial boot failed"
    );
}

#[test]
fn hung_check_is_killed_with_what_it_started() {
    let node = armed_node();
    let pidfile = node.dir.path().join("grandchild.pid");
    node.add_check(
        "10-hang",
        &format!("sleep 60 & echo $! > {}\nwait", pidfile.display()),
    );
    let mut cfg = node.config(Slot::B);
    cfg.check_timeout = Duration::from_secs(1);
    let b = Agent::new(cfg, fake_prepare());
    let start = Instant::now();
    let AfterBoot::Failed { reason, .. } = b.after_boot().unwrap() else {
        panic!("a hung check fails the gate");
    };
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(reason.contains("within 1 s"), "{reason}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // SIGKILL is delivered asynchronously: on a loaded machine the grandchild
    // may still be scheduled for a moment after the gate returned (seen once
    // in `make test`). Gone, or a zombie waiting for init: not running.
    let dead = || {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map_or(true, |s| s.contains(") Z ") || s.contains(") X "))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dead(),
        "grandchild alive 5 s after the gate killed its check"
    );
}

#[test]
fn deadline_bounds_all_checks_together() {
    let node = armed_node();
    node.add_check("10-slow", "sleep 1");
    node.add_check("20-slow", "sleep 5");
    let mut cfg = node.config(Slot::B);
    cfg.health_deadline = Duration::from_secs(2);
    let b = Agent::new(cfg, fake_prepare());
    let AfterBoot::Failed { reason, .. } = b.after_boot().unwrap() else {
        panic!("the deadline fails the gate");
    };
    assert!(
        reason.contains("deadline of 2 s") && reason.contains("20-slow"),
        "{reason}"
    );
}

#[test]
fn grub_fallback_is_recorded_once_and_never_blames_a_newer_image() {
    let node = armed_node();
    // GRUB used up the tries: trial cleared, failure recorded, A boots.
    Esp::new(&node.esp)
        .update(|s| s.mark_failed(Slot::B))
        .unwrap();
    let a = agent(&node, Slot::A);
    assert_eq!(a.after_boot().unwrap(), AfterBoot::NoTrial);
    assert_eq!(node.record(Slot::B).state, SlotState::Failed);
    let f = status::report(&a).unwrap().last_failure.unwrap();
    assert_eq!(f.version.as_deref(), Some("2"));
    assert!(f.reason.contains("GRUB used up its tries"), "{}", f.reason);
    // A newer image written into B, then the agent restarts before arming it.
    a.prepare_upgrade(&request("3")).unwrap();
    assert_eq!(a.after_boot().unwrap(), AfterBoot::NoTrial);
    assert_eq!(node.record(Slot::B).state, SlotState::Written);
    let (state, _guard) = a.upgrade().unwrap();
    assert_eq!((state.trial, state.fail), (Some(Slot::B), None));
}

#[test]
fn committed_slot_still_written_becomes_good() {
    // os-init confirmed B at boot; the record still says written.
    let node = armed_node();
    Esp::new(&node.esp).update(|s| s.confirm(Slot::B)).unwrap();
    let b = agent(&node, Slot::B);
    assert_eq!(b.after_boot().unwrap(), AfterBoot::NoTrial);
    assert_eq!(node.record(Slot::B).state, SlotState::Good);
}

#[test]
fn rollback_needs_a_good_other_slot() {
    let node = Node::new();
    let a = agent(&node, Slot::A);
    let err = refusal(a.rollback().err().unwrap());
    assert_eq!(err.to_string(), "slot B holds no image");
    node.set_record(Slot::B, SlotState::Written, "3");
    let err = refusal(a.rollback().err().unwrap());
    assert_eq!(
        err.to_string(),
        "slot B holds version 3, which never completed a boot"
    );
    node.set_record(Slot::B, SlotState::Good, "0.9");
    let (slot, _guard) = a.rollback().unwrap();
    assert_eq!(slot, Slot::B);
    assert_eq!(node.ab(), AbState::new(Slot::B));
}

#[test]
fn a_jobs_detail_from_a_request_stays_one_line_in_the_lock_file_and_status() {
    let node = Node::new();
    let (first, second) = (agent(&node, Slot::A), agent(&node, Slot::A));
    // An image URL is checked for control characters by prepare, after the
    // job (and its lock file line) began.
    let _guard = first
        .begin(
            JobKind::Prepare,
            "http://x/\nos-agent: slot B confirmed\u{1b}[2J".into(),
        )
        .unwrap();
    let AgentError::Busy(m) = second.rollback().err().unwrap() else {
        panic!("busy expected");
    };
    assert!(!m.contains(['\n', '\u{1b}']), "{m:?}");
    assert!(
        m.contains(r"http://x/\nos-agent: slot B confirmed\u{1b}[2J"),
        "{m}"
    );
    let other = second.other_holder().unwrap();
    assert!(!other.contains(['\n', '\u{1b}']), "{other:?}");
}

#[test]
fn manual_confirm_commits_the_booted_trial() {
    let node = armed_node();
    let b = agent(&node, Slot::B);
    assert_eq!(b.confirm().unwrap(), bootctl::state::Confirmed::Committed);
    assert_eq!(node.ab(), AbState::new(Slot::B));
    assert_eq!(node.record(Slot::B).state, SlotState::Good);
    // Confirming from the slot that is not on trial is refused by bootctl.
    let a = agent(&node, Slot::A);
    assert!(a.confirm().is_err());
}

#[test]
fn one_job_per_node_across_agents() {
    let node = Node::new();
    let first = agent(&node, Slot::A);
    let second = agent(&node, Slot::A);
    let guard = first.begin(JobKind::Prepare, "file:///x".into()).unwrap();
    let AgentError::Busy(m) = first.begin(JobKind::Rollback, String::new()).err().unwrap() else {
        panic!("busy expected");
    };
    assert!(m.contains("prepare (file:///x)"), "{m}");
    // Another agent (the CLI, in real life another process) is kept out by the lock.
    let AgentError::Busy(m) = second.rollback().err().unwrap() else {
        panic!("busy expected");
    };
    assert!(m.contains("runs prepare file:///x"), "{m}");
    assert!(second.other_holder().unwrap().contains("prepare"));
    assert_eq!(first.cancel(), Some(JobKind::Prepare));
    assert!(guard.job.cancelled());
    drop(guard);
    assert_eq!(first.cancel(), None);
    assert!(second.begin(JobKind::Confirm, String::new()).is_ok());
}

#[test]
fn trial_file_lives_under_the_agent_state_dir() {
    let node = armed_node();
    let cfg = node.config(Slot::A);
    let trial = node::read_trial(&cfg).unwrap().unwrap();
    assert_eq!((trial.slot, trial.version.as_str()), (Slot::B, "2"));
    assert!(node.state.join("os-agent/trial").exists());
}

#[test]
fn a_huge_trial_file_is_ignored_without_being_read_whole() {
    let node = armed_node();
    let cfg = node.config(Slot::A);
    // A corrupt PERSIST: the trial file is 64 GiB of zeros (sparse). Read
    // whole, it would exhaust memory; it is refused after its first 64 KiB.
    let path = node.state.join("os-agent/trial");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    assert_eq!(node::read_trial(&cfg).unwrap(), None);
}
