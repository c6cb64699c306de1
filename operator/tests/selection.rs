//! Issue 17: which nodes an OS drives when selection changes under it. A node deselected in
//! the middle of its operation still counts against `maxunavailable` until it finishes, and
//! two OS resources selecting the same nodes for different targets report the conflict and
//! leave those nodes alone instead of upgrading them back and forth.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};
use operator::audit::{events, max_unavailable, starts};
use operator::crd::{NodePhase, Os, OsInstance, RolloutState};
use support::*;

fn state(os: &Os) -> Option<RolloutState> {
    os.status.as_ref().and_then(|s| s.state)
}

fn condition(os: &Os, type_: &str) -> Option<String> {
    os.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deselected_mid_operation_still_counts_until_it_finishes() {
    let cluster = Cluster::start("deselected").await;
    let names = cluster.add_nodes(2).await;
    for n in &names {
        cluster.label_node(n, "pool-a").await;
    }
    // Slow nodes: node-00 is in flight for seconds.
    let _sim = cluster.simulate_nodes(&names, &[], Duration::from_millis(1500));
    let mut spec = upgrade_spec(1, 1);
    spec["nodeselector"] = "pool-a".into();
    cluster.create_os(spec).await;
    let _op = cluster.operator("op-a");

    let instances: Api<OsInstance> = Api::namespaced(cluster.client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let phase = instances
            .get("node-00")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase);
        if phase.is_some_and(|p| p.is_active() && p != NodePhase::Assigned) {
            break;
        }
        assert!(Instant::now() < deadline, "node-00 never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.label_node("node-00", "pool-b").await;
    let os = cluster
        .wait_os(Duration::from_secs(60), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    assert_eq!(os.status.unwrap().target, 1);
    let log = cluster.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 1, "{max} nodes unavailable at log entry {seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_os_resources_selecting_the_same_nodes_report_it_and_leave_them_alone() {
    let cluster = Cluster::start("contested").await;
    let names = cluster.add_nodes(3).await;
    cluster.label_node("node-00", "x").await;
    cluster.label_node("node-01", "x").await;
    let _sim = cluster.simulate_nodes(&names, &[], Duration::from_millis(100));
    // `os` drives every node to v2; `os-x` drives node-00 and node-01 to v3.
    cluster.create_os(upgrade_spec(3, 1)).await;
    let mut other = upgrade_spec(3, 1);
    other["nodeselector"] = "x".into();
    other["osversion"] = "KubeOS v3".into();
    cluster.create_named_os("os-x", other).await;
    let _op = cluster.operator("op-a");

    let os = cluster
        .wait_os(Duration::from_secs(30), "the conflict reported", |os| {
            condition(os, "SelectorConflict").as_deref() == Some("True")
                && os.status.as_ref().is_some_and(|s| s.updated == 1)
        })
        .await;
    let message = os.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("os-x"), "{message}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = cluster.log();
    let started: Vec<String> = starts(mutations(&log)).into_iter().map(|s| s.1).collect();
    assert_eq!(started, ["node-02"], "only the uncontested node starts");
    let warned = events(mutations(&log))
        .into_iter()
        .filter(|e| e.reason == "SelectorConflict")
        .count();
    assert!(warned >= 2, "each OS announces the conflict");

    // One OS goes: the other drives its nodes.
    let api: Api<Os> = Api::namespaced(cluster.client.clone(), NS);
    api.delete("os-x", &DeleteParams::default()).await.unwrap();
    let os = cluster
        .wait_os(Duration::from_secs(60), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    assert_eq!(condition(&os, "SelectorConflict").as_deref(), Some("False"));
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for n in &names {
        let node = nodes.get(n).await.unwrap();
        let image = node.status.unwrap().node_info.unwrap().os_image;
        assert_eq!(image, NEW, "{n}");
    }
}
