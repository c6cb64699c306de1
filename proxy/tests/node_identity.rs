//! The OSInstance belongs to one Node, by uid: created with an owner reference to it (so the
//! garbage collector removes it with the Node), and never acted on when left by a deleted
//! Node of the same name.

mod common;

use common::*;
use fakekube::{Controller, FakeApiServer};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use operator::crd::{ownership, OsInstance, Ownership};
use proxy::Proxy;
use serde_json::json;
use std::time::{Duration, Instant};

async fn node_uid(client: &kube::Client) -> String {
    node(client, NODE).await.uid().unwrap()
}

async fn wait_gone(api: &Api<OsInstance>, uid: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while api
        .get_opt(NODE)
        .await
        .unwrap()
        .is_some_and(|o| o.uid().as_deref() == Some(uid))
    {
        assert!(Instant::now() < deadline, "the OSInstance is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_osinstance_it_creates_is_owned_by_its_node_and_goes_with_it() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let agent = FakeAgent::start("empty", "");
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(5)),
    );
    p.tick().await.unwrap();
    let osi = instance(&client).await;
    assert_eq!(ownership(&osi, &node_uid(&client).await), Ownership::Owned);

    Api::<Node>::all(client.clone())
        .delete(NODE, &DeleteParams::default())
        .await
        .unwrap();
    let api = Api::<OsInstance>::default_namespaced(client.clone());
    wait_gone(&api, &osi.uid().unwrap()).await;
}

#[tokio::test]
async fn an_osinstance_left_by_a_deleted_node_of_the_same_name_is_not_acted_on() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    // The garbage collector is slow: the old Node's OSInstance outlives it for a while.
    server.pause(Controller::GarbageCollector);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let api = Api::<OsInstance>::default_namespaced(client.clone());
    let owner = json!({"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid(&client).await}]}});
    api.patch(NODE, &PatchParams::default(), &Patch::Merge(owner))
        .await
        .unwrap();
    Api::<Node>::all(client.clone())
        .delete(NODE, &DeleteParams::default())
        .await
        .unwrap();
    create_node(&client, NODE, false).await;
    let new_uid = node_uid(&client).await;

    let agent = FakeAgent::start("written", NEW);
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(5)),
    );
    for _ in 0..3 {
        let step = p.tick().await.unwrap();
        assert_eq!(format!("{step:?}"), "Idle");
    }
    let n = node(&client, NODE).await;
    assert_ne!(
        n.spec.and_then(|s| s.unschedulable),
        Some(true),
        "the new node was cordoned for the old one's operation"
    );
    assert!(agent.calls().is_empty(), "{:?}", agent.calls());

    // Collected: the next tick starts the new node's own, idle.
    let stale = instance(&client).await.uid().unwrap();
    server.resume(Controller::GarbageCollector);
    wait_gone(&api, &stale).await;
    p.tick().await.unwrap();
    let fresh = instance(&client).await;
    assert_eq!(ownership(&fresh, &new_uid), Ownership::Owned);
    assert!(fresh.status.is_none(), "{:?}", fresh.status);
}

#[tokio::test]
async fn an_osinstance_without_a_node_owner_is_claimed_for_its_node() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let api = Api::<OsInstance>::default_namespaced(client.clone());
    let legacy = OsInstance::new(NODE, operator::crd::OsInstanceSpec::default());
    api.create(&Default::default(), &legacy).await.unwrap();
    let agent = FakeAgent::start("empty", "");
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(5)),
    );
    p.tick().await.unwrap();
    let osi = instance(&client).await;
    assert_eq!(ownership(&osi, &node_uid(&client).await), Ownership::Owned);
}
