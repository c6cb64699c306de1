//! WATCH through kube's raw `Api::watch` and kube-runtime's `watcher` and `reflector`.

mod common;

use std::time::Duration;

use common::{pod, within};
use fakekube::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

fn label_patch(key: &str, value: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"metadata": {"labels": {key: value}}}))
}

/// Reads watcher events until `InitDone`, returning the names listed.
async fn until_init_done(
    events: &mut (impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
) -> Vec<String> {
    let mut listed = Vec::new();
    loop {
        match within("the initial list", events.next())
            .await
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(p) => listed.push(p.name_any()),
            watcher::Event::InitDone => return listed,
            _ => {}
        }
    }
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted_in_order_across_bookmarks() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    assert!(until_init_done(&mut events).await.is_empty());

    pods.create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    // Let at least one bookmark through between events.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pods.patch("p", &PatchParams::default(), &label_patch("v", "2"))
        .await
        .unwrap();
    pods.delete("p", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 4 {
        match within("watch events", events.next())
            .await
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(p) => seen.push(("apply", p.labels().get("v").cloned())),
            watcher::Event::Delete(p) => seen.push(("delete", p.labels().get("v").cloned())),
            other => panic!("unexpected {other:?}"),
        }
    }
    let two = Some("2".to_string());
    // The delete first starts the pod's grace period (a modification), then its kubelet
    // removes it.
    assert_eq!(
        seen,
        [
            ("apply", None),
            ("apply", two.clone()),
            ("apply", two.clone()),
            ("delete", two)
        ]
    );
    assert_eq!(
        server.request_counts().watch,
        1,
        "the bookmark did not break the watch"
    );
}

#[tokio::test]
async fn raw_watch_sends_bookmarks_replays_history_and_times_out() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let created = pods
        .create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    let before = created.resource_version().unwrap();
    pods.patch("p", &PatchParams::default(), &label_patch("v", "2"))
        .await
        .unwrap();

    let wp = WatchParams::default().timeout(2);
    let events: Vec<_> = within(
        "a 2s watch",
        pods.watch(&wp, &before)
            .await
            .unwrap()
            .try_collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(
        matches!(&events[0], WatchEvent::Modified(p) if p.labels()["v"] == "2"),
        "{events:?}"
    );
    let bookmark = events.iter().find_map(|e| match e {
        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
        _ => None,
    });
    assert_eq!(bookmark, Some(server.resource_version().to_string()));

    let from_zero = pods
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let first = within("a synthetic ADDED", from_zero.boxed().next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Added(p) if p.name_any() == "p"));
}

#[tokio::test]
async fn selector_watch_reports_an_object_leaving_as_deleted() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let rv = server.resource_version().to_string();
    let wp = WatchParams::default().labels("app=web").timeout(5);
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    pods.create(&PostParams::default(), &pod("other", &[("app", "db")]))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("p", &[("app", "web")]))
        .await
        .unwrap();
    pods.patch("p", &PatchParams::default(), &label_patch("app", "db"))
        .await
        .unwrap();
    pods.patch("p", &PatchParams::default(), &label_patch("app", "web"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match within("selector events", stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(p) => kinds.push(format!("added {}", p.name_any())),
            WatchEvent::Deleted(p) => kinds.push(format!("deleted {}", p.name_any())),
            WatchEvent::Modified(p) => kinds.push(format!("modified {}", p.name_any())),
            _ => {}
        }
    }
    assert_eq!(kinds, ["added p", "deleted p", "added p"]);
}

#[tokio::test]
async fn watcher_pages_through_the_initial_list() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    for i in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), &[]))
            .await
            .unwrap();
    }
    let mut events = watcher(pods, watcher::Config::default().page_size(2)).boxed();
    let listed = until_init_done(&mut events).await;
    assert_eq!(listed, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(server.request_counts().list, 3);
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_end() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(&PostParams::default(), &pod("p", &[]))
        .await
        .unwrap();
    let mut events = watcher(pods, watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(until_init_done(&mut events).await, ["p"]);
    assert_eq!(server.request_counts().list, 0);
}

#[tokio::test]
async fn watch_from_a_compacted_version_expires_and_the_watcher_relists() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(&PostParams::default(), &pod("a", &[]))
        .await
        .unwrap();

    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut events = watcher(pods.clone(), config).boxed();
    assert_eq!(until_init_done(&mut events).await, ["a"]);
    pods.create(&PostParams::default(), &pod("b", &[]))
        .await
        .unwrap();
    let applied = within("b", events.next()).await.unwrap().unwrap();
    assert!(matches!(applied, watcher::Event::Apply(p) if p.name_any() == "b"));

    // A change the pod watch never sees, then compaction: its next watch is too old.
    let leases: Api<Lease> = Api::default_namespaced(server.client());
    let lease = serde_json::from_value(json!({"metadata": {"name": "l"}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    server.compact();

    let raw = pods
        .watch(&WatchParams::default().timeout(1), "2")
        .await
        .unwrap();
    let expired = within("410", raw.boxed().next()).await.unwrap().unwrap();
    assert!(matches!(expired, WatchEvent::Error(s) if s.code == 410 && s.reason == "Expired"));

    let mut saw_error = false;
    let relisted = loop {
        match within("the relist", events.next()).await.unwrap() {
            Err(_) => saw_error = true,
            Ok(watcher::Event::Init) => break until_init_done(&mut events).await,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_error, "the watcher reported the 410");
    assert_eq!(relisted, ["a", "b"]);
    assert_eq!(server.request_counts().list, 2);
}

#[tokio::test]
async fn reflector_store_converges() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    within("the store to be ready", reader.wait_until_ready())
        .await
        .unwrap();

    for name in ["a", "b", "c"] {
        pods.create(&PostParams::default(), &pod(name, &[]))
            .await
            .unwrap();
    }
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    pods.patch("c", &PatchParams::default(), &label_patch("done", "yes"))
        .await
        .unwrap();

    within("convergence", async {
        loop {
            let mut state: Vec<(String, bool)> = reader
                .state()
                .iter()
                .map(|p| (p.name_any(), p.labels().contains_key("done")))
                .collect();
            state.sort();
            if state == [("a".to_string(), false), ("c".to_string(), true)] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    task.abort();
}
