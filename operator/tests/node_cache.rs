//! The operator's Node cache holds slim Nodes: real-sized Nodes (20 KB, images and managed
//! fields) go in through the watch, from the initial list and from later events, and what the
//! cache stores carries what the rollout reads and nothing big.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use operator::controller::node_cache;
use operator::rollout::NodeView;
use serde_json::json;

async fn create(nodes: &Api<Node>, name: &str) -> Node {
    let body = fakekube::sample::node(name, "KubeOS v1", true);
    let node: Node = serde_json::from_value(body).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap()
}

/// Waits until the cached `name` has the resourceVersion `rv`.
async fn cached_at(store: &Store<Node>, name: &str, rv: &str) -> Node {
    for _ in 0..200 {
        if let Some(n) = store.get(&ObjectRef::new(name)) {
            if n.metadata.resource_version.as_deref() == Some(rv) {
                return (*n).clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} at resourceVersion {rv} never reached the cache");
}

fn assert_slim(cached: &Node, served: &Node) {
    assert_eq!(
        NodeView::from_node(cached, None),
        NodeView::from_node(served, None),
        "the cache decides like the server's object"
    );
    assert_eq!(cached.metadata.uid, served.metadata.uid);
    assert!(cached.metadata.managed_fields.is_none());
    let status = cached.status.as_ref().unwrap();
    assert!(status.images.is_none(), "images dropped");
    let served_len = serde_json::to_vec(served).unwrap().len();
    let cached_len = serde_json::to_vec(cached).unwrap().len();
    assert!(served_len > 15_000, "served node of {served_len} bytes");
    assert!(cached_len < 1_500, "cached node of {cached_len} bytes");
}

#[tokio::test]
async fn the_node_cache_keeps_what_the_rollout_reads_and_drops_the_rest() {
    let server = fakekube::FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    let listed = create(&nodes, "node-a").await;

    let (tx, _changes) = tokio::sync::mpsc::channel(1);
    let (store, pump) = node_cache(server.client(), tx);
    let pump = tokio::spawn(pump);
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
        .await
        .expect("the cache synced")
        .unwrap();
    let rv = listed.metadata.resource_version.clone().unwrap();
    assert_slim(&cached_at(&store, "node-a", &rv).await, &listed);

    // Objects that arrive as watch events are cut down too.
    let added = create(&nodes, "node-b").await;
    let rv = added.metadata.resource_version.clone().unwrap();
    assert_slim(&cached_at(&store, "node-b", &rv).await, &added);
    let cordon = json!({"spec": {"unschedulable": true},
        "metadata": {"annotations": {"upgrade.openeuler.org/cordoned-by": "os-proxy"}}});
    let cordoned = nodes
        .patch("node-b", &PatchParams::default(), &Patch::Merge(cordon))
        .await
        .unwrap();
    let rv = cordoned.metadata.resource_version.clone().unwrap();
    let cached = cached_at(&store, "node-b", &rv).await;
    assert_slim(&cached, &cordoned);
    assert!(NodeView::from_node(&cached, None).cordoned);
    let annotations = cached.metadata.annotations.unwrap();
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["upgrade.openeuler.org/cordoned-by"],
        "only the project's own annotations stay"
    );
    pump.abort();
}
