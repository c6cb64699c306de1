//! Pod eviction against PodDisruptionBudgets through `Api::evict`.

mod common;

use common::{api_status, pod};
use fakekube::FakeApiServer;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A client that surfaces 429 at once: kube's default client retries it up to 15 times with
/// exponential backoff (minutes) before the caller sees it.
fn pods_api(server: &FakeApiServer) -> Api<Pod> {
    let mut config = server.config();
    config.default_retry = false;
    Api::default_namespaced(kube::Client::try_from(config).unwrap())
}

async fn ready_pod(pods: &Api<Pod>, name: &str, ready: bool) {
    pods.create(&PostParams::default(), &pod(name, &[("app", "web")]))
        .await
        .unwrap();
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn budget(server: &FakeApiServer, name: &str, spec: serde_json::Value) {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": "web"}});
    let pdb: PodDisruptionBudget =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(server.client());
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
}

#[tokio::test]
async fn eviction_follows_the_disruption_budget() {
    let server = FakeApiServer::start().await;
    let pods = pods_api(&server);
    for name in ["a", "b", "c"] {
        ready_pod(&pods, name, true).await;
    }
    budget(&server, "web", json!({"minAvailable": 2})).await;

    let ok = pods.evict("a", &EvictParams::default()).await.unwrap();
    assert_eq!(ok.code, 201);
    assert_eq!(
        api_status(pods.get("a").await).code,
        404,
        "an allowed eviction deletes the pod"
    );

    let logged = server.log().len();
    let refused = api_status(pods.evict("b", &EvictParams::default()).await);
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(
        server.log().len(),
        logged,
        "a refused eviction writes nothing"
    );
    assert_eq!(
        refused.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &refused.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    pods.get("b")
        .await
        .expect("a refused eviction keeps the pod");

    let log = server.log();
    let evictions: Vec<_> = log
        .iter()
        .filter(|e| e.name == "a")
        .map(|e| e.verb)
        .collect();
    // The eviction starts the pod's grace period (update) and is logged; the kubelet then
    // removes the pod (its containers stop at once here).
    assert_eq!(evictions, ["create", "patch", "update", "evict", "delete"]);
    assert_eq!(server.request_counts().evict, 2);
}

#[tokio::test]
async fn unready_pods_do_not_count_toward_the_budget() {
    let server = FakeApiServer::start().await;
    let pods = pods_api(&server);
    ready_pod(&pods, "a", true).await;
    ready_pod(&pods, "b", false).await;
    budget(&server, "web", json!({"maxUnavailable": 1})).await;
    // 2 selected, 1 may be unavailable: 1 healthy needed, 1 healthy now.
    let refused = api_status(pods.evict("a", &EvictParams::default()).await);
    assert_eq!(refused.code, 429);

    // A pending pod is evicted without consulting budgets.
    let pending = json!({"status": {"phase": "Pending"}});
    pods.patch_status("b", &PatchParams::default(), &Patch::Merge(pending))
        .await
        .unwrap();
    pods.evict("b", &EvictParams::default()).await.unwrap();
}

#[tokio::test]
async fn pods_without_budgets_or_status_are_evicted() {
    let server = FakeApiServer::start().await;
    let pods = pods_api(&server);
    pods.create(&PostParams::default(), &pod("free", &[("app", "other")]))
        .await
        .unwrap();
    budget(&server, "web", json!({"minAvailable": 1})).await;
    pods.evict("free", &EvictParams::default()).await.unwrap();

    // Status-less pods count as healthy: two of them satisfy minAvailable 1.
    for name in ["x", "y"] {
        pods.create(&PostParams::default(), &pod(name, &[("app", "web")]))
            .await
            .unwrap();
    }
    pods.evict("x", &EvictParams::default()).await.unwrap();
    assert_eq!(
        api_status(pods.evict("y", &EvictParams::default()).await).code,
        429
    );
}

#[tokio::test]
async fn missing_pods_and_overlapping_budgets_are_errors() {
    let server = FakeApiServer::start().await;
    let pods = pods_api(&server);
    let missing = api_status(pods.evict("ghost", &EvictParams::default()).await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    ready_pod(&pods, "a", true).await;
    ready_pod(&pods, "b", true).await;
    budget(&server, "one", json!({"maxUnavailable": 1})).await;
    budget(&server, "two", json!({"maxUnavailable": "50%"})).await;
    let both = api_status(pods.evict("a", &EvictParams::default()).await);
    assert_eq!((both.code, both.reason.as_str()), (500, "InternalError"));
    pods.get("a").await.unwrap();
}
