//! Issue 17: OSInstances follow their Node's identity. The OSInstance of a deleted Node is
//! removed; a Node registered again under the same name (new uid) starts fresh, whatever the
//! OSInstance its predecessor left says, even while the garbage collector has not removed it.

mod support;

use std::time::{Duration, Instant};

use fakekube::Controller;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use operator::crd::{node_owner, OsInstance, OsInstanceSpec, RolloutState};
use serde_json::json;
use support::*;

const STEP: Duration = Duration::from_millis(100);

async fn wait(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_nodes_lose_their_osinstance_and_a_new_node_of_the_same_name_starts_fresh() {
    let cluster = Cluster::start("node_identity").await;
    // A slow garbage collector: only the operator can clean up in time.
    cluster.server.pause(Controller::GarbageCollector);
    let names = cluster.add_nodes(3).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let instances: Api<OsInstance> = Api::namespaced(cluster.client.clone(), NS);

    // node-00 was mid-upgrade (Draining, counted unavailable) when its machine was
    // reinstalled: its OSInstance, owned by the old Node, outlives it.
    let old = nodes.get("node-00").await.unwrap();
    let owned = json!({"metadata": {"ownerReferences": [node_owner(&old).unwrap()]},
        "spec": {"nodestatus": "upgrade"}});
    instances
        .patch("node-00", &PatchParams::default(), &Patch::Merge(owned))
        .await
        .unwrap();
    let started = json!({"status": {"phase": "Draining", "operation": "upgrade",
        "targetVersion": NEW, "startedAt": jiff::Timestamp::now().to_string()}});
    instances
        .patch_status("node-00", &PatchParams::default(), &Patch::Merge(started))
        .await
        .unwrap();
    let stale_uid = instances.get("node-00").await.unwrap().uid().unwrap();
    nodes
        .delete("node-00", &DeleteParams::default())
        .await
        .unwrap();
    let again: Node = serde_json::from_value(json!({"metadata": {"name": "node-00"}})).unwrap();
    nodes.create(&PostParams::default(), &again).await.unwrap();
    set_node_ready(&nodes, "node-00", OLD).await;
    // node-02 is gone for good; its OSInstance (from before owner references) stays behind.
    nodes
        .delete("node-02", &DeleteParams::default())
        .await
        .unwrap();

    let _sim = cluster.simulate_nodes(&names[..2], &[], STEP);
    // maxunavailable 1: the stale Draining instance would hold the only slot forever.
    cluster.create_os(upgrade_spec(1, 1)).await;
    let _op = cluster.operator("op-a");

    wait(
        "the stale OSInstance to go",
        Duration::from_secs(20),
        async || {
            instances
                .get_opt("node-00")
                .await
                .unwrap()
                .is_none_or(|o| o.uid().as_deref() != Some(stale_uid.as_str()))
        },
    )
    .await;
    wait(
        "node-02's OSInstance to go",
        Duration::from_secs(20),
        async || instances.get_opt("node-02").await.unwrap().is_none(),
    )
    .await;
    // The new node-00's proxy creates its own.
    let mut fresh = OsInstance::new("node-00", OsInstanceSpec::default());
    let new_node = nodes.get("node-00").await.unwrap();
    fresh.metadata.owner_references = Some(vec![node_owner(&new_node).unwrap()]);
    instances
        .create(&PostParams::default(), &fresh)
        .await
        .unwrap();

    let os = cluster
        .wait_os(Duration::from_secs(60), "Complete", |os| {
            os.status.as_ref().and_then(|s| s.state) == Some(RolloutState::Complete)
        })
        .await;
    let status = os.status.unwrap();
    assert_eq!((status.target, status.updated), (2, 2), "{status:?}");
}
