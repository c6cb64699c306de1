//! A proxy waits on watches, not by asking again and again: while it waits for a reboot, while
//! it is idle, and while its drain waits for pods to go, the API requests it makes do not grow
//! with the time it waits; what it waits for still wakes it.

mod common;

use common::*;
use fakekube::FakeApiServer;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use operator::crd::OsInstance;
use proxy::agent_client::{Slot, SlotState};
use proxy::cordon::{CORDONED_BY, CORDONED_BY_US};
use proxy::Proxy;
use serde_json::json;
use std::time::{Duration, Instant};

/// Polls (as the test, not the proxy) until `done` holds for the OSInstance.
async fn wait_for(client: &kube::Client, what: &str, done: impl Fn(&OsInstance) -> bool) {
    let api = Api::<OsInstance>::default_namespaced(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(osi) = api.get_opt(NODE).await.unwrap() {
            if done(&osi) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step(osi: &OsInstance) -> String {
    osi.status
        .as_ref()
        .and_then(|s| s.step.clone())
        .unwrap_or_default()
}

/// The requests made from `from` on, after `quiet` without the test doing anything.
async fn requests_over(requests: &Requests, quiet: Duration) -> Vec<String> {
    let from = requests.all().len();
    tokio::time::sleep(quiet).await;
    requests.all()[from..].to_vec()
}

#[tokio::test]
async fn a_proxy_waiting_for_a_reboot_asks_nothing_until_the_agent_answers_otherwise() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Rebooting", NEW).await;
    let agent = FakeAgent::start("written", NEW);
    agent.set(|s| {
        s.trial = Some(Slot::B);
        s.tries = 3;
    });
    let (proxy_client, requests) = counting_client(&server);
    // poll_interval 50 ms: a proxy that looked at the API server every interval would
    // make some 40 rounds of GETs in the 2 s below.
    let p = Proxy::new(
        proxy_client,
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    let running = tokio::spawn(async move { p.run().await });
    wait_for(&client, "waiting for the reboot", |o| {
        step(o).starts_with("waiting for the reboot")
    })
    .await;
    // The step's own write comes back on the OSInstance watch once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = requests_over(&requests, Duration::from_secs(2)).await;
    assert!(during.is_empty(), "requests while waiting: {during:?}");

    // The node comes back on B, on trial: the agent's answer changes the step.
    agent.set(|s| {
        s.booted = Slot::B;
        s.on_trial = true;
    });
    wait_for(&client, "Confirming", |o| {
        phase(o).as_deref() == Some("Confirming")
    })
    .await;
    // The health gate commits B.
    agent.set(|s| {
        s.active = Slot::B;
        s.trial = None;
        s.tries = 0;
        s.on_trial = false;
        s.slots.b.state = SlotState::Good;
    });
    wait_for(&client, "Succeeded", |o| {
        phase(o).as_deref() == Some("Succeeded")
    })
    .await;
    running.abort();
}

#[tokio::test]
async fn an_idle_proxy_sleeps_through_node_updates_it_does_not_read_and_wakes_for_its_cordon() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let agent = FakeAgent::start("empty", "");
    let (proxy_client, requests) = counting_client(&server);
    let p = Proxy::new(
        proxy_client,
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    let running = tokio::spawn(async move { p.run().await });
    // It creates its OSInstance, idle.
    wait_for(&client, "created", |_| true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The kubelet rewrites its status: heartbeats, the images on the node.
    let nodes: Api<Node> = Api::all(client.clone());
    let from = requests.all().len();
    for i in 0..10 {
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True",
                "lastHeartbeatTime": format!("2025-06-01T08:00:{i:02}Z")}],
            "images": [{"names": [format!("registry.example.com/app:v{i}")], "sizeBytes": 1000}],
        }});
        nodes
            .patch_status(NODE, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = requests.all()[from..].to_vec();
    assert!(during.is_empty(), "requests while idle: {during:?}");

    // Its own cordon on an idle node (left by a proxy killed before it lifted it): the Node
    // watch wakes it, long before any resync, and it lifts the cordon.
    let cordon = json!({"spec": {"unschedulable": true},
        "metadata": {"annotations": {CORDONED_BY: CORDONED_BY_US}}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(cordon))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node(&client, NODE).await.spec.unwrap().unschedulable == Some(true) {
        assert!(Instant::now() < deadline, "the idle proxy did not wake");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
}

#[tokio::test]
async fn a_drain_sees_its_pods_go_on_a_watch_without_asking_for_each() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let agent = FakeAgent::start("written", NEW);
    web_pod(&client, "web-0").await;
    web_pod(&client, "web-1").await;
    // Evicted pods take 1.5 s to stop: 30 poll intervals of 50 ms.
    server.set_pod_shutdown(Duration::from_millis(1500));
    let (proxy_client, requests) = counting_client(&server);
    let p = Proxy::new(
        proxy_client,
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    assert_eq!(format!("{:?}", p.tick().await.unwrap()), "Cordon");
    let start = Instant::now();
    assert_eq!(format!("{:?}", p.tick().await.unwrap()), "Drain(Activate)");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the drain waited for the pods"
    );
    assert_eq!(
        phase(&instance(&client).await).as_deref(),
        Some("Rebooting")
    );
    let evictions = requests.count("POST /api/v1/namespaces/default/pods/");
    let pod_gets = requests.count("GET /api/v1/namespaces/default/pods/");
    assert_eq!((evictions, pod_gets), (2, 0), "{:#?}", requests.all());
}
