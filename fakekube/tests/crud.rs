//! Create, read, list, update, patch and delete through a real `kube::Client`.

mod common;

use common::{api_status, pod};
use fakekube::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use operator::crd::{NodePhase, NodeStatus, OsInstance, OsInstanceSpec, OsInstanceStatus};
use serde_json::json;

#[tokio::test]
async fn plain_http_client_creates_gets_and_pages_through_lists() {
    let server = FakeApiServer::start().await;
    assert!(server.url().starts_with("http://127.0.0.1:"));
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    for name in ["e", "b", "d", "a", "c"] {
        let app = if name < "c" { "web" } else { "db" };
        pods.create(&PostParams::default(), &pod(name, &[("app", app)]))
            .await
            .unwrap();
    }
    let got = pods.get("d").await.unwrap();
    assert_eq!(got.labels()["app"], "db");
    assert_eq!(got.namespace().as_deref(), Some("default"));

    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = pods.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        assert!(page
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .is_ok());
        names.extend(page.items.iter().map(|p| p.name_any()));
        match page.metadata.continue_ {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let web: Vec<_> = web.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(web, ["a", "b"]);
    let not_web = pods
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(not_web.items.len(), 3);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 5);
    let all: Api<Pod> = Api::all(server.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );
    let unsupported = api_status(
        pods.list(&ListParams::default().fields("spec.priority=1"))
            .await,
    );
    assert_eq!(unsupported.code, 400);
}

#[tokio::test]
async fn server_owns_uid_timestamps_generation_and_generate_name() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let mut template = pod("", &[]);
    template.metadata.name = None;
    template.metadata.generate_name = Some("worker-".into());
    let a = pods
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    let b = pods
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    assert!(a.name_any().starts_with("worker-") && a.name_any().len() == "worker-".len() + 5);
    assert_ne!(a.name_any(), b.name_any());
    assert_ne!(a.uid(), b.uid());
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.metadata.generation, Some(1));
    let rv_a: u64 = a.resource_version().unwrap().parse().unwrap();
    let rv_b: u64 = b.resource_version().unwrap().parse().unwrap();
    assert!(rv_b > rv_a);

    let again = api_status(pods.create(&PostParams::default(), &a).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    let missing = api_status(pods.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn merge_and_json_patches_apply_and_a_no_op_patch_changes_nothing() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(&PostParams::default(), &pod("p", &[("app", "web")]))
        .await
        .unwrap();
    let pp = PatchParams::default();

    let merged = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front", "app": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.labels().get("tier").map(String::as_str),
        Some("front")
    );
    assert!(!merged.labels().contains_key("app"));

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
        {"op": "replace", "path": "/metadata/labels/tier", "value": "back"},
    ]))
    .unwrap();
    let patched = pods.patch("p", &pp, &Patch::<()>::Json(ops)).await.unwrap();
    assert_eq!(patched.annotations()["k"], "v");
    assert_eq!(patched.labels()["tier"], "back");

    let failing: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/metadata/labels/tier", "value": "front"}]),
    )
    .unwrap();
    let invalid = api_status(pods.patch("p", &pp, &Patch::<()>::Json(failing)).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));

    let log_len = server.log().len();
    let rv = server.resource_version();
    let same = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "back"}}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), patched.resource_version());
    assert_eq!(server.resource_version(), rv);
    assert_eq!(server.log().len(), log_len);
}

#[tokio::test]
async fn stale_resource_version_is_a_409_conflict() {
    let server = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::default_namespaced(server.client());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "os-operator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let dup = api_status(leases.create(&PostParams::default(), &lease).await);
    assert_eq!(dup.code, 409);

    // Two candidates read the same version; only the first write wins.
    let mut by_a = created.clone();
    by_a.spec.as_mut().unwrap().holder_identity = Some("a".into());
    by_a.spec.as_mut().unwrap().lease_transitions = Some(1);
    let mut by_b = created.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let won = leases
        .replace("os-operator", &PostParams::default(), &by_a)
        .await
        .unwrap();
    assert_ne!(won.resource_version(), created.resource_version());
    let lost = api_status(
        leases
            .replace("os-operator", &PostParams::default(), &by_b)
            .await,
    );
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        leases
            .get("os-operator")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("a")
    );

    let stale_patch = Patch::Merge(
        json!({"metadata": {"resourceVersion": created.resource_version()},
        "spec": {"holderIdentity": "b"}}),
    );
    let conflict = api_status(
        leases
            .patch("os-operator", &PatchParams::default(), &stale_patch)
            .await,
    );
    assert_eq!(conflict.code, 409);
}

fn osinstance(name: &str) -> OsInstance {
    let mut osi = OsInstance::new(name, OsInstanceSpec::default());
    osi.status = Some(OsInstanceStatus {
        phase: Some(NodePhase::Failed),
        ..Default::default()
    });
    osi
}

#[tokio::test]
async fn status_subresource_separates_spec_and_status_writes() {
    let server = FakeApiServer::start().await;
    let osis: Api<OsInstance> = Api::default_namespaced(server.client());
    let created = osis
        .create(&PostParams::default(), &osinstance("node-1"))
        .await
        .unwrap();
    assert_eq!(created.status, None, "status is dropped on create");

    let status = json!({"status": {"phase": "Preparing", "progress": 10}, "spec": {"nodestatus": "upgrade"}});
    let after_status = osis
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        after_status.status.as_ref().unwrap().phase,
        Some(NodePhase::Preparing)
    );
    assert_eq!(
        after_status.spec.nodestatus,
        NodeStatus::Idle,
        "/status ignores spec"
    );
    assert_eq!(
        after_status.metadata.generation,
        Some(1),
        "status writes keep generation"
    );

    let main = json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Failed"}});
    let after_main = osis
        .patch("node-1", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .unwrap();
    assert_eq!(after_main.spec.nodestatus, NodeStatus::Upgrade);
    assert_eq!(
        after_main.status.as_ref().unwrap().phase,
        Some(NodePhase::Preparing),
        "main ignores status"
    );
    assert_eq!(
        after_main.metadata.generation,
        Some(2),
        "spec writes bump generation"
    );

    let mut replaced = after_main.clone();
    replaced.status.as_mut().unwrap().progress = Some(50);
    replaced.spec.nodestatus = NodeStatus::Idle;
    let after_replace = osis
        .replace_status("node-1", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(after_replace.status.unwrap().progress, Some(50));
    assert_eq!(after_replace.spec.nodestatus, NodeStatus::Upgrade);
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() {
    let server = FakeApiServer::start().await;
    let osis: Api<OsInstance> = Api::default_namespaced(server.client());
    let pp = PatchParams::apply("os-operator");
    let body = json!({"apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OSInstance",
        "metadata": {"name": "node-2", "labels": {"a": "1"}}, "spec": {"nodestatus": "config"}});
    let created = osis
        .patch("node-2", &pp, &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(created.spec.nodestatus, NodeStatus::Config);
    let body = json!({"apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OSInstance",
        "metadata": {"name": "node-2", "labels": {"b": "2"}}});
    let merged = osis
        .patch("node-2", &pp.force(), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(merged.labels().len(), 2);
    assert_eq!(merged.spec.nodestatus, NodeStatus::Config);
}

#[tokio::test]
async fn delete_returns_the_object_and_finalizers_hold_it() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(&PostParams::default(), &pod("gone", &[]))
        .await
        .unwrap();
    let deleted = pods.delete("gone", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        deleted.left().map(|p| p.name_any()).as_deref(),
        Some("gone")
    );
    assert_eq!(api_status(pods.get("gone").await).code, 404);
    assert_eq!(
        api_status(pods.delete("gone", &DeleteParams::default()).await).code,
        404
    );

    let mut held = pod("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    pods.create(&PostParams::default(), &held).await.unwrap();
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("held").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    pods.patch("held", &PatchParams::default(), &release)
        .await
        .unwrap();
    assert_eq!(api_status(pods.get("held").await).code, 404);
}

#[tokio::test]
async fn unknown_resources_are_404_status() {
    let server = FakeApiServer::start().await;
    let gvk = GroupVersionKind::gvk("", "v1", "ConfigMap");
    let cms: Api<DynamicObject> =
        Api::default_namespaced_with(server.client(), &ApiResource::from_gvk(&gvk));
    let status = api_status(cms.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        server.request_counts().other,
        0,
        "a known verb on an unknown path"
    );
}

#[tokio::test]
async fn fail_next_fails_exactly_the_matching_requests() {
    let server = FakeApiServer::start().await;
    let mut config = server.config();
    config.default_retry = false;
    let pods: Api<Pod> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    pods.create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    server.fail_next("get", "pods", 500, 2);
    server.fail_next("patch", "pods/status", 409, 1);
    assert_eq!(api_status(pods.get("p").await).code, 500);
    assert_eq!(api_status(pods.get("p").await).code, 500);
    pods.get("p").await.unwrap();
    let status_patch = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    let conflict = api_status(
        pods.patch_status("p", &PatchParams::default(), &status_patch)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    pods.patch_status("p", &PatchParams::default(), &status_patch)
        .await
        .unwrap();
    assert_eq!(server.request_counts().get, 3);

    // kube's default client retries 503 on its own: the caller never sees the fault.
    server.fail_next("get", "*", 503, 1);
    let retrying: Api<Pod> = Api::default_namespaced(server.client());
    retrying.get("p").await.unwrap();
    assert_eq!(server.request_counts().get, 5);
}

#[tokio::test]
async fn log_records_every_mutation_in_order() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    let mut p = pods.get("p").await.unwrap();
    p.labels_mut().insert("a".into(), "b".into());
    pods.replace("p", &PostParams::default(), &p).await.unwrap();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"c": "d"}}})),
    )
    .await
    .unwrap();
    pods.delete("p", &DeleteParams::default()).await.unwrap();

    let log = server.log();
    let verbs: Vec<_> = log.iter().map(|e| e.verb).collect();
    // A scheduled pod's delete starts its grace period (an update); its kubelet then removes
    // it (here at once: its containers stop as soon as asked).
    assert_eq!(verbs, ["create", "update", "patch", "update", "delete"]);
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(log[3].object["metadata"]["deletionTimestamp"].is_string());
    assert!(log
        .windows(2)
        .all(|w| w[0].resource_version < w[1].resource_version && w[0].at <= w[1].at));
    assert!(log.iter().all(|e| e.resource == "pods"
        && e.namespace.as_deref() == Some("default")
        && e.name == "p"));
    assert_eq!(log[2].object["metadata"]["labels"]["c"], "d");
    assert_eq!(
        log[4].object["metadata"]["labels"]["c"], "d",
        "delete logs the object before"
    );
    let counts = server.request_counts();
    assert_eq!(
        (
            counts.create,
            counts.get,
            counts.update,
            counts.patch,
            counts.delete
        ),
        (1, 1, 1, 1, 1)
    );
}
