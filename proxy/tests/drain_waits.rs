//! The drain waits for pods that are going away before the node reboots: pods already
//! terminating (a proxy restarted mid-drain finds its evicted pods in their grace period) and
//! pods in a namespace being deleted (their eviction is Forbidden). A budget over replicas on
//! two nodes draining at once allows one eviction at a time.

mod common;

use common::*;
use fakekube::{Controller, FakeApiServer};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use proxy::Proxy;
use serde_json::json;
use std::time::{Duration, Instant};

/// The log's sequence number of the first entry matching `f`.
fn first(server: &FakeApiServer, f: impl Fn(&fakekube::LogEntry) -> bool) -> Option<u64> {
    server.log().iter().find(|e| f(e)).map(|e| e.seq)
}

fn rebooting_written(e: &fakekube::LogEntry) -> bool {
    e.resource == "osinstances" && e.object["status"]["phase"] == "Rebooting"
}

async fn draining_node(
    server: &FakeApiServer,
    drain_timeout: Duration,
) -> (kube::Client, Proxy, FakeAgent) {
    let client = client(server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let agent = FakeAgent::start("written", NEW);
    let p = Proxy::new(client.clone(), proxy_config(&agent.socket, drain_timeout));
    (client, p, agent)
}

/// Deletes `web-0` (30 s grace) with its containers ignoring the stop signal.
async fn terminating_web_pod(server: &FakeApiServer, client: &kube::Client) {
    web_pod(client, "web-0").await;
    server.hold_termination("default", "web-0");
    Api::<Pod>::default_namespaced(client.clone())
        .delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pod_already_terminating_is_gone_before_the_node_reboots() {
    let server = FakeApiServer::start().await;
    let (client, p, agent) = draining_node(&server, Duration::from_secs(10)).await;
    terminating_web_pod(&server, &client).await;

    let start = Instant::now();
    let ticks = async {
        tick_until(&p, &client, 20, |o| {
            phase(o).as_deref() == Some("Rebooting")
        })
        .await
    };
    // The pod's containers stop 1.5 s into the drain.
    let (steps, ()) = tokio::join!(ticks, async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.release_termination("default", "web-0");
    });
    assert!(steps.contains(&"Drain(Activate)".to_string()), "{steps:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the drain did not wait for the terminating pod"
    );
    let gone = first(&server, |e| e.verb == "delete" && e.name == "web-0").expect("web-0 gone");
    let rebooting = first(&server, rebooting_written).expect("Rebooting written");
    assert!(
        gone < rebooting,
        "Rebooting (log {rebooting}) before web-0 was gone (log {gone})"
    );
    assert_eq!(agent.calls(), ["upgrade"]);
}

#[tokio::test]
async fn a_pod_still_terminating_at_the_drain_timeout_fails_the_drain_and_names_it() {
    let server = FakeApiServer::start().await;
    let (client, p, agent) = draining_node(&server, Duration::from_secs(1)).await;
    terminating_web_pod(&server, &client).await;

    tick_until(&p, &client, 10, |o| phase(o).as_deref() == Some("Failed")).await;
    let error = instance(&client).await.status.unwrap().last_error.unwrap();
    assert!(error.contains("default/web-0"), "{error}");
    assert!(error.contains("still terminating"), "{error}");
    assert!(agent.calls().is_empty(), "no upgrade: {:?}", agent.calls());
}

#[tokio::test]
async fn a_pod_in_a_namespace_being_deleted_is_waited_for_not_failed() {
    let server = FakeApiServer::start().await;
    let (client, p, agent) = draining_node(&server, Duration::from_secs(10)).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "job-0", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "job", "uid": "rs-9", "controller": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("job-0", &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
    // The namespace is Terminating; its controller has not reached the pod yet.
    server.pause(Controller::Namespace);
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();

    let ticks = async {
        tick_until(&p, &client, 20, |o| {
            matches!(phase(o).as_deref(), Some("Rebooting" | "Failed"))
        })
        .await
    };
    let (_, ()) = tokio::join!(ticks, async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        server.resume(Controller::Namespace);
    });
    let osi = instance(&client).await;
    assert_eq!(
        phase(&osi).as_deref(),
        Some("Rebooting"),
        "{:?}",
        osi.status.and_then(|s| s.last_error)
    );
    let gone = first(&server, |e| e.verb == "delete" && e.name == "job-0").expect("job-0 gone");
    let rebooting = first(&server, rebooting_written).unwrap();
    assert!(gone < rebooting);
    assert_eq!(agent.calls(), ["upgrade"]);
}

/// Pods `app=db` Ready and not terminating after each entry of the server's log.
fn ready_db_pods_over_time(log: &[fakekube::LogEntry]) -> Vec<(u64, usize)> {
    let mut pods = std::collections::BTreeMap::new();
    let mut counts = Vec::new();
    for e in log.iter().filter(|e| e.resource == "pods") {
        if e.verb == "delete" {
            pods.remove(&e.name);
        } else if e.verb != "evict" {
            pods.insert(e.name.clone(), e.object.clone());
        }
        let ready = pods
            .values()
            .filter(|p| p["metadata"]["labels"]["app"] == "db")
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        counts.push((e.seq, ready));
    }
    counts
}

/// Issue 17: three replicas behind `minAvailable: 2`, two on n1 and one on n2, both nodes
/// draining at once. The budget allows one eviction until a replacement (on the spare node)
/// is Ready; the drains retry their 429s and both finish, and at no point are fewer than two
/// replicas Ready.
#[tokio::test]
async fn a_budget_over_replicas_on_two_nodes_draining_at_once_keeps_two_ready() {
    let server = FakeApiServer::start().await;
    server.set_pod_startup(Duration::from_millis(500));
    // Containers take a moment to stop: an evicted replica terminates for a while.
    server.set_pod_shutdown(Duration::from_millis(300));
    let client = client(&server);
    create_node(&client, "n1", false).await;
    create_node(&client, "n2", false).await;
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::default_namespaced(client.clone());
    let set = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "db"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = pods.list(&Default::default()).await.unwrap().items;
        let running = listed
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "replicas not running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pdb = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}}))
    .unwrap();
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::default_namespaced(client.clone())
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    // Replacements go to the spare node once the two drained nodes are cordoned.
    create_node(&client, "spare", false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let api = Api::<operator::crd::OsInstance>::default_namespaced(client.clone());
    let osi = json!({"metadata": {"name": "n2", "namespace": "default"},
        "spec": {"nodestatus": "upgrade", "namespacedname": {"name": "os", "namespace": "default"}}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(osi).unwrap(),
    )
    .await
    .unwrap();
    let status = json!({"status": {"phase": "Draining", "operation": "upgrade",
        "targetVersion": NEW, "progress": 0}});
    api.patch_status("n2", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    let agents = [
        FakeAgent::start("written", NEW),
        FakeAgent::start("written", NEW),
    ];
    let proxies: Vec<Proxy> = ["n1", "n2"]
        .iter()
        .zip(&agents)
        .map(|(node, agent)| {
            let mut cfg = proxy_config(&agent.socket, Duration::from_secs(20));
            cfg.node_name = node.to_string();
            Proxy::new(client.clone(), cfg)
        })
        .collect();
    let (one, two) = tokio::join!(
        drive(&api, "n1", &proxies[0]),
        drive(&api, "n2", &proxies[1])
    );
    assert_eq!(
        (one.as_deref(), two.as_deref()),
        (Some("Rebooting"), Some("Rebooting")),
        "{:?}",
        instance(&client).await.status
    );
    let log = server.log();
    let counts = ready_db_pods_over_time(&log);
    let from = counts.iter().position(|(_, n)| *n == 3).unwrap();
    let low = counts[from..].iter().find(|(_, n)| *n < 2);
    assert!(
        low.is_none(),
        "fewer than two replicas Ready at log entry {low:?}"
    );
    let evictions = log.iter().filter(|e| e.verb == "evict").count();
    assert_eq!(evictions, 3, "each replica on a draining node evicted once");
    let on_spare = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("spare"))
        .count();
    assert_eq!(on_spare, 3, "the replacements run on the spare node");
}

/// Ticks `node`'s proxy until its drain ended (Rebooting or Failed); returns that phase.
async fn drive(api: &Api<operator::crd::OsInstance>, node: &str, proxy: &Proxy) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let osi = api.get(node).await.unwrap();
        if phase(&osi).is_some_and(|ph| ph == "Rebooting" || ph == "Failed") {
            return phase(&osi);
        }
        assert!(Instant::now() < deadline, "{node} not drained: {osi:?}");
        proxy.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
