//! Graceful deletion, the namespace lifecycle, disruption accounting with a ReplicaSet that
//! replaces evicted pods, owner-reference garbage collection and Event validation.

mod common;

use std::time::{Duration, Instant};

use common::{api_status, pod};
use fakekube::{Controller, FakeApiServer};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

/// A client that surfaces 429s instead of retrying them.
fn client(server: &FakeApiServer) -> kube::Client {
    let mut config = server.config();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deleted_pod_terminates_for_its_grace_period_unless_its_kubelet_finishes() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    pods.create(&PostParams::default(), &pod("slow", &[]))
        .await
        .unwrap();
    server.hold_termination("default", "slow");
    let grace = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::default()
    };
    let start = Instant::now();
    pods.delete("slow", &grace).await.unwrap();
    let going = pods.get("slow").await.unwrap();
    assert!(going.metadata.deletion_timestamp.is_some());
    assert_eq!(going.metadata.deletion_grace_period_seconds, Some(1));
    wait_for(
        "the grace period to end",
        Duration::from_secs(5),
        async || pods.get_opt("slow").await.unwrap().is_none(),
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "gone before its grace period"
    );

    // Held for 30 s, released by the test: gone at once.
    pods.create(&PostParams::default(), &pod("held", &[]))
        .await
        .unwrap();
    server.hold_termination("default", "held");
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        pods.get_opt("held").await.unwrap().is_some(),
        "still terminating"
    );
    server.release_termination("default", "held");
    assert!(pods.get_opt("held").await.unwrap().is_none());
}

#[tokio::test]
async fn evictions_in_a_terminating_namespace_are_forbidden() {
    let server = FakeApiServer::start().await;
    let c = client(&server);
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "doomed");
    pods.create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    server.pause(Controller::Namespace);
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let status = namespaces.get("doomed").await.unwrap().status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Terminating"));

    let refused = api_status(pods.evict("p", &EvictParams::default()).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "pods \"p\" is forbidden: unable to create new content in namespace doomed because it \
         is being terminated"
    );
    let cause = &refused.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.reason, "NamespaceTerminating");
    let created = api_status(pods.create(&PostParams::default(), &pod("q", &[])).await);
    assert_eq!(created.code, 403);

    // The namespace controller deletes the pods, then the namespace.
    server.resume(Controller::Namespace);
    wait_for("the namespace to go", Duration::from_secs(5), async || {
        namespaces.get_opt("doomed").await.unwrap().is_none()
    })
    .await;
    assert!(pods.get_opt("p").await.unwrap().is_none());
}

async fn ready_node(nodes: &Api<Node>, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// A budget allows one eviction of three replicas with minAvailable 2, and the next only once
/// the ReplicaSet's replacement is Ready.
#[tokio::test]
async fn a_budget_allows_the_next_eviction_only_once_a_replacement_is_ready() {
    let server = FakeApiServer::start().await;
    server.set_pod_startup(Duration::from_millis(600));
    let c = client(&server);
    ready_node(&Api::all(c.clone()), "spare").await;
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::default_namespaced(c.clone());
    let set = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "db"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ready = async || -> Vec<Pod> {
        let all = pods.list(&ListParams::default()).await.unwrap().items;
        all.into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect()
    };
    wait_for("three Ready replicas", Duration::from_secs(5), async || {
        ready().await.len() == 3
    })
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(c.clone());
    let pdb = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}}))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let status = pdbs.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.current_healthy,
            status.desired_healthy,
            status.disruptions_allowed
        ),
        (3, 2, 1)
    );

    let names: Vec<String> = ready().await.iter().map(|p| p.name_any()).collect();
    server.hold_termination("default", &names[0]);
    pods.evict(&names[0], &EvictParams::default())
        .await
        .unwrap();
    let refused = api_status(pods.evict(&names[1], &EvictParams::default()).await);
    assert_eq!(refused.code, 429, "one disruption at a time");
    let evicted_at = Instant::now();
    // The replacement starts; then the budget allows the next eviction.
    wait_for("the next eviction", Duration::from_secs(5), async || {
        pods.evict(&names[1], &EvictParams::default()).await.is_ok()
    })
    .await;
    assert!(
        evicted_at.elapsed() >= Duration::from_millis(500),
        "allowed before the replacement was Ready"
    );
    let status = pdbs.get("db").await.unwrap().status.unwrap();
    assert_eq!(status.disruptions_allowed, 0);
    let replacements = pods.list(&ListParams::default()).await.unwrap().items;
    assert!(replacements
        .iter()
        .any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("spare")));
}

#[tokio::test]
async fn dependents_of_a_deleted_owner_are_collected_and_a_new_uid_is_another_owner() {
    let server = FakeApiServer::start().await;
    let c = client(&server);
    let nodes: Api<Node> = Api::all(c.clone());
    ready_node(&nodes, "n1").await;
    let uid = nodes.get("n1").await.unwrap().uid().unwrap();
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let owned = |name: &str, uid: &str| {
        let mut p = pod(name, &[]);
        p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid}))
        .unwrap()]);
        p.spec.as_mut().unwrap().node_name = None;
        p
    };
    pods.create(&PostParams::default(), &owned("mine", &uid))
        .await
        .unwrap();
    // An owner this server never held is not judged absent.
    pods.create(&PostParams::default(), &owned("foreign", "not-from-here"))
        .await
        .unwrap();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    ready_node(&nodes, "n1").await;
    wait_for("the dependent to go", Duration::from_secs(5), async || {
        pods.get_opt("mine").await.unwrap().is_none()
    })
    .await;
    assert!(pods.get_opt("foreign").await.unwrap().is_some());
}

#[tokio::test]
async fn events_with_notes_over_1024_bytes_are_invalid() {
    let server = FakeApiServer::start().await;
    let events: Api<Event> = Api::default_namespaced(client(&server));
    let event = |note: String| -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "e"}, "eventTime": "2026-01-01T00:00:00.000000Z",
            "type": "Warning", "reason": "NodeFailed", "action": "NodeFailed",
            "reportingController": "os-operator", "reportingInstance": "op",
            "note": note,
        }))
        .unwrap()
    };
    let err = api_status(
        events
            .create(&PostParams::default(), &event("ü".repeat(600)))
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("note: Too long"), "{}", err.message);
    events
        .create(&PostParams::default(), &event("ü".repeat(512)))
        .await
        .unwrap();
}
