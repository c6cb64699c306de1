//! Cordon discipline and drain failures against the fake API server, with a scripted agent.

mod common;

use common::*;
use fakekube::FakeApiServer;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use proxy::cordon::{self, Outcome, CORDONED_BY};
use proxy::Proxy;
use std::time::{Duration, Instant};

fn annotated(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CORDONED_BY))
}

fn unschedulable(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

#[tokio::test]
async fn an_admins_cordon_is_never_claimed_nor_lifted() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, "admin", true).await;
    let nodes = Api::all(client.clone());
    let before = server.log().len();
    assert_eq!(
        cordon::cordon(&nodes, "admin").await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        cordon::uncordon(&nodes, "admin").await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(server.log().len(), before, "nothing written");
    let n = node(&client, "admin").await;
    assert!(unschedulable(&n) && !annotated(&n));
}

#[tokio::test]
async fn our_cordon_is_one_patch_and_is_lifted_with_its_annotation() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let nodes = Api::all(client.clone());
    let before = server.log().len();
    assert_eq!(
        cordon::cordon(&nodes, NODE).await.unwrap(),
        Outcome::Patched
    );
    let log = server.log();
    assert_eq!(log.len(), before + 1, "one patch");
    let obj = &log.last().unwrap().object;
    assert_eq!(obj["spec"]["unschedulable"], true);
    assert_eq!(obj["metadata"]["annotations"][CORDONED_BY], "os-proxy");
    assert_eq!(
        cordon::cordon(&nodes, NODE).await.unwrap(),
        Outcome::Unchanged
    );

    assert_eq!(
        cordon::uncordon(&nodes, NODE).await.unwrap(),
        Outcome::Patched
    );
    let n = node(&client, NODE).await;
    assert!(!unschedulable(&n) && !annotated(&n));
    assert_eq!(
        cordon::uncordon(&nodes, NODE).await.unwrap(),
        Outcome::Unchanged
    );
}

#[tokio::test]
async fn a_conflicting_cordon_is_decided_again() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    server.fail_next("patch", "nodes", 409, 1);
    let nodes = Api::all(client.clone());
    assert_eq!(
        cordon::cordon(&nodes, NODE).await.unwrap(),
        Outcome::Patched
    );
    assert!(annotated(&node(&client, NODE).await));
}

/// n1 with its image prepared (B written with v2) and the operation at Draining.
async fn draining_node(server: &FakeApiServer) -> (kube::Client, FakeAgent) {
    let client = client(server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    (client, FakeAgent::start("written", NEW))
}

#[tokio::test]
async fn a_budget_that_never_allows_eviction_fails_the_drain_without_reboot() {
    let server = FakeApiServer::start().await;
    let (client, agent) = draining_node(&server).await;
    web_pod(&client, "web-0").await;
    strict_budget(&client).await;
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(3)),
    );

    let start = Instant::now();
    let steps = tick_until(&p, &client, 10, |o| phase(o).as_deref() == Some("Failed")).await;
    assert_eq!(steps[..2], ["Cordon".to_string(), "Drain(Activate)".into()]);
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "the drain waited for its deadline"
    );

    let osi = instance(&client).await;
    let status = osi.status.unwrap();
    let error = status.last_error.unwrap();
    assert!(error.contains("default/web-0"), "{error}");
    assert!(error.contains("disruption budget"), "{error}");
    assert!(status.finished_at.is_some());
    assert_eq!(osi.spec.nodestatus, operator::crd::NodeStatus::Idle);

    let n = node(&client, NODE).await;
    assert!(!unschedulable(&n) && !annotated(&n), "uncordoned");
    assert!(agent.calls().is_empty(), "no upgrade: {:?}", agent.calls());

    let events: Api<Event> = Api::all(client.clone());
    let events = events.list(&ListParams::default()).await.unwrap().items;
    let drain_failed = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("DrainFailed"))
        .expect("a DrainFailed event");
    let regarding = drain_failed.regarding.as_ref().unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Node"), Some(NODE))
    );
    assert!(drain_failed
        .note
        .as_ref()
        .unwrap()
        .contains("default/web-0"));
}

#[tokio::test]
async fn a_failed_pod_list_fails_the_step_instead_of_skipping_it() {
    let server = FakeApiServer::start().await;
    let (client, agent) = draining_node(&server).await;
    web_pod(&client, "web-0").await;
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(30)),
    );
    server.fail_next("list", "pods", 500, 1);
    tick_until(&p, &client, 10, |o| phase(o).as_deref() == Some("Failed")).await;
    let error = instance(&client).await.status.unwrap().last_error.unwrap();
    assert!(error.starts_with("listing the pods of node n1"), "{error}");
    assert!(agent.calls().is_empty(), "no upgrade: {:?}", agent.calls());
    let n = node(&client, NODE).await;
    assert!(!unschedulable(&n) && !annotated(&n), "uncordoned");
    // The pod was never evicted.
    Api::<k8s_openapi::api::core::v1::Pod>::default_namespaced(client.clone())
        .get("web-0")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pre_cordoned_node_is_drained_and_stays_cordoned_after_failure() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, true).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let agent = FakeAgent::start("written", NEW);
    web_pod(&client, "web-0").await;
    strict_budget(&client).await;
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(1)),
    );
    let steps = tick_until(&p, &client, 10, |o| phase(o).as_deref() == Some("Failed")).await;
    assert_eq!(steps[0], "Drain(Activate)", "no cordon of ours");
    let n = node(&client, NODE).await;
    assert!(
        unschedulable(&n) && !annotated(&n),
        "the admin's cordon stays"
    );
}
