//! The restart-idempotency table (README.md) as tests: phase × agent state × node → step.

use super::*;
use crate::agent_client::{Job, LastFailure, Slot, Slots};
use operator::crd::{NamespacedName, SysConfig, SysConfigs};

const NEW: &str = "v2";
const OLD: &str = "v1";

fn digest(c: char) -> String {
    format!("blake3:{}", c.to_string().repeat(64))
}

fn rec(state: SlotState, version: &str, d: char) -> SlotRecord {
    SlotRecord {
        slot: Slot::A,
        state,
        version: version.into(),
        digest: digest(d),
        size: 4096,
        written_at: 1,
        confirm: None,
        source: String::new(),
        verity: None,
    }
}

/// Booted and committed A (v1 good); B as given.
fn agent(mut b: SlotRecord) -> AgentStatus {
    b.slot = Slot::B;
    AgentStatus {
        booted: Slot::A,
        active: Slot::A,
        trial: None,
        tries: 0,
        fail: None,
        on_trial: false,
        source: "1".into(),
        slots: Slots {
            a: rec(SlotState::Good, OLD, 'a'),
            b,
        },
        last_failure: None,
        rescue: None,
        job: None,
        other_job: None,
        trust: None,
        verity: None,
    }
}

fn os(opstype: OpsType, version: &str) -> OsSpec {
    serde_json::from_value(serde_json::json!({
        "osversion": version, "maxunavailable": 2, "opstype": opstype,
        "imageurl": "file:///srv/os-v2.img.zst", "checksum": digest('b'), "imagetype": "disk",
    }))
    .unwrap()
}

fn state(nodestatus: NodeStatus, phase: NodePhase, agent: Option<AgentStatus>) -> NodeState {
    let op = match nodestatus {
        NodeStatus::Rollback => OpsType::Rollback,
        NodeStatus::Config => OpsType::Config,
        _ => OpsType::Upgrade,
    };
    let version = if op == OpsType::Rollback { OLD } else { NEW };
    NodeState {
        spec: OsInstanceSpec {
            nodestatus,
            namespacedname: Some(NamespacedName {
                name: "os".into(),
                namespace: "default".into(),
            }),
            ..Default::default()
        },
        status: OsInstanceStatus {
            phase: Some(phase),
            operation: Some(op),
            target_version: Some(version.into()),
            ..Default::default()
        },
        os: Some(os(op, version)),
        namespace: "default".into(),
        node: NodeFacts {
            unschedulable: false,
            cordoned_by_us: false,
            ready: true,
        },
        agent,
        resource_version: Some("7".into()),
    }
}

/// The agent's report of a download a quarter done.
fn prepare_job() -> Job {
    Job {
        kind: "prepare".into(),
        detail: String::new(),
        step: String::new(),
        elapsed_s: 1,
        phase: "downloading".into(),
        bytes: 1,
        total: 4,
        fetched: 1,
        percent: Some(25.0),
        rate: 0.0,
    }
}

fn upgrade(phase: NodePhase, agent: AgentStatus) -> NodeState {
    state(NodeStatus::Upgrade, phase, Some(agent))
}

fn cordoned(mut s: NodeState) -> NodeState {
    s.node.unschedulable = true;
    s.node.cordoned_by_us = true;
    s
}

fn entered(phase: NodePhase) -> impl Fn(&Step) -> bool {
    move |s| matches!(s, Step::Enter { phase: p, .. } if *p == phase)
}

fn is_wait(s: &Step) -> bool {
    matches!(s, Step::Wait(_))
}

fn fail_message(s: &Step) -> &str {
    match s {
        Step::Fail { message } => message,
        other => panic!("expected Fail, got {other:?}"),
    }
}

/// B written with v2 and armed for its trial; A still booted.
fn armed() -> AgentStatus {
    let mut a = agent(rec(SlotState::Written, NEW, 'b'));
    a.trial = Some(Slot::B);
    a.tries = 3;
    a
}

/// Booted B on trial.
fn on_trial() -> AgentStatus {
    let mut a = armed();
    a.booted = Slot::B;
    a.on_trial = true;
    a
}

/// Booted B, committed.
fn committed_new() -> AgentStatus {
    let mut a = agent(rec(SlotState::Good, NEW, 'b'));
    a.booted = Slot::B;
    a.active = Slot::B;
    a
}

/// B's trial fell back: A runs, `ab_fail=B`, the agent knows why.
fn fallen_back(record_state: SlotState) -> AgentStatus {
    let mut a = agent(rec(record_state, NEW, 'b'));
    a.fail = Some(Slot::B);
    a.last_failure = Some(LastFailure {
        slot: Slot::B,
        version: Some(NEW.into()),
        reason: "health check kubelet failed".into(),
    });
    a
}

#[test]
fn idle_node_does_nothing_and_lifts_only_its_own_cordon() {
    let mut s = state(NodeStatus::Idle, NodePhase::Idle, None);
    assert_eq!(next_step(&s), Step::Idle);
    s.node.unschedulable = true; // an admin's cordon
    assert_eq!(next_step(&s), Step::Idle);
    s.node.cordoned_by_us = true;
    assert_eq!(next_step(&s), Step::Uncordon);
}

#[test]
fn operator_stand_down_while_active_uncordons_and_stops() {
    for phase in [NodePhase::Draining, NodePhase::Rebooting, NodePhase::Failed] {
        let mut s = cordoned(upgrade(phase, armed()));
        s.spec.nodestatus = NodeStatus::Idle;
        assert_eq!(next_step(&s), Step::Uncordon, "{phase:?}");
        s.node = NodeFacts::default();
        assert_eq!(next_step(&s), Step::Idle, "{phase:?}");
    }
}

#[test]
fn finished_operation_uncordons_then_resets_the_spec() {
    for phase in [NodePhase::Succeeded, NodePhase::Failed] {
        let s = cordoned(upgrade(phase, committed_new()));
        assert_eq!(next_step(&s), Step::Uncordon);
        let s = upgrade(phase, committed_new());
        assert_eq!(next_step(&s), Step::ResetSpec);
    }
}

#[test]
fn spec_before_the_operator_assigned_waits() {
    let mut s = upgrade(NodePhase::Assigned, agent(rec(SlotState::Empty, "", 'x')));
    s.status.phase = None;
    assert!(is_wait(&next_step(&s)));
}

#[test]
fn missing_os_or_bad_checksum_fails() {
    let mut s = upgrade(NodePhase::Assigned, agent(rec(SlotState::Empty, "", 'x')));
    s.os = None;
    assert!(fail_message(&next_step(&s)).contains("default/os"));
    let mut s = upgrade(NodePhase::Assigned, agent(rec(SlotState::Empty, "", 'x')));
    s.os.as_mut().unwrap().checksum = "md5:1234".into();
    assert!(fail_message(&next_step(&s)).contains("unknown digest algorithm"));
}

#[test]
fn unreachable_agent_waits_in_every_active_phase() {
    for phase in [
        NodePhase::Assigned,
        NodePhase::Preparing,
        NodePhase::Draining,
        NodePhase::Rebooting,
        NodePhase::Confirming,
        NodePhase::Configuring,
    ] {
        let s = state(NodeStatus::Upgrade, phase, None);
        assert!(is_wait(&next_step(&s)), "{phase:?}");
    }
}

#[test]
fn assigned_only_claims_then_preparing_applies_upgradeconfigs_first() {
    let empty = agent(rec(SlotState::Empty, "", 'x'));
    let mut s = upgrade(NodePhase::Assigned, empty);
    assert!(entered(NodePhase::Preparing)(&next_step(&s)));
    let configs = SysConfigs {
        version: Some("u1".into()),
        configs: Some(vec![SysConfig {
            model: Some("kernel.sysctl".into()),
            ..Default::default()
        }]),
    };
    s.os.as_mut().unwrap().upgradeconfigs = Some(configs.clone());
    // Settings to apply do not act on the node before the operation is claimed.
    assert!(entered(NodePhase::Preparing)(&next_step(&s)));
    s.status.phase = Some(NodePhase::Preparing);
    assert_eq!(next_step(&s), Step::ApplyUpgradeConfigs);
    // A download in progress (a restarted proxy) is followed, not interrupted.
    let mut busy = s.clone();
    busy.agent.as_mut().unwrap().job = Some(prepare_job());
    assert_eq!(next_step(&busy), Step::WatchPrepare);
    s.status.upgradeconfigs = Some(configs);
    assert!(
        matches!(next_step(&s), Step::Prepare(_)),
        "{:?}",
        next_step(&s)
    );
}

#[test]
fn preparing_downloads_only_what_is_not_verified_yet() {
    let s = upgrade(NodePhase::Preparing, agent(rec(SlotState::Empty, "", 'x')));
    let Step::Prepare(req) = next_step(&s) else {
        panic!("expected Prepare, got {:?}", next_step(&s))
    };
    assert_eq!(req.version, NEW);
    assert_eq!(req.check_sum, digest('b'));
    assert_eq!(req.image_type, "disk");
    assert_eq!(req.image_url, "file:///srv/os-v2.img.zst");
    // Another image, or the same version with another digest: write again.
    let s = upgrade(
        NodePhase::Preparing,
        agent(rec(SlotState::Written, NEW, 'c')),
    );
    assert!(matches!(next_step(&s), Step::Prepare(_)));
    // Verified with the target's digest and version: straight to the drain.
    let s = upgrade(
        NodePhase::Preparing,
        agent(rec(SlotState::Written, NEW, 'b')),
    );
    assert!(entered(NodePhase::Draining)(&next_step(&s)));
}

#[test]
fn an_image_from_a_registry_is_recognised_by_its_manifest_digest() {
    let manifest = format!("sha256:{}", "d".repeat(64));
    let mut s = upgrade(
        NodePhase::Preparing,
        agent(rec(SlotState::Written, NEW, 'b')),
    );
    s.os.as_mut().unwrap().imagetype = operator::crd::ImageType::Docker;
    s.os.as_mut().unwrap().containerimage = "r.example/os:v2".into();
    s.os.as_mut().unwrap().checksum = manifest.clone();
    // Written from another manifest (or from a URL): write again.
    let mut other = rec(SlotState::Written, NEW, 'b');
    other.source = format!("oci://r.example/os@sha256:{}", "e".repeat(64));
    s.agent = Some(agent(other));
    let Step::Prepare(req) = next_step(&s) else {
        panic!("expected Prepare, got {:?}", next_step(&s))
    };
    assert_eq!(
        (req.image_type.as_str(), req.container_image.as_str()),
        ("docker", "r.example/os:v2")
    );
    // The slot records the manifest it came from: straight to the drain.
    let mut held = rec(SlotState::Written, NEW, 'b');
    held.source = format!("oci://r.example/os@{manifest}");
    s.agent = Some(agent(held));
    assert!(entered(NodePhase::Draining)(&next_step(&s)));
}

#[test]
fn a_container_image_pinned_by_digest_needs_no_checksum() {
    let manifest = format!("sha256:{}", "d".repeat(64));
    let mut s = upgrade(NodePhase::Preparing, agent(rec(SlotState::Empty, "", 'x')));
    let os = s.os.as_mut().unwrap();
    os.imagetype = operator::crd::ImageType::Containerd;
    os.containerimage = format!("r.example/os@{manifest}");
    os.checksum = String::new();
    let Step::Prepare(req) = next_step(&s) else {
        panic!("expected Prepare, got {:?}", next_step(&s))
    };
    assert_eq!(req.check_sum, "");
    let mut held = rec(SlotState::Written, NEW, 'b');
    held.source = format!("oci://r.example/os@{manifest}");
    s.agent = Some(agent(held));
    assert!(entered(NodePhase::Draining)(&next_step(&s)));
}

#[test]
fn preparing_follows_a_running_write_and_waits_for_other_jobs() {
    let mut a = agent(rec(SlotState::Empty, "", 'x'));
    a.job = Some(prepare_job());
    assert_eq!(
        next_step(&upgrade(NodePhase::Preparing, a.clone())),
        Step::WatchPrepare
    );
    a.job.as_mut().unwrap().kind = "boot-check".into();
    assert!(is_wait(&next_step(&upgrade(
        NodePhase::Preparing,
        a.clone()
    ))));
    a.job = None;
    a.other_job = Some("os-agent upgrade (pid 7)".into());
    assert!(is_wait(&next_step(&upgrade(NodePhase::Preparing, a))));
}

#[test]
fn preparing_after_an_earlier_failed_try_of_the_same_version_prepares_again() {
    // The record says failed: the slot must be written afresh, not trusted.
    let s = upgrade(NodePhase::Preparing, fallen_back(SlotState::Failed));
    assert!(matches!(next_step(&s), Step::Prepare(_)));
}

#[test]
fn draining_cordons_once_then_drains_then_activates() {
    let prepared = agent(rec(SlotState::Written, NEW, 'b'));
    let s = upgrade(NodePhase::Draining, prepared.clone());
    assert_eq!(next_step(&s), Step::Cordon);
    let s = cordoned(upgrade(NodePhase::Draining, prepared.clone()));
    assert_eq!(next_step(&s), Step::Drain(AfterDrain::Activate));
    // An admin's cordon: no cordon of ours, the drain still runs.
    let mut s = upgrade(NodePhase::Draining, prepared);
    s.node.unschedulable = true;
    assert_eq!(next_step(&s), Step::Drain(AfterDrain::Activate));
}

#[test]
fn draining_with_the_slot_overwritten_prepares_again() {
    let s = cordoned(upgrade(
        NodePhase::Draining,
        agent(rec(SlotState::Empty, "", 'x')),
    ));
    assert!(entered(NodePhase::Preparing)(&next_step(&s)));
}

#[test]
fn activation_done_before_the_phase_was_written_is_recognised() {
    // Crash between the agent's `upgrade` answer and the Rebooting write.
    let s = cordoned(upgrade(NodePhase::Draining, armed()));
    assert!(entered(NodePhase::Rebooting)(&next_step(&s)));
    // ... or the node rebooted at once, before anything was written.
    let s = cordoned(upgrade(NodePhase::Draining, on_trial()));
    assert!(entered(NodePhase::Confirming)(&next_step(&s)));
}

#[test]
fn rebooting_waits_for_the_reboot_then_follows_the_trial() {
    let s = cordoned(upgrade(NodePhase::Rebooting, armed()));
    assert!(is_wait(&next_step(&s)));
    let s = cordoned(upgrade(NodePhase::Rebooting, on_trial()));
    assert!(entered(NodePhase::Confirming)(&next_step(&s)));
    let s = cordoned(upgrade(NodePhase::Rebooting, committed_new()));
    assert!(entered(NodePhase::Configuring)(&next_step(&s)));
}

#[test]
fn confirming_waits_for_the_gate_and_for_node_ready() {
    let s = cordoned(upgrade(NodePhase::Confirming, on_trial()));
    assert!(is_wait(&next_step(&s)));
    let mut s = cordoned(upgrade(NodePhase::Confirming, committed_new()));
    s.node.ready = false;
    assert!(is_wait(&next_step(&s)));
    s.node.ready = true;
    assert!(entered(NodePhase::Configuring)(&next_step(&s)));
}

#[test]
fn fallback_fails_with_version_and_reason() {
    for (phase, record_state) in [
        (NodePhase::Rebooting, SlotState::Written),
        (NodePhase::Rebooting, SlotState::Failed),
        (NodePhase::Confirming, SlotState::Failed),
        (NodePhase::Draining, SlotState::Failed),
    ] {
        let s = cordoned(upgrade(phase, fallen_back(record_state)));
        let m = fail_message(&next_step(&s)).to_owned();
        assert!(
            m.starts_with("trial boot of v2 failed: health check kubelet failed"),
            "{phase:?}: {m}"
        );
        assert!(m.contains("runs slot A (v1)"), "{m}");
    }
}

#[test]
fn a_gate_failure_is_reported_only_once_the_old_slot_runs() {
    // Booted B, the gate failed it: B's record failed, A committed, the reboot is pending.
    let mut a = fallen_back(SlotState::Failed);
    a.booted = Slot::B;
    for phase in [NodePhase::Rebooting, NodePhase::Confirming] {
        let s = cordoned(upgrade(phase, a.clone()));
        let Step::Wait(why) = next_step(&s) else {
            panic!("expected Wait, got {:?}", next_step(&s))
        };
        assert_eq!(
            why,
            "the trial of v2 failed; waiting for the reboot into slot A"
        );
    }
    let s = cordoned(upgrade(
        NodePhase::Confirming,
        fallen_back(SlotState::Failed),
    ));
    assert!(fail_message(&next_step(&s)).starts_with("trial boot of v2 failed"));
}

#[test]
fn stale_fail_flag_before_arming_is_not_a_failure() {
    // `ab_fail=B` left from an earlier try of v2; B re-prepared (written): drain and arm.
    let s = cordoned(upgrade(
        NodePhase::Draining,
        fallen_back(SlotState::Written),
    ));
    assert_eq!(next_step(&s), Step::Drain(AfterDrain::Activate));
}

#[test]
fn rebooting_with_the_trial_gone_fails_rather_than_arming_again() {
    let s = cordoned(upgrade(
        NodePhase::Rebooting,
        agent(rec(SlotState::Written, NEW, 'b')),
    ));
    assert!(fail_message(&next_step(&s)).contains("was not armed"));
}

#[test]
fn configuring_applies_sysconfigs_once_then_succeeds_with_the_booted_version() {
    let mut s = cordoned(upgrade(NodePhase::Configuring, committed_new()));
    let configs = SysConfigs {
        version: Some("s1".into()),
        configs: Some(vec![SysConfig::default()]),
    };
    s.os.as_mut().unwrap().sysconfigs = Some(configs.clone());
    assert_eq!(next_step(&s), Step::Configure);
    s.status.sysconfigs = Some(configs);
    assert_eq!(
        next_step(&s),
        Step::Succeed {
            current_version: NEW.into()
        }
    );
    // Settings with no configs are recorded, not sent.
    s.os.as_mut().unwrap().sysconfigs = Some(SysConfigs {
        version: Some("s2".into()),
        configs: None,
    });
    assert!(matches!(next_step(&s), Step::Succeed { .. }));
}

#[test]
fn rollback_checks_the_other_slot_before_cordoning() {
    let mut other_good_v2 = committed_new();
    other_good_v2.slots.a = rec(SlotState::Good, OLD, 'a');
    let s = state(
        NodeStatus::Rollback,
        NodePhase::Assigned,
        Some(other_good_v2),
    );
    assert!(entered(NodePhase::Draining)(&next_step(&s)));

    let mut bad = committed_new();
    bad.slots.a = rec(SlotState::Failed, OLD, 'a');
    let s = state(NodeStatus::Rollback, NodePhase::Assigned, Some(bad));
    assert!(fail_message(&next_step(&s)).starts_with("cannot roll back to v1: slot A is Failed"));
}

#[test]
fn rollback_drains_commits_and_lands_on_the_other_slot() {
    let running_new = committed_new();
    let s = state(
        NodeStatus::Rollback,
        NodePhase::Draining,
        Some(running_new.clone()),
    );
    assert_eq!(next_step(&s), Step::Cordon);
    let s = cordoned(s);
    assert_eq!(next_step(&s), Step::Drain(AfterDrain::Rollback));

    let mut rolled = running_new;
    rolled.active = Slot::A; // committed, not rebooted yet
    for phase in [NodePhase::Draining, NodePhase::Rebooting] {
        let s = cordoned(state(NodeStatus::Rollback, phase, Some(rolled.clone())));
        let step = next_step(&s);
        assert!(
            entered(NodePhase::Rebooting)(&step) || is_wait(&step),
            "{phase:?}: {step:?}"
        );
    }
    let s = cordoned(state(
        NodeStatus::Rollback,
        NodePhase::Rebooting,
        Some(agent(rec(SlotState::Good, NEW, 'b'))),
    ));
    assert!(entered(NodePhase::Configuring)(&next_step(&s)));
}

#[test]
fn rollback_that_did_not_take_fails() {
    let s = cordoned(state(
        NodeStatus::Rollback,
        NodePhase::Rebooting,
        Some(committed_new()),
    ));
    assert!(fail_message(&next_step(&s)).starts_with("the rollback did not take"));
}

#[test]
fn config_goes_straight_to_configuring_and_never_cordons() {
    let mut s = state(
        NodeStatus::Config,
        NodePhase::Assigned,
        Some(agent(rec(SlotState::Empty, "", 'x'))),
    );
    assert!(entered(NodePhase::Configuring)(&next_step(&s)));
    s.status.phase = Some(NodePhase::Configuring);
    s.os.as_mut().unwrap().sysconfigs = Some(SysConfigs {
        version: Some("c1".into()),
        configs: Some(vec![SysConfig::default()]),
    });
    assert_eq!(next_step(&s), Step::Configure);
}

#[test]
fn settings_written_into_the_osinstance_are_not_applied() {
    // A node (or anyone with its token) writes settings into its own OSInstance; the OS
    // has none: nothing is configured.
    let mut s = cordoned(upgrade(NodePhase::Configuring, committed_new()));
    s.spec.sysconfigs = Some(SysConfigs {
        version: Some("evil".into()),
        configs: Some(vec![SysConfig::default()]),
    });
    s.spec.upgradeconfigs = s.spec.sysconfigs.clone();
    assert!(
        matches!(next_step(&s), Step::Succeed { .. }),
        "{:?}",
        next_step(&s)
    );
    let mut s = upgrade(NodePhase::Assigned, agent(rec(SlotState::Empty, "", 'x')));
    s.spec.upgradeconfigs = Some(SysConfigs {
        version: Some("evil".into()),
        configs: Some(vec![SysConfig::default()]),
    });
    assert!(
        entered(NodePhase::Preparing)(&next_step(&s)),
        "{:?}",
        next_step(&s)
    );
}

#[test]
fn an_os_outside_the_operators_namespace_is_refused() {
    let mut s = upgrade(NodePhase::Preparing, agent(rec(SlotState::Empty, "", 'x')));
    s.spec.namespacedname = Some(NamespacedName {
        name: "os".into(),
        namespace: "attacker".into(),
    });
    let step = next_step(&s);
    let msg = fail_message(&step);
    assert!(msg.contains("names the OS attacker/os"), "{msg}");
    assert!(msg.contains("taken from default only"), "{msg}");
}

/// The OS now targets v3 (osversion, checksum and URL all the new image's) while this node's
/// upgrade to v2 is in flight.
fn superseded(mut s: NodeState) -> NodeState {
    let os = s.os.as_mut().unwrap();
    os.osversion = "v3".into();
    os.checksum = digest('c');
    os.imageurl = "file:///srv/os-v3.img.zst".into();
    s
}

#[test]
fn an_upgrade_superseded_before_its_reboot_stops_and_never_writes_the_new_target_under_the_old_name(
) {
    let empty = agent(rec(SlotState::Empty, "", 'x'));
    let prepared = agent(rec(SlotState::Written, NEW, 'b'));
    for (phase, agent) in [
        (NodePhase::Assigned, empty.clone()),
        // Before: a Prepare of v3's image recorded as v2.
        (NodePhase::Preparing, empty),
        // Before: "the prepared slot changed; preparing again" (v3's digest), then the same.
        (NodePhase::Draining, prepared.clone()),
    ] {
        let s = superseded(upgrade(phase, agent));
        let step = next_step(&s);
        let msg = fail_message(&step);
        assert!(
            msg.contains("now targets v3") && msg.contains("upgrade to v2 stopped"),
            "{phase:?}: {msg}"
        );
        assert!(msg.contains("runs slot A (v1)"), "{msg}");
    }
    // Not superseded, the same observations go on.
    assert!(matches!(
        next_step(&upgrade(
            NodePhase::Preparing,
            agent(rec(SlotState::Empty, "", 'x'))
        )),
        Step::Prepare(_)
    ));
    assert_eq!(
        next_step(&cordoned(upgrade(NodePhase::Draining, prepared))),
        Step::Drain(AfterDrain::Activate)
    );
}

#[test]
fn an_upgrade_superseded_once_armed_finishes_on_its_own_image() {
    // Armed (the agent answered, the phase write was lost): rebooting into v2 anyway.
    let s = superseded(cordoned(upgrade(NodePhase::Draining, armed())));
    assert!(
        entered(NodePhase::Rebooting)(&next_step(&s)),
        "{:?}",
        next_step(&s)
    );
    let s = superseded(cordoned(upgrade(NodePhase::Rebooting, armed())));
    assert!(is_wait(&next_step(&s)), "{:?}", next_step(&s));
    let s = superseded(cordoned(upgrade(NodePhase::Rebooting, on_trial())));
    assert!(
        entered(NodePhase::Confirming)(&next_step(&s)),
        "{:?}",
        next_step(&s)
    );
    // The OS's settings are v3's: not applied on v2 (before, Configure).
    let mut s = superseded(cordoned(upgrade(NodePhase::Configuring, committed_new())));
    s.os.as_mut().unwrap().sysconfigs = Some(SysConfigs {
        version: Some("for-v3".into()),
        configs: Some(vec![SysConfig::default()]),
    });
    assert!(
        matches!(&next_step(&s), Step::Succeed { current_version } if current_version == NEW),
        "{:?}",
        next_step(&s)
    );
}
