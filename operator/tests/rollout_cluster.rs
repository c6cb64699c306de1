//! Issue 6 acceptance, against the fake API server with the real `os-operator` binary and
//! simulated nodes: the unavailability budget holds at every logged instant, the failure
//! budget halts, a standby replica waits for the lease, a restart repeats nothing.

mod support;

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use operator::audit::{events, max_unavailable, phase_changes, starts};
use operator::crd::RolloutState;
use serde_json::json;
use support::*;

const STEP: Duration = Duration::from_millis(150);

fn state(os: &operator::crd::Os) -> Option<RolloutState> {
    os.status.as_ref().and_then(|s| s.state)
}

fn condition(os: &operator::crd::Os, type_: &str) -> Option<String> {
    let c = os
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some(c.status.clone())
}

/// Sets `spec.abort` on the OS.
async fn abort(cluster: &Cluster) {
    let api: kube::Api<operator::crd::Os> = kube::Api::namespaced(cluster.client.clone(), NS);
    let body = json!({"spec": {"abort": true}});
    api.patch("os", &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap();
}

/// Waits (at most a minute) until the rollout is `Aborted`.
async fn wait_aborted(cluster: &Cluster) -> operator::crd::Os {
    cluster
        .wait_os(Duration::from_secs(60), "Aborted", |os| {
            state(os) == Some(RolloutState::Aborted)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_maxunavailable_three_never_exceeds_three_and_completes() {
    let cluster = Cluster::start("twenty_nodes").await;
    let nodes = cluster.add_nodes(20).await;
    let _sim = cluster.simulate_nodes(&nodes, &[], STEP);
    cluster.create_os(upgrade_spec(3, 1)).await;
    let _op = cluster.operator("op-a");

    let os = cluster
        .wait_os(Duration::from_secs(120), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    let status = os.status.unwrap();
    assert_eq!((status.target, status.updated, status.failed), (20, 20, 0));
    assert_eq!(
        condition(&cluster.os().await, "Complete").as_deref(),
        Some("True")
    );

    let log = cluster.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 3, "{max} nodes unavailable at log entry {seq}");
    assert_eq!(max, 3, "the rollout should use its whole budget");
    let starts = starts(mutations(&log));
    assert_eq!(
        starts.len(),
        20,
        "each node started exactly once: {starts:?}"
    );
    let events = events(mutations(&log));
    let count = |reason: &str| events.iter().filter(|e| e.reason == reason).count();
    assert_eq!(count("NodeStarted"), 20);
    assert_eq!(count("NodeSucceeded"), 20);
    assert_eq!(count("RolloutComplete"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_with_budget_two_halt_the_rollout() {
    let cluster = Cluster::start("failure_budget").await;
    let nodes = cluster.add_nodes(20).await;
    // node-00 and node-01 are in the first batch (workers start by name).
    let _sim = cluster.simulate_nodes(&nodes, &["node-00", "node-01"], STEP);
    cluster.create_os(upgrade_spec(3, 2)).await;
    let op = cluster.operator("op-a");

    let os = cluster
        .wait_os(Duration::from_secs(60), "Halted", |os| {
            state(os) == Some(RolloutState::Halted)
        })
        .await;
    assert_eq!(os.status.as_ref().unwrap().failed, 2);
    assert_eq!(condition(&os, "Halted").as_deref(), Some("True"));
    // Nodes already started finish; then nothing moves for a while.
    cluster
        .wait_os(Duration::from_secs(30), "no node in progress", |os| {
            os.status.as_ref().is_some_and(|s| s.in_progress == 0)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let log = cluster.log();
    let failures = phase_changes(mutations(&log), "Failed");
    assert_eq!(failures.len(), 2, "{failures:?}");
    // Nothing starts once the operator has seen the second failure, which its Halted status
    // write shows. (A start can still land between the second failure's write and that: the
    // operator decides on its watch cache, and a node may fail a moment after any decision;
    // under load one did, node-03 started on a view where node-01 was still upgrading.)
    let halted_at = mutations(&log)
        .find(|m| m.resource == "os" && m.object["status"]["state"] == "Halted")
        .map(|m| m.seq)
        .expect("the operator wrote the Halted state");
    assert!(
        halted_at > failures[1].0,
        "halted before the second failure"
    );
    let late: Vec<_> = starts(mutations(&log))
        .into_iter()
        .filter(|s| s.0 > halted_at)
        .collect();
    assert!(
        late.is_empty(),
        "nodes started after the operator wrote Halted (seq {halted_at}): {late:?}"
    );
    let os = cluster.os().await;
    assert_eq!(state(&os), Some(RolloutState::Halted));
    let status = os.status.unwrap();
    assert_eq!(status.failed_nodes, ["node-00", "node-01"]);
    assert!(status.pending > 0, "the halt left nodes to do: {status:?}");
    let events = events(mutations(&log));
    assert_eq!(
        events.iter().filter(|e| e.reason == "NodeFailed").count(),
        2
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason == "RolloutHalted")
            .count(),
        1
    );
    assert!(op
        .metrics()
        .contains("os_operator_nodes_failed_total{os=\"default/os\"} 2"));
}

/// Issue 17: events.k8s.io refuses notes over 1024 bytes, and a node's `lastError` (which
/// the NodeFailed note embeds) can be longer: the note is cut, at a character boundary, and
/// the failure is still announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_with_a_long_error_is_announced_with_a_cut_note() {
    let cluster = Cluster::start("long_error").await;
    let nodes = cluster.add_nodes(2).await;
    // Three-byte characters: no cut at 1024 bytes falls on a character boundary by luck.
    let error = format!("drain failed; blocking pods: {}", "ü€".repeat(800));
    let _sim = cluster.simulate_nodes_failing_with(&nodes, &["node-00"], STEP, Some(error));
    cluster.create_os(upgrade_spec(1, 1)).await;
    let _op = cluster.operator("op-a");
    cluster
        .wait_os(Duration::from_secs(60), "Halted", |os| {
            state(os) == Some(RolloutState::Halted)
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let note = loop {
        let log = cluster.log();
        let failed = events(mutations(&log))
            .into_iter()
            .find(|e| e.reason == "NodeFailed")
            .map(|e| e.note);
        if let Some(note) = failed {
            break note;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no NodeFailed event was accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(note.starts_with("node node-00 failed"), "{note}");
    assert!(note.ends_with('…'), "the cut is marked: {note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_waits_until_the_leaders_lease_expires() {
    let cluster = Cluster::start("two_replicas").await;
    let nodes = cluster.add_nodes(6).await;
    let _sim = cluster.simulate_nodes(&nodes, &[], Duration::from_millis(400));
    let mut a = cluster.operator("op-a");
    wait_leader(&a).await;
    let b = cluster.operator("op-b");
    cluster.create_os(upgrade_spec(1, 1)).await;
    cluster
        .wait_os(Duration::from_secs(30), "two nodes updated", |os| {
            os.status.as_ref().is_some_and(|s| s.updated >= 2)
        })
        .await;
    assert!(
        b.metrics().contains("os_operator_leader 0"),
        "b must be passive"
    );
    let before_kill = cluster.log().last().unwrap().seq;
    a.kill();

    cluster
        .wait_os(Duration::from_secs(60), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    let log = cluster.log();
    let reporters: Vec<_> = events(mutations(&log));
    assert!(
        reporters
            .iter()
            .filter(|e| e.seq <= before_kill)
            .all(|e| e.reporting_instance == "op-a"),
        "only the leader acts while it holds the lease: {reporters:?}"
    );
    assert!(
        reporters.iter().any(|e| e.reporting_instance == "op-b"),
        "b took over"
    );
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 1, "{max} nodes unavailable at log entry {seq}");
    assert_eq!(starts(mutations(&log)).len(), 6);
    assert!(b.metrics().contains("os_operator_leader 1"));
}

async fn wait_leader(op: &Operator) {
    for _ in 0..100 {
        if op
            .try_metrics()
            .is_ok_and(|m| m.contains("os_operator_leader 1"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never became leader", op.identity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_operator_mid_rollout_repeats_nothing() {
    let cluster = Cluster::start("restart").await;
    let nodes = cluster.add_nodes(12).await;
    let _sim = cluster.simulate_nodes(&nodes, &[], STEP);
    cluster.create_os(upgrade_spec(3, 1)).await;
    let mut first = cluster.operator("op-a");
    cluster
        .wait_os(Duration::from_secs(60), "four nodes updated", |os| {
            os.status.as_ref().is_some_and(|s| s.updated >= 4)
        })
        .await;
    first.kill();
    let _second = cluster.operator("op-a2");
    cluster
        .wait_os(Duration::from_secs(90), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;

    let log = cluster.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 3, "{max} nodes unavailable at log entry {seq}");
    let starts = starts(mutations(&log));
    assert_eq!(
        starts.len(),
        12,
        "a finished node was started again: {starts:?}"
    );
    let succeeded = events(mutations(&log))
        .into_iter()
        .filter(|e| e.reason == "NodeSucceeded")
        .count();
    assert_eq!(
        succeeded, 12,
        "each success announced once across the restart"
    );
}

/// Issue 17: `maxunavailable: "20%"`, a node annotated to be skipped, and an abort in the
/// middle, with the real operator: at most 20% of the nodes are ever unavailable, the skipped
/// node is never started, nothing starts once the operator has seen the abort, nodes already
/// started finish, and the rollout ends `Aborted` with nodes left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_budget_skip_annotation_and_abort() {
    let cluster = Cluster::start("percent_skip_abort").await;
    let nodes = cluster.add_nodes(10).await;
    let node_api: kube::Api<k8s_openapi::api::core::v1::Node> =
        kube::Api::all(cluster.client.clone());
    let skip = json!({"metadata": {"annotations": {operator::rollout::SKIP_ANNOTATION: "true"}}});
    node_api
        .patch("node-01", &PatchParams::default(), &Patch::Merge(&skip))
        .await
        .unwrap();
    // Slow nodes, so the abort lands while some are in flight.
    let _sim = cluster.simulate_nodes(&nodes, &[], Duration::from_millis(400));
    let mut spec = upgrade_spec(1, 1);
    spec["maxunavailable"] = json!("20%");
    cluster.create_os(spec).await;
    let _op = cluster.operator("op-a");

    cluster
        .wait_os(Duration::from_secs(60), "two nodes updated", |os| {
            os.status.as_ref().is_some_and(|s| s.updated >= 2)
        })
        .await;
    abort(&cluster).await;
    let os = wait_aborted(&cluster).await;
    let status = os.status.unwrap();
    assert_eq!(status.in_progress, 0);
    assert_eq!(status.skipped, 1);
    assert!(status.pending > 0, "the abort left nodes to do: {status:?}");
    assert_eq!(
        status.updated + status.pending + status.skipped,
        10,
        "{status:?}"
    );
    assert_eq!(
        condition(&cluster.os().await, "Aborted").as_deref(),
        Some("True")
    );

    let log = cluster.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert_eq!(max, 2, "20% of 10 nodes, reached at log entry {seq}");
    let starts = starts(mutations(&log));
    assert!(
        !starts.iter().any(|s| s.1 == "node-01"),
        "the skipped node was started: {starts:?}"
    );
    // The first status the operator wrote after seeing the abort.
    let seen = mutations(&log)
        .find(|m| {
            m.resource == "os"
                && ["Aborting", "Aborted"]
                    .contains(&m.object["status"]["state"].as_str().unwrap_or(""))
        })
        .expect("an Aborting or Aborted status")
        .seq;
    let late: Vec<_> = starts.iter().filter(|s| s.0 > seen).collect();
    assert!(
        late.is_empty(),
        "nodes started after the abort was seen: {late:?}"
    );
    // Every node started finished: updated = started.
    assert_eq!(status.updated as usize, starts.len(), "{starts:?}");
    let events = events(mutations(&log));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason == "RolloutAborted")
            .count(),
        1
    );
}

/// `spec.abort` withdraws an operation no proxy took up: node-02 has no proxy, so its
/// operation stays `Assigned`. Without the withdrawal the rollout would stay `Aborting` until
/// the node timed out and then count it failed; with it, node-02 is handed back idle and
/// untouched, the nodes already in flight finish, and the rollout is `Aborted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_withdraws_an_operation_no_proxy_took_up() {
    use operator::crd::{NodePhase, NodeStatus, OsInstance};
    let cluster = Cluster::start("abort_withdraws").await;
    let nodes = cluster.add_nodes(3).await;
    let _sim = cluster.simulate_nodes(&nodes[..2], &[], Duration::from_millis(400));
    cluster.create_os(upgrade_spec(3, 1)).await;
    let _op = cluster.operator("op-a");
    let instances: kube::Api<OsInstance> = kube::Api::namespaced(cluster.client.clone(), NS);
    let phase = |osi: &OsInstance| osi.status.as_ref().and_then(|s| s.phase);
    let start = std::time::Instant::now();
    loop {
        let a = phase(&instances.get("node-00").await.unwrap());
        let c = instances.get("node-02").await.unwrap();
        if phase(&c) == Some(NodePhase::Assigned)
            && c.spec.nodestatus == NodeStatus::Upgrade
            && a.is_some_and(|p| p != NodePhase::Assigned && p.is_active())
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "node-02 never assigned while node-00 is in flight: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    abort(&cluster).await;
    let os = wait_aborted(&cluster).await;
    let status = os.status.unwrap();
    assert_eq!(
        (
            status.updated,
            status.pending,
            status.failed,
            status.in_progress
        ),
        (2, 1, 0, 0),
        "{status:?}"
    );
    let c = instances.get("node-02").await.unwrap();
    assert_eq!(c.spec.nodestatus, NodeStatus::Idle, "{c:?}");
    let cs = c.status.unwrap();
    assert_eq!(cs.phase, Some(NodePhase::Idle), "{cs:?}");
    assert_eq!(
        cs.step.as_deref(),
        Some("withdrawn by spec.abort before the node's proxy took it up")
    );
    assert!(cs.last_error.is_none(), "{cs:?}");
    let log = cluster.log();
    let withdrawn: Vec<_> = events(mutations(&log))
        .into_iter()
        .filter(|e| e.reason == "NodeWithdrawn")
        .map(|e| e.related)
        .collect();
    assert_eq!(withdrawn, ["node-02"]);
    assert!(
        !events(mutations(&log))
            .iter()
            .any(|e| e.reason == "NodeFailed"),
        "nothing failed"
    );
}

/// An operator that crashed between the two writes of a start leaves an instance `Assigned`
/// with an idle spec; normally the next operator writes the spec again. When the OS is
/// aborted meanwhile, it is withdrawn instead: its spec is not repaired (the simulated proxy
/// would then take it up), its status goes back to `Idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_withdraws_a_half_started_node_instead_of_repairing_its_spec() {
    use operator::crd::{NodePhase, NodeStatus, OsInstance};
    let cluster = Cluster::start("abort_half_started").await;
    let nodes = cluster.add_nodes(2).await;
    let instances: kube::Api<OsInstance> = kube::Api::namespaced(cluster.client.clone(), NS);
    let assigned = json!({"status": {"phase": "Assigned", "operation": "upgrade",
        "targetVersion": NEW, "startedAt": jiff::Timestamp::now().to_string()}});
    instances
        .patch_status("node-01", &PatchParams::default(), &Patch::Merge(&assigned))
        .await
        .unwrap();
    let _sim = cluster.simulate_nodes(&nodes, &[], STEP);
    let mut spec = upgrade_spec(1, 1);
    spec["abort"] = json!(true);
    cluster.create_os(spec).await;
    let _op = cluster.operator("op-a");
    let os = wait_aborted(&cluster).await;
    let status = os.status.unwrap();
    assert_eq!(
        (status.updated, status.pending, status.in_progress),
        (0, 2, 0),
        "{status:?}"
    );
    let osi = instances.get("node-01").await.unwrap();
    assert_eq!(osi.spec.nodestatus, NodeStatus::Idle, "{osi:?}");
    assert_eq!(
        osi.status.as_ref().and_then(|s| s.phase),
        Some(NodePhase::Idle)
    );
    let log = cluster.log();
    assert!(
        !mutations(&log).any(|m| m.resource == "osinstances"
            && m.name == "node-01"
            && m.object["spec"]["nodestatus"] == "upgrade"),
        "the spec of the half-started node was repaired"
    );
}
