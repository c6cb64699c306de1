//! Properties of `decide` over random clusters and specs, and a simulated rollout driven by it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use operator::crd::{ExecutionMode, NodePhase, OpsType, OsSpec, RolloutState};
use operator::rollout::{
    decide, Decision, Hold, InstanceView, NodeView, Observed, MAX_CLOCK_SKEW, NODE_SELECTOR_LABEL,
};
use proptest::prelude::*;

const V1: &str = "KubeOS 1.0";
const V2: &str = "KubeOS 2.0";
const NOW: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

const PHASES: [NodePhase; 9] = [
    NodePhase::Idle,
    NodePhase::Assigned,
    NodePhase::Draining,
    NodePhase::Preparing,
    NodePhase::Rebooting,
    NodePhase::Confirming,
    NodePhase::Configuring,
    NodePhase::Succeeded,
    NodePhase::Failed,
];
const OPS: [OpsType; 3] = [OpsType::Upgrade, OpsType::Rollback, OpsType::Config];

fn version() -> impl Strategy<Value = String> {
    prop::sample::select(vec![V1, V2, "c1", "c2"]).prop_map(str::to_string)
}

fn instance() -> impl Strategy<Value = Option<InstanceView>> {
    let some = (
        prop::option::of(prop::sample::select(PHASES.to_vec())),
        prop::option::of(prop::sample::select(OPS.to_vec())),
        prop::option::of(version()),
        prop::option::of(version()),
        prop::option::of(version()),
        // Mostly past starts; some ahead of the clock, as a proxy may write them (within
        // MAX_CLOCK_SKEW and far beyond).
        prop::option::of(prop_oneof![4 => 0i64..7200, 1 => -200_000i64..0]),
    )
        .prop_map(
            |(phase, operation, target, current, applied, age)| InstanceView {
                phase,
                operation,
                target_version: target,
                current_version: current,
                applied_config_version: applied,
                started_at: age.map(|a| at(NOW - a)),
            },
        );
    prop::option::weighted(0.9, some)
}

fn node_view(index: usize) -> impl Strategy<Value = NodeView> {
    (
        (
            prop::option::of(prop::sample::select(vec!["a", "b"])),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
        ),
        (
            prop::sample::select(vec![V1, V2]),
            prop::bool::weighted(0.1),
            instance(),
        ),
    )
        .prop_map(
            move |((label, ready, cordoned, control_plane), (os, skip, instance))| NodeView {
                name: format!("node-{index:02}"),
                labels: label
                    .map(|l| (NODE_SELECTOR_LABEL.to_string(), l.to_string()))
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
                ready,
                cordoned,
                control_plane,
                os_version: os.to_string(),
                skip,
                instance,
            },
        )
}

fn observed() -> impl Strategy<Value = Observed> {
    (0usize..24)
        .prop_flat_map(|n| (0..n).map(node_view).collect::<Vec<_>>())
        .prop_map(|nodes| Observed {
            nodes,
            ..Observed::default()
        })
}

/// A node count or a percentage, as JSON.
fn max_unavailable() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (1i64..6).prop_map(serde_json::Value::from),
        (1u32..=100).prop_map(|p| serde_json::Value::from(format!("{p}%"))),
    ]
}

/// The unavailability limit among `selected` nodes, worked out here from the spec's JSON
/// value: a percentage rounds down, at least 1; never more than the selection.
fn limit(spec: &OsSpec, selected: usize) -> usize {
    let n = match &spec.maxunavailable {
        IntOrString::Int(n) => *n as usize,
        IntOrString::String(p) => {
            let p: usize = p.trim_end_matches('%').parse().unwrap();
            (selected * p / 100).max(1)
        }
    };
    n.min(selected)
}

fn os_spec() -> impl Strategy<Value = OsSpec> {
    (
        (
            max_unavailable(),
            prop::bool::ANY,
            prop::bool::weighted(0.2),
            1u32..4,
        ),
        (
            60u64..7200,
            prop::bool::ANY,
            prop::sample::select(vec!["no-label", "all-label", "a"]),
            prop::bool::weighted(0.1),
        ),
        (0i64..60, prop::sample::select(OPS.to_vec()), version()),
    )
        .prop_map(
            |(
                (max, serial, paused, budget),
                (timeout, cp, selector, abort),
                (interval, ops, cfg),
            )| {
                let mut spec: OsSpec = serde_json::from_value(serde_json::json!({
                    "osversion": V2, "opstype": ops, "maxunavailable": max,
                    "imagetype": "disk", "imageurl": "https://i/v2.img", "checksum": "blake3:00",
                    "sysconfigs": { "version": cfg },
                }))
                .unwrap();
                spec.executionmode = if serial {
                    ExecutionMode::Serial
                } else {
                    ExecutionMode::Parallel
                };
                spec.paused = paused;
                spec.abort = abort;
                spec.failure_budget = budget;
                spec.node_timeout_seconds = timeout;
                spec.include_control_plane = cp;
                spec.nodeselector = selector.to_string();
                spec.timeinterval = interval;
                spec
            },
        )
}

/// The rollout's nodes: those the spec selects, and those in an operation for its target
/// (a node relabelled mid-operation stays one until the operation ends).
fn selected<'a>(spec: &OsSpec, observed: &'a Observed) -> Vec<&'a NodeView> {
    let (operation, target) = match operator::rollout::Plan::from_spec(spec) {
        Ok(p) => (p.operation, p.target),
        Err(_) => (spec.opstype, spec.osversion.clone()),
    };
    let in_flight = |n: &NodeView| {
        n.instance
            .as_ref()
            .is_some_and(|i| i.is_active() && i.is_for(operation, &target))
    };
    observed
        .nodes
        .iter()
        .filter(|n| operator::rollout::selects(spec, n) || in_flight(n))
        .collect()
}

fn active(n: &NodeView, d: &Decision) -> bool {
    n.instance.as_ref().is_some_and(InstanceView::is_active)
        && !d.mark_failed.iter().any(|f| f.node == n.name)
}

fn unavailable(n: &NodeView, d: &Decision) -> bool {
    !n.ready || n.cordoned || active(n, d)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn starts_never_exceed_maxunavailable(spec in os_spec(), observed in observed()) {
        let d = decide(&spec, &observed, at(NOW));
        let pool = selected(&spec, &observed);
        let before = pool.iter().filter(|n| unavailable(n, &d)).count();
        let limit = limit(&spec, pool.len());
        // Starting a cordoned node makes nothing more unavailable.
        let added = d.start.iter()
            .filter(|name| pool.iter().any(|n| &&n.name == name && !n.cordoned))
            .count();
        if added > 0 {
            prop_assert!(before + added <= limit, "{before} + {:?} > {limit}", d.start);
        }
        prop_assert_eq!(d.counts.unavailable as usize, before + added);
    }

    #[test]
    fn halted_paused_or_aborted_rollouts_start_nothing(spec in os_spec(), observed in observed()) {
        let d = decide(&spec, &observed, at(NOW));
        if d.state != RolloutState::Invalid && !spec.abort {
            prop_assert_eq!(d.state == RolloutState::Halted, d.counts.failed >= spec.failure_budget);
        }
        if d.state == RolloutState::Halted || spec.paused || spec.abort {
            prop_assert!(d.start.is_empty());
        }
        if spec.abort && d.state != RolloutState::Invalid && d.state != RolloutState::Complete {
            let expected = if d.counts.in_progress > 0 {
                RolloutState::Aborting
            } else {
                RolloutState::Aborted
            };
            prop_assert_eq!(d.state, expected);
        }
    }

    #[test]
    fn abort_withdraws_exactly_the_assigned_operations_of_its_target(
        spec in os_spec(),
        observed in observed(),
    ) {
        let d = decide(&spec, &observed, at(NOW));
        // The rollout's operation and target (a config's target is its settings version).
        let plan = operator::rollout::Plan::from_spec(&spec).ok().filter(|_| spec.abort);
        let mut expected: Vec<String> = match plan {
            Some(plan) => observed.nodes.iter()
                .filter(|n| n.instance.as_ref().is_some_and(|i| {
                    i.phase == Some(NodePhase::Assigned)
                        && i.operation == Some(plan.operation)
                        && i.target_version.as_deref() == Some(plan.target.as_str())
                }))
                .map(|n| n.name.clone())
                .collect(),
            None => Vec::new(),
        };
        expected.sort();
        let mut got = d.withdraw.clone();
        got.sort();
        prop_assert_eq!(got, expected);
        // A withdrawn node is neither started nor failed in the same decision.
        for name in &d.withdraw {
            prop_assert!(!d.start.contains(name));
            prop_assert!(!d.mark_failed.iter().any(|f| &f.node == name));
        }
    }

    #[test]
    fn serial_mode_never_runs_two(mut spec in os_spec(), observed in observed()) {
        spec.executionmode = ExecutionMode::Serial;
        let d = decide(&spec, &observed, at(NOW));
        prop_assert!(d.start.len() <= 1);
        if !d.start.is_empty() {
            prop_assert!(!selected(&spec, &observed).iter().any(|n| active(n, &d)));
        }
    }

    #[test]
    fn started_nodes_are_eligible(spec in os_spec(), observed in observed()) {
        let d = decide(&spec, &observed, at(NOW));
        let pool = selected(&spec, &observed);
        let mut seen = std::collections::BTreeSet::new();
        for name in &d.start {
            prop_assert!(seen.insert(name.clone()), "{name} started twice");
            let n = pool.iter().find(|n| &n.name == name).expect("started node is selected");
            prop_assert!(n.ready && n.instance.is_some() && !active(n, &d));
            prop_assert!(!n.skip, "{name} is annotated to be skipped");
            match spec.opstype {
                OpsType::Config => prop_assert_eq!(&n.os_version, &spec.osversion),
                _ => prop_assert_ne!(&n.os_version, &spec.osversion, "{} already at target", name),
            }
            let inst = n.instance.as_ref().unwrap();
            let failed_here = inst.phase == Some(NodePhase::Failed)
                && d.failed_nodes.contains(name);
            prop_assert!(!failed_here, "{name} failed this target and was retried");
        }
    }

    #[test]
    fn at_most_one_control_plane_node_at_a_time(spec in os_spec(), observed in observed()) {
        let d = decide(&spec, &observed, at(NOW));
        let started_cp: Vec<_> = observed.nodes.iter()
            .filter(|n| n.control_plane && d.start.contains(&n.name)).collect();
        prop_assert!(started_cp.len() <= 1);
        if !started_cp.is_empty() {
            prop_assert!(spec.include_control_plane);
            prop_assert!(!observed.nodes.iter().any(|n| n.control_plane && unavailable(n, &d)));
        }
    }

    /// `status.startedAt` is in an object the node's proxy writes: a start ahead of the clock
    /// holds nothing longer than a start now would, give or take `MAX_CLOCK_SKEW` (another
    /// replica's clock). No interval past now + timeinterval + skew, and no operation left
    /// in flight with a start after now + skew (its timeout would come later).
    #[test]
    fn a_start_ahead_of_the_clock_holds_no_longer_than_a_start_now(
        spec in os_spec(),
        observed in observed(),
    ) {
        let d = decide(&spec, &observed, at(NOW));
        let skew = MAX_CLOCK_SKEW.as_secs();
        if let Some(Hold::Interval { until }) = d.hold {
            prop_assert!(until <= at(NOW + spec.timeinterval + skew), "interval until {until}");
        }
        for n in selected(&spec, &observed) {
            let started = n.instance.as_ref().and_then(|i| i.started_at);
            if let (true, Some(s)) = (active(n, &d) && !d.withdraw.contains(&n.name), started) {
                prop_assert!(s <= at(NOW + skew), "{} still in flight, started {s}", n.name);
            }
        }
    }

    #[test]
    fn counts_add_up(spec in os_spec(), observed in observed()) {
        let d = decide(&spec, &observed, at(NOW));
        let c = d.counts;
        prop_assert_eq!(c.updated + c.in_progress + c.failed + c.pending + c.skipped, c.target);
        prop_assert_eq!(c.target as usize, selected(&spec, &observed).len());
        prop_assert_eq!(c.failed as usize, d.failed_nodes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// 20 nodes rolled out by repeatedly applying decisions: unavailable nodes never exceed
    /// maxunavailable, failures beyond the budget never start, and a rollout without
    /// failures completes.
    #[test]
    fn simulated_rollout(
        max in 1i64..5,
        budget in 1u32..4,
        serial in prop::bool::ANY,
        outcomes in prop::collection::vec((1u32..5, prop::bool::weighted(0.15)), 20),
    ) {
        let mut spec: OsSpec = serde_json::from_value(serde_json::json!({
            "osversion": V2, "opstype": "upgrade", "maxunavailable": max, "timeinterval": 0,
            "imagetype": "disk", "imageurl": "https://i/v2.img", "checksum": "blake3:00",
        })).unwrap();
        spec.failure_budget = budget;
        spec.executionmode = if serial { ExecutionMode::Serial } else { ExecutionMode::Parallel };
        let mut nodes: Vec<NodeView> = (0..20).map(|i| NodeView {
            name: format!("n{i:02}"), labels: BTreeMap::new(), ready: true, cordoned: false,
            control_plane: false, os_version: V1.into(), skip: false,
            instance: Some(InstanceView { phase: Some(NodePhase::Idle), ..Default::default() }),
        }).collect();
        let mut steps_left = [0u32; 20];
        let mut final_state = RolloutState::Progressing;
        for step in 0..400 {
            let now = at(NOW + step);
            let d = decide(&spec, &Observed {
                nodes: nodes.clone(),
                ..Observed::default()
            }, now);
            for name in &d.start {
                let i: usize = name[1..].parse().unwrap();
                steps_left[i] = outcomes[i].0;
                nodes[i].cordoned = true;
                nodes[i].instance = Some(InstanceView {
                    phase: Some(NodePhase::Draining), operation: Some(OpsType::Upgrade),
                    target_version: Some(V2.into()), started_at: Some(now), ..Default::default()
                });
            }
            let down = nodes.iter().filter(|n| !n.ready || n.cordoned).count();
            prop_assert!(down as i64 <= max, "step {step}: {down} nodes down, max {max}");
            if serial {
                prop_assert!(nodes.iter().filter(|n| n.cordoned).count() <= 1);
            }
            let failed = nodes.iter().filter(|n| n.instance.as_ref().unwrap().phase == Some(NodePhase::Failed)).count();
            prop_assert!(failed as u32 <= budget - 1 + max as u32);
            if d.state == RolloutState::Halted { prop_assert!(d.start.is_empty()); }
            final_state = d.state;
            if matches!(d.state, RolloutState::Complete | RolloutState::Halted | RolloutState::Incomplete) && d.counts.in_progress == 0 {
                break;
            }
            // Nodes in flight advance one step; the last step succeeds or fails.
            for (i, n) in nodes.iter_mut().enumerate() {
                let inst = n.instance.as_mut().unwrap();
                if !inst.is_active() { continue; }
                steps_left[i] -= 1;
                if steps_left[i] == 0 {
                    n.cordoned = false;
                    if outcomes[i].1 {
                        inst.phase = Some(NodePhase::Failed);
                    } else {
                        inst.phase = Some(NodePhase::Succeeded);
                        inst.current_version = Some(V2.into());
                        n.os_version = V2.into();
                    }
                }
            }
        }
        let failures = outcomes.iter().filter(|o| o.1).count();
        if failures == 0 {
            prop_assert_eq!(final_state, RolloutState::Complete);
        } else {
            let failed = nodes.iter().filter(|n| n.instance.as_ref().unwrap().phase == Some(NodePhase::Failed)).count();
            let expected = if failed as u32 >= budget { RolloutState::Halted } else { RolloutState::Incomplete };
            prop_assert_eq!(final_state, expected);
        }
    }
}
