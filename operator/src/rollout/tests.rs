//! `decide` rule by rule. Property tests over random clusters live in `tests/decide_props.rs`.

use std::collections::BTreeMap;

use jiff::Timestamp;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::{ImageType, OsSpec, SysConfigs, TimeWindow};

pub(super) const V1: &str = "KubeOS 1.0";
pub(super) const V2: &str = "KubeOS 2.0";

pub(super) fn now() -> Timestamp {
    "2024-05-01T12:00:00Z".parse().unwrap()
}

fn secs_ago(s: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() - s).unwrap()
}

pub(super) fn spec(maxunavailable: i64) -> OsSpec {
    serde_json::from_value(serde_json::json!({
        "osversion": V2, "opstype": "upgrade", "maxunavailable": maxunavailable,
        "imagetype": "disk", "imageurl": "https://images/v2.img.zst", "checksum": "blake3:00",
        "timeinterval": 0,
    }))
    .unwrap()
}

fn idle() -> Option<InstanceView> {
    Some(InstanceView {
        phase: Some(NodePhase::Idle),
        ..Default::default()
    })
}

pub(super) fn node(name: &str, version: &str) -> NodeView {
    NodeView {
        name: name.into(),
        labels: BTreeMap::new(),
        ready: true,
        cordoned: false,
        control_plane: false,
        os_version: version.into(),
        skip: false,
        instance: idle(),
    }
}

fn control_plane(name: &str, version: &str) -> NodeView {
    NodeView {
        control_plane: true,
        ..node(name, version)
    }
}

/// A node in the middle of an upgrade to V2 that started `started` seconds ago.
pub(super) fn running(name: &str, phase: NodePhase, started: i64) -> NodeView {
    NodeView {
        instance: Some(InstanceView {
            phase: Some(phase),
            operation: Some(OpsType::Upgrade),
            target_version: Some(V2.into()),
            started_at: Some(secs_ago(started)),
            ..Default::default()
        }),
        ..node(name, V1)
    }
}

fn failed(name: &str, operation: OpsType, target: &str) -> NodeView {
    NodeView {
        instance: Some(InstanceView {
            phase: Some(NodePhase::Failed),
            operation: Some(operation),
            target_version: Some(target.into()),
            started_at: Some(secs_ago(600)),
            ..Default::default()
        }),
        ..node(name, V1)
    }
}

pub(super) fn cluster(nodes: Vec<NodeView>) -> Observed {
    Observed {
        nodes,
        ..Observed::default()
    }
}

pub(super) fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn starts_up_to_maxunavailable_in_name_order() {
    let d = decide(
        &spec(2),
        &cluster(vec![node("c", V1), node("a", V1), node("b", V1)]),
        now(),
    );
    assert_eq!(d.start, names(&["a", "b"]));
    assert_eq!(d.state, RolloutState::Progressing);
    assert_eq!(
        d.hold,
        Some(Hold::NoCapacity {
            unavailable: 2,
            limit: 2
        })
    );
    assert_eq!(d.counts.pending, 3);
    assert_eq!(d.counts.unavailable, 2);
}

#[test]
fn maxunavailable_counts_nodes_down_for_any_reason() {
    let not_ready = NodeView {
        ready: false,
        ..node("a", V2)
    };
    let cordoned = NodeView {
        cordoned: true,
        ..node("b", V2)
    };
    let observed = cluster(vec![not_ready, cordoned, node("c", V1), node("d", V1)]);
    assert_eq!(
        decide(&spec(2), &observed, now()).start,
        Vec::<String>::new()
    );
    assert_eq!(decide(&spec(3), &observed, now()).start, names(&["c"]));
}

#[test]
fn maxunavailable_counts_our_nodes_in_progress() {
    let observed = cluster(vec![
        running("a", NodePhase::Preparing, 10),
        node("b", V1),
        node("c", V1),
    ]);
    assert_eq!(decide(&spec(2), &observed, now()).start, names(&["b"]));
}

#[test]
fn maxunavailable_larger_than_the_selection_takes_all() {
    let d = decide(
        &spec(10),
        &cluster(vec![node("a", V1), node("b", V1)]),
        now(),
    );
    assert_eq!(d.start, names(&["a", "b"]));
    assert_eq!(d.hold, None);
}

#[test]
fn nodes_at_the_target_are_never_started_and_complete_the_rollout() {
    let d = decide(
        &spec(3),
        &cluster(vec![node("a", V2), node("b", V1)]),
        now(),
    );
    assert_eq!(d.start, names(&["b"]));
    assert_eq!(d.counts.updated, 1);
    let d = decide(
        &spec(3),
        &cluster(vec![node("a", V2), node("b", V2)]),
        now(),
    );
    assert!(d.start.is_empty());
    assert_eq!(d.state, RolloutState::Complete);
    assert_eq!(d.hold, None);
}

#[test]
fn a_succeeded_node_whose_node_object_lags_is_not_restarted() {
    let mut n = running("a", NodePhase::Succeeded, 100);
    n.instance.as_mut().unwrap().current_version = Some(V2.into());
    let d = decide(&spec(3), &cluster(vec![n]), now());
    assert!(d.start.is_empty() && d.mark_failed.is_empty());
    assert_eq!(d.state, RolloutState::Complete);
}

#[test]
fn a_succeeded_node_on_the_wrong_version_is_marked_failed() {
    let mut n = running("a", NodePhase::Succeeded, 100);
    n.instance.as_mut().unwrap().current_version = Some(V1.into());
    let d = decide(&spec(3), &cluster(vec![n, node("b", V1)]), now());
    assert_eq!(
        d.mark_failed,
        vec![NodeFailure {
            node: "a".into(),
            reason: FailureReason::WrongVersion {
                expected: V2.into(),
                found: V1.into()
            }
        }]
    );
    assert_eq!(d.state, RolloutState::Halted);
    assert!(d.start.is_empty());
}

#[test]
fn serial_runs_one_node_at_a_time() {
    let mut s = spec(5);
    s.executionmode = ExecutionMode::Serial;
    let d = decide(&s, &cluster(vec![node("a", V1), node("b", V1)]), now());
    assert_eq!(d.start, names(&["a"]));
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Rebooting, 5), node("b", V1)]),
        now(),
    );
    assert!(d.start.is_empty());
    assert_eq!(d.hold, Some(Hold::Serial));
}

fn percent(p: &str) -> OsSpec {
    OsSpec {
        maxunavailable: IntOrString::String(p.into()),
        ..spec(1)
    }
}

fn fleet(n: usize) -> Observed {
    cluster((0..n).map(|i| node(&format!("n{i:02}"), V1)).collect())
}

#[test]
fn a_percentage_maxunavailable_is_of_the_selected_nodes_rounded_down() {
    // 20% of 12 is 2.4: two nodes at once.
    let d = decide(&percent("20%"), &fleet(12), now());
    assert_eq!(d.start, names(&["n00", "n01"]));
    assert_eq!(
        d.hold,
        Some(Hold::NoCapacity {
            unavailable: 2,
            limit: 2
        })
    );
    // 100% takes them all.
    assert_eq!(decide(&percent("100%"), &fleet(12), now()).start.len(), 12);
    // Nodes already down count against it as against a number.
    let mut nodes = fleet(10).nodes;
    nodes[9].ready = false;
    let d = decide(&percent("30%"), &cluster(nodes), now());
    assert_eq!(d.start, names(&["n00", "n01"]));
}

#[test]
fn a_percentage_too_small_for_one_node_still_allows_one() {
    // 10% of 3 nodes is 0.3: rounding down to 0 would never start anything.
    let d = decide(&percent("10%"), &fleet(3), now());
    assert_eq!(d.start, names(&["n00"]));
    assert_eq!(
        d.hold,
        Some(Hold::NoCapacity {
            unavailable: 1,
            limit: 1
        })
    );
}

#[test]
fn a_node_annotated_skip_is_not_started_and_does_not_hold_completion() {
    let skipped = NodeView {
        skip: true,
        ..node("a", V1)
    };
    let d = decide(
        &spec(3),
        &cluster(vec![skipped.clone(), node("b", V1)]),
        now(),
    );
    assert_eq!(d.start, names(&["b"]));
    assert_eq!((d.counts.skipped, d.counts.pending), (1, 1));
    // With every other node done the rollout is complete; the skipped node is reported.
    let d = decide(&spec(3), &cluster(vec![skipped, node("b", V2)]), now());
    assert_eq!(d.state, RolloutState::Complete);
    let status = os_status(&d, None, None, now());
    assert_eq!((status.skipped, status.updated, status.target), (1, 1, 2));
}

#[test]
fn a_node_annotated_skip_mid_operation_finishes_it() {
    let busy = NodeView {
        skip: true,
        ..running("a", NodePhase::Draining, 10)
    };
    let d = decide(&spec(1), &cluster(vec![busy, node("b", V1)]), now());
    assert_eq!(d.counts.in_progress, 1);
    assert!(d.mark_failed.is_empty());
    // It still holds its slot: maxunavailable 1 is used up.
    assert!(d.start.is_empty());
}

#[test]
fn abort_starts_nothing_lets_nodes_in_flight_finish_then_reports_aborted() {
    let mut s = spec(3);
    s.abort = true;
    let observed = cluster(vec![
        running("a", NodePhase::Preparing, 10),
        node("b", V1),
        node("c", V2),
    ]);
    let d = decide(&s, &observed, now());
    assert!(d.start.is_empty());
    assert!(d.mark_failed.is_empty());
    assert_eq!(d.state, RolloutState::Aborting);
    assert_eq!(d.hold, Some(Hold::Aborted));
    let status = os_status(&d, Some(4), None, now());
    let aborted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Aborted")
        .unwrap();
    assert_eq!(
        (aborted.status.as_str(), aborted.reason.as_str()),
        ("True", "NodesFinishing")
    );
    assert_eq!(aborted.message, "1 nodes in flight, 1 never started");
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.status, "False");

    // "a" finished: nothing is in flight, "b" never started.
    let observed = cluster(vec![node("a", V2), node("b", V1), node("c", V2)]);
    let d = decide(&s, &observed, now());
    assert_eq!((d.state, d.start.len()), (RolloutState::Aborted, 0));
    assert_eq!((d.counts.updated, d.counts.pending), (2, 1));
    // Taking the abort back goes on where it stopped.
    s.abort = false;
    assert_eq!(decide(&s, &observed, now()).start, names(&["b"]));
}

#[test]
fn abort_withdraws_operations_no_proxy_took_up_and_only_those() {
    let mut s = spec(5);
    s.node_timeout_seconds = 60;
    s.failure_budget = 5;
    let mut other_target = running("d", NodePhase::Assigned, 5);
    other_target.instance.as_mut().unwrap().target_version = Some("v9".into());
    let nodes = vec![
        running("a", NodePhase::Assigned, 5),
        // Past its timeout: withdrawn, not failed (nothing was done to it).
        running("b", NodePhase::Assigned, 61),
        running("c", NodePhase::Preparing, 5),
        other_target,
        node("e", V1),
    ];
    let d = decide(&s, &cluster(nodes.clone()), now());
    assert!(d.withdraw.is_empty(), "no abort, no withdrawal");
    assert_eq!(d.mark_failed.len(), 1, "without abort b times out");

    s.abort = true;
    let d = decide(&s, &cluster(nodes), now());
    assert_eq!(d.withdraw, names(&["a", "b"]));
    assert!(d.mark_failed.is_empty(), "{:?}", d.mark_failed);
    assert!(d.start.is_empty());
    // Still in progress until the withdrawal is seen; c and d (another target's) go on.
    assert_eq!(d.state, RolloutState::Aborting);
    assert_eq!(d.counts.in_progress, 4);

    // Seen withdrawn (idle again, operation and target kept): never started.
    let mut a = running("a", NodePhase::Idle, 5);
    a.instance.as_mut().unwrap().phase = Some(NodePhase::Idle);
    let d = decide(&s, &cluster(vec![a.clone(), node("c", V2)]), now());
    assert!(d.withdraw.is_empty());
    assert_eq!((d.state, d.counts.pending), (RolloutState::Aborted, 1));
    // Taking the abort back starts it again.
    s.abort = false;
    assert_eq!(
        decide(&s, &cluster(vec![a, node("c", V2)]), now()).start,
        names(&["a"])
    );
}

#[test]
fn an_invalid_spec_withdraws_nothing() {
    let mut s = spec(3);
    s.abort = true;
    s.maxunavailable = serde_json::from_value(serde_json::json!("0%")).unwrap();
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Assigned, 5)]),
        now(),
    );
    assert_eq!(d.state, RolloutState::Invalid);
    assert!(d.withdraw.is_empty());
}

#[test]
fn abort_of_a_finished_rollout_changes_nothing() {
    let mut s = spec(3);
    s.abort = true;
    let d = decide(&s, &cluster(vec![node("a", V2)]), now());
    assert_eq!((d.state, d.hold), (RolloutState::Complete, None));
}

#[test]
fn abort_still_marks_timeouts() {
    let mut s = spec(3);
    s.abort = true;
    s.node_timeout_seconds = 60;
    s.failure_budget = 5;
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Draining, 61)]),
        now(),
    );
    assert_eq!(d.mark_failed.len(), 1);
    assert_eq!(d.state, RolloutState::Aborted);
}

#[test]
fn paused_starts_nothing_but_still_marks_timeouts() {
    let mut s = spec(3);
    s.paused = true;
    s.node_timeout_seconds = 60;
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Draining, 61), node("b", V1)]),
        now(),
    );
    assert!(d.start.is_empty());
    assert_eq!(d.mark_failed.len(), 1);
    // The failure budget (1) is spent by the timeout: halted wins over paused.
    assert_eq!(d.state, RolloutState::Halted);
    s.failure_budget = 5;
    let d = decide(&s, &cluster(vec![node("b", V1)]), now());
    assert_eq!(
        (d.state, d.hold),
        (RolloutState::Paused, Some(Hold::Paused))
    );
}

#[test]
fn a_timed_out_node_is_failed_and_releases_its_slot() {
    let mut s = spec(1);
    s.node_timeout_seconds = 600;
    s.failure_budget = 3;
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Preparing, 600), node("b", V1)]),
        now(),
    );
    assert_eq!(
        d.mark_failed,
        vec![NodeFailure {
            node: "a".into(),
            reason: FailureReason::TimedOut {
                phase: NodePhase::Preparing,
                seconds: 600
            }
        }]
    );
    assert_eq!(d.failed_nodes, names(&["a"]));
    assert_eq!(d.start, names(&["b"]));
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Preparing, 599), node("b", V1)]),
        now(),
    );
    assert!(d.mark_failed.is_empty() && d.start.is_empty());
    assert_eq!(
        d.next_check,
        Some(Timestamp::from_second(now().as_second() + 1).unwrap())
    );
}

#[test]
fn a_timed_out_node_still_notready_keeps_counting_as_unavailable() {
    let mut s = spec(1);
    s.node_timeout_seconds = 60;
    s.failure_budget = 3;
    let stuck = NodeView {
        ready: false,
        ..running("a", NodePhase::Rebooting, 120)
    };
    let d = decide(&s, &cluster(vec![stuck, node("b", V1)]), now());
    assert_eq!(d.mark_failed.len(), 1);
    assert!(d.start.is_empty());
}

#[test]
fn a_timeout_of_an_older_target_does_not_count_against_this_one() {
    let mut s = spec(1);
    s.node_timeout_seconds = 60;
    let mut old = running("a", NodePhase::Preparing, 120);
    old.instance.as_mut().unwrap().target_version = Some("KubeOS 1.5".into());
    let d = decide(&s, &cluster(vec![old, node("b", V1)]), now());
    assert_eq!(d.mark_failed.len(), 1);
    assert_eq!(d.counts.failed, 0);
    assert_eq!(d.state, RolloutState::Progressing);
    assert_eq!(d.start, names(&["b"]));
}

#[test]
fn the_failure_budget_halts_the_rollout() {
    let mut s = spec(3);
    s.failure_budget = 2;
    let one = cluster(vec![
        failed("a", OpsType::Upgrade, V2),
        node("b", V1),
        node("c", V1),
    ]);
    let d = decide(&s, &one, now());
    assert_eq!(d.state, RolloutState::Progressing);
    assert_eq!(d.start, names(&["b", "c"]));
    let two = cluster(vec![
        failed("a", OpsType::Upgrade, V2),
        failed("b", OpsType::Upgrade, V2),
        node("c", V1),
    ]);
    let d = decide(&s, &two, now());
    assert_eq!(d.state, RolloutState::Halted);
    assert!(d.start.is_empty());
    assert_eq!(
        d.hold,
        Some(Hold::Halted {
            failed: 2,
            budget: 2
        })
    );
    assert_eq!(d.failed_nodes, names(&["a", "b"]));
}

#[test]
fn a_failed_node_is_not_retried_for_the_same_target_but_is_for_a_new_one() {
    let mut s = spec(3);
    s.failure_budget = 5;
    let d = decide(&s, &cluster(vec![failed("a", OpsType::Upgrade, V2)]), now());
    assert!(d.start.is_empty());
    assert_eq!(d.counts.failed, 1);
    let d = decide(
        &s,
        &cluster(vec![failed("a", OpsType::Upgrade, "KubeOS 1.5")]),
        now(),
    );
    assert_eq!(d.start, names(&["a"]));
    assert_eq!(d.counts.failed, 0);
}

#[test]
fn outside_the_window_nothing_starts_and_nodes_in_flight_go_on() {
    let mut s = spec(3);
    s.timewindow = Some(TimeWindow {
        starttime: "22:00:00".into(),
        endtime: "02:00:00".into(),
        timezone: Some("+08:00".into()),
    });
    s.node_timeout_seconds = 86_400;
    // 12:00Z is 20:00 at +08:00; the window opens at 22:00+08:00 = 14:00Z.
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Preparing, 10), node("b", V1)]),
        now(),
    );
    assert!(d.start.is_empty());
    let opens: Timestamp = "2024-05-01T14:00:00Z".parse().unwrap();
    assert_eq!(
        d.hold,
        Some(Hold::OutsideWindow {
            opens_at: Some(opens)
        })
    );
    assert_eq!(d.next_check, Some(opens));
    assert_eq!(d.counts.in_progress, 1);
    assert_eq!(
        decide(&s, &cluster(vec![node("b", V1)]), opens).start,
        names(&["b"])
    );
}

#[test]
fn timeinterval_spaces_batches_of_starts() {
    let mut s = spec(3);
    s.timeinterval = 15;
    let observed = cluster(vec![running("a", NodePhase::Preparing, 10), node("b", V1)]);
    let d = decide(&s, &observed, now());
    let until = Timestamp::from_second(now().as_second() + 5).unwrap();
    assert_eq!(d.hold, Some(Hold::Interval { until }));
    assert_eq!(d.next_check, Some(until));
    assert_eq!(decide(&s, &observed, until).start, names(&["b"]));
}

fn year_2100() -> Timestamp {
    "2100-01-01T00:00:00Z".parse().unwrap()
}

#[test]
fn a_start_later_than_the_clock_holds_no_other_node() {
    // Node a "finished" the target with a start in 2100 (written by its proxy, not by an
    // operator): that start neither spaces the next batch nor holds anything else.
    let done = NodeView {
        instance: Some(InstanceView {
            phase: Some(NodePhase::Succeeded),
            operation: Some(OpsType::Upgrade),
            target_version: Some(V2.into()),
            current_version: Some(V2.into()),
            started_at: Some(year_2100()),
            ..Default::default()
        }),
        ..node("a", V2)
    };
    for interval in [0, 15] {
        let mut s = spec(3);
        s.timeinterval = interval;
        let d = decide(
            &s,
            &cluster(vec![done.clone(), node("b", V1), node("c", V1)]),
            now(),
        );
        assert_eq!(d.start, names(&["b", "c"]), "timeinterval {interval}");
        assert_eq!(d.hold, None, "timeinterval {interval}");
        assert!(d.next_check.is_none_or(|t| t < year_2100()));
    }
}

#[test]
fn an_operation_started_later_than_the_clock_is_failed_at_once() {
    let mut s = spec(1);
    s.node_timeout_seconds = 60;
    s.failure_budget = 3;
    let ahead = |seconds: i64| {
        let mut n = running("a", NodePhase::Draining, 0);
        n.instance.as_mut().unwrap().started_at =
            Some(Timestamp::from_second(now().as_second() + seconds).unwrap());
        n
    };
    let mut forged = running("a", NodePhase::Draining, 0);
    forged.instance.as_mut().unwrap().started_at = Some(year_2100());
    // A start an operator cannot have written releases the slot now, sooner than the
    // timeout of a start now would.
    let d = decide(&s, &cluster(vec![forged, node("b", V1)]), now());
    assert_eq!(
        d.mark_failed,
        vec![NodeFailure {
            node: "a".into(),
            reason: FailureReason::StartInFuture {
                phase: NodePhase::Draining,
                started_at: year_2100(),
            }
        }]
    );
    assert_eq!(d.failed_nodes, names(&["a"]));
    assert_eq!(d.start, names(&["b"]));
    let d = decide(
        &s,
        &cluster(vec![ahead(MAX_CLOCK_SKEW.as_secs() + 1), node("b", V1)]),
        now(),
    );
    assert_eq!(d.failed_nodes, names(&["a"]));
    // Within the skew another replica's clock may have written it: taken as is, it times
    // out `nodeTimeoutSeconds` after that start.
    let skew = MAX_CLOCK_SKEW.as_secs();
    let observed = cluster(vec![ahead(skew), node("b", V1)]);
    let d = decide(&s, &observed, now());
    assert!(d.mark_failed.is_empty() && d.start.is_empty());
    let deadline = now().as_second() + skew + 60;
    let d = decide(&s, &observed, Timestamp::from_second(deadline - 1).unwrap());
    assert!(d.mark_failed.is_empty());
    let d = decide(&s, &observed, Timestamp::from_second(deadline).unwrap());
    assert!(matches!(
        d.mark_failed[..],
        [NodeFailure {
            reason: FailureReason::TimedOut { .. },
            ..
        }]
    ));
}

#[test]
fn nodeselector_follows_kubeos() {
    let labelled = |name: &str, value: &str| NodeView {
        labels: [(NODE_SELECTOR_LABEL.to_string(), value.to_string())].into(),
        ..node(name, V1)
    };
    let observed = cluster(vec![
        node("plain", V1),
        labelled("v1", "kubeos-v1"),
        labelled("v2", "kubeos-v2"),
    ]);
    let mut s = spec(10);
    assert_eq!(decide(&s, &observed, now()).start, names(&["plain"]));
    s.nodeselector = "kubeos-v1".into();
    assert_eq!(decide(&s, &observed, now()).start, names(&["v1"]));
    s.nodeselector = "all-label".into();
    assert_eq!(
        decide(&s, &observed, now()).start,
        names(&["plain", "v1", "v2"])
    );
}

#[test]
fn control_plane_nodes_only_with_opt_in_last_and_one_at_a_time() {
    let observed = cluster(vec![
        control_plane("cp1", V1),
        control_plane("cp2", V1),
        node("w", V1),
    ]);
    let mut s = spec(5);
    let d = decide(&s, &observed, now());
    assert_eq!(d.start, names(&["w"]));
    assert_eq!(d.counts.target, 1);
    s.include_control_plane = true;
    assert_eq!(decide(&s, &observed, now()).start, names(&["w", "cp1"]));
}

#[test]
fn no_control_plane_node_starts_while_another_is_unavailable() {
    let mut s = spec(5);
    s.include_control_plane = true;
    let busy = NodeView {
        control_plane: true,
        ..running("cp1", NodePhase::Rebooting, 5)
    };
    let d = decide(&s, &cluster(vec![busy, control_plane("cp2", V1)]), now());
    assert!(d.start.is_empty());
    // An unselected control-plane node that is NotReady blocks too: quorum is cluster-wide.
    let mut other = NodeView {
        ready: false,
        ..control_plane("cp0", V1)
    };
    other
        .labels
        .insert(NODE_SELECTOR_LABEL.into(), "elsewhere".into());
    let d = decide(
        &s,
        &cluster(vec![other, control_plane("cp2", V1), node("w", V1)]),
        now(),
    );
    assert_eq!(d.start, names(&["w"]));
    assert_eq!(d.hold, Some(Hold::NodesNotStartable { nodes: 1 }));
}

#[test]
fn nodes_without_a_proxy_or_not_ready_are_not_started() {
    let no_proxy = NodeView {
        instance: None,
        ..node("a", V1)
    };
    let not_ready = NodeView {
        ready: false,
        ..node("b", V1)
    };
    let cordoned = NodeView {
        cordoned: true,
        ..node("c", V1)
    };
    let d = decide(
        &spec(10),
        &cluster(vec![no_proxy, not_ready, cordoned, node("d", V1)]),
        now(),
    );
    // The cordoned node is already unavailable: it starts first, at no cost.
    assert_eq!(d.start, names(&["c", "d"]));
    assert_eq!(d.hold, Some(Hold::NodesNotStartable { nodes: 2 }));
}

#[test]
fn a_kubeos_style_assignment_holds_its_slot() {
    let legacy = NodeView {
        instance: Some(InstanceView {
            phase: Some(NodePhase::Assigned),
            ..Default::default()
        }),
        ..node("a", V1)
    };
    let d = decide(&spec(1), &cluster(vec![legacy, node("b", V1)]), now());
    assert!(d.start.is_empty());
    assert_eq!(d.counts.in_progress, 1);
}

fn config_spec(version: &str) -> OsSpec {
    let mut s = spec(5);
    s.opstype = OpsType::Config;
    s.imagetype = ImageType::Unset;
    s.osversion = V1.into();
    s.sysconfigs = Some(SysConfigs {
        version: Some(version.into()),
        configs: None,
    });
    s
}

#[test]
fn config_targets_the_settings_version_on_nodes_at_osversion() {
    let mut applied = node("a", V1);
    applied.instance.as_mut().unwrap().applied_config_version = Some("c2".into());
    let observed = cluster(vec![applied, node("b", V1), node("other-os", V2)]);
    let d = decide(&config_spec("c2"), &observed, now());
    assert_eq!(d.start, names(&["b"]));
    assert_eq!(
        (d.counts.updated, d.counts.pending, d.counts.skipped),
        (1, 1, 1)
    );
}

#[test]
fn an_invalid_spec_starts_nothing_but_still_watches_timeouts() {
    let mut s = spec(3);
    s.checksum.clear();
    s.node_timeout_seconds = 60;
    s.failure_budget = 3;
    let d = decide(
        &s,
        &cluster(vec![running("a", NodePhase::Preparing, 61), node("b", V1)]),
        now(),
    );
    assert_eq!(d.state, RolloutState::Invalid);
    assert_eq!(d.hold, Some(Hold::Invalid(SpecError::NoChecksum)));
    assert!(d.start.is_empty());
    assert_eq!(d.mark_failed.len(), 1);
}

#[test]
fn spec_checks() {
    let check = |f: &dyn Fn(&mut OsSpec)| {
        let mut s = spec(1);
        f(&mut s);
        Plan::from_spec(&s).err()
    };
    assert_eq!(check(&|_| {}), None);
    assert_eq!(
        check(&|s| s.maxunavailable = IntOrString::Int(0)),
        Some(SpecError::MaxUnavailable("0".into()))
    );
    for bad in [
        "0%", "101%", "20", "%", "-5%", "1.5%", " 5%", "5 %", "0005%",
    ] {
        assert_eq!(
            check(&|s| s.maxunavailable = IntOrString::String(bad.into())),
            Some(SpecError::MaxUnavailable(format!("{bad:?}"))),
            "{bad}"
        );
    }
    assert_eq!(
        check(&|s| s.maxunavailable = IntOrString::String("100%".into())),
        None
    );
    assert_eq!(
        check(&|s| s.osversion.clear()),
        Some(SpecError::NoOsVersion)
    );
    assert_eq!(
        check(&|s| s.timeinterval = -1),
        Some(SpecError::NegativeTimeInterval(-1))
    );
    assert_eq!(
        check(&|s| s.imagetype = ImageType::Unset),
        Some(SpecError::NoImageType)
    );
    assert_eq!(check(&|s| s.imageurl.clear()), Some(SpecError::NoImageUrl));
    assert_eq!(
        check(&|s| s.imagetype = ImageType::Docker),
        Some(SpecError::NoContainerImage)
    );
    let docker = |image: &'static str| {
        move |s: &mut OsSpec| {
            s.imagetype = ImageType::Docker;
            s.containerimage = image.into();
            s.checksum.clear();
        }
    };
    assert_eq!(
        check(&docker("r.example/os:2")),
        Some(SpecError::NoChecksum)
    );
    let pinned =
        "r.example/os@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(
        check(&docker(pinned)),
        None,
        "the digest in the reference pins it"
    );
    assert_eq!(
        check(&|s| s.mtls = true),
        Some(SpecError::MtlsWithoutClientCert)
    );
    assert_eq!(check(&|s| s.opstype = OpsType::Rollback), None);
    assert_eq!(
        check(&|s| s.opstype = OpsType::Config),
        Some(SpecError::ConfigWithoutSysconfigs)
    );
    let bad_window = check(&|s| {
        s.timewindow = Some(TimeWindow {
            starttime: "1".into(),
            endtime: "2".into(),
            timezone: None,
        })
    });
    assert!(matches!(bad_window, Some(SpecError::Window(_))));
}

#[test]
fn status_reports_counts_conditions_and_keeps_transition_times() {
    let mut s = spec(1);
    s.failure_budget = 2;
    let d = decide(
        &s,
        &cluster(vec![node("a", V2), node("b", V1), node("c", V1)]),
        now(),
    );
    let status = os_status(&d, Some(3), None, now());
    assert_eq!(status.state, Some(RolloutState::Progressing));
    assert_eq!(
        (
            status.target,
            status.updated,
            status.in_progress,
            status.pending
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(status.observed_generation, Some(3));
    let cond = |st: &crate::crd::OsStatus, t: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(cond(&status, "Progressing").status, "True");
    assert_eq!(cond(&status, "Progressing").reason, "NodesStarted");
    assert_eq!(cond(&status, "Halted").status, "False");
    assert_eq!(cond(&status, "Complete").reason, "NodesRemaining");

    let later = Timestamp::from_second(now().as_second() + 60).unwrap();
    let done = decide(
        &s,
        &cluster(vec![node("a", V2), node("b", V2), node("c", V2)]),
        later,
    );
    let next = os_status(&done, Some(3), Some(&status), later);
    assert_eq!(next.state, Some(RolloutState::Complete));
    assert_eq!(cond(&next, "Complete").status, "True");
    assert_eq!(cond(&next, "Complete").last_transition_time.0, later);
    // Paused stayed False: its transition time is the first one.
    assert_eq!(cond(&next, "Paused").last_transition_time.0, now());
}

#[test]
fn status_of_a_halted_rollout_names_the_failed_nodes() {
    let d = decide(
        &spec(3),
        &cluster(vec![failed("a", OpsType::Upgrade, V2), node("b", V1)]),
        now(),
    );
    let status = os_status(&d, None, None, now());
    assert_eq!(status.state, Some(RolloutState::Halted));
    assert_eq!(status.failed_nodes, names(&["a"]));
    let halted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Halted")
        .unwrap();
    assert_eq!(
        (halted.status.as_str(), halted.reason.as_str()),
        ("True", "FailureBudgetExhausted")
    );
    assert!(status.message.unwrap().contains("failureBudget is 1"));
}

#[test]
fn failures_below_the_budget_leave_the_rollout_incomplete_not_complete() {
    let mut s = spec(3);
    s.failure_budget = 2;
    let d = decide(
        &s,
        &cluster(vec![failed("a", OpsType::Upgrade, V2), node("b", V2)]),
        now(),
    );
    assert_eq!(d.state, RolloutState::Incomplete);
    assert_eq!(d.hold, None);
    let status = os_status(&d, None, None, now());
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("False", "NodesFailed")
    );
}

#[test]
fn an_invalid_spec_says_why_even_when_nothing_is_pending() {
    let mut s = spec(0);
    s.failure_budget = 2;
    let d = decide(&s, &cluster(vec![node("a", V2)]), now());
    assert_eq!(d.state, RolloutState::Invalid);
    assert_eq!(
        d.hold,
        Some(Hold::Invalid(SpecError::MaxUnavailable("0".into())))
    );
    let status = os_status(&d, None, None, now());
    assert_eq!(
        status.message.as_deref(),
        Some(
            "invalid spec: maxunavailable is 0; it must be a number of nodes (at least 1) or a \
             percentage from \"1%\" to \"100%\""
        )
    );
}

#[test]
fn a_node_cordoned_by_someone_else_starts_at_no_cost() {
    let admin_cordoned = NodeView {
        cordoned: true,
        ..node("z", V1)
    };
    // maxunavailable 1 is used up by the cordoned node itself; starting it adds nothing.
    let observed = cluster(vec![node("a", V1), admin_cordoned]);
    let d = decide(&spec(1), &observed, now());
    assert_eq!(d.start, names(&["z"]));
    assert_eq!(d.counts.unavailable, 1);
    assert_eq!(
        d.hold,
        Some(Hold::NoCapacity {
            unavailable: 1,
            limit: 1
        })
    );
}

#[test]
fn serial_mode_starts_one_node_even_when_it_costs_nothing() {
    let mut serial = spec(5);
    serial.executionmode = ExecutionMode::Serial;
    let cordoned = |name| NodeView {
        cordoned: true,
        ..node(name, V1)
    };
    let d = decide(&serial, &cluster(vec![cordoned("a"), cordoned("b")]), now());
    assert_eq!(d.start, names(&["a"]));
    assert_eq!(d.hold, Some(Hold::Serial));
}
