//! The proxy's watches, so that it waits for changes instead of asking again and again:
//! - [`Wakeups`]: its own OSInstance and Node (field selector `metadata.name`), which wake the
//!   loop when something the lifecycle reads may have changed;
//! - [`PodsOnNode`]: the pods of its node (field selector `spec.nodeName`), which a drain
//!   waits on until the evicted and terminating ones are gone.
//!
//! kube's `watcher` lists, watches, resumes after a dropped connection and lists again after
//! 410 Expired, with backoff. A watch that stalls without an error is ended by the server
//! after `timeoutSeconds` (kube's default, 290 s) and by the client shortly after; the loop
//! that waits on these also looks again on its own after a bounded time (`run::IDLE_RESYNC`,
//! `run::BUSY_RESYNC`), so a lost event delays it and never hangs it.

use crate::cordon;
use crate::lifecycle::NodeFacts;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use operator::crd::OsInstance;
use std::sync::Arc;
use tokio::sync::Notify;

/// Ends a background task with its owner.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the proxy's loop on a change of its OSInstance, or of what it reads of its Node.
pub(crate) struct Wakeups {
    changed: Arc<Notify>,
    _tasks: [AbortOnDrop; 2],
}

impl Wakeups {
    pub fn start(nodes: Api<Node>, instances: Api<OsInstance>, name: &str) -> Wakeups {
        let changed = Arc::new(Notify::new());
        let instance = tokio::spawn(on_instance_change(instances, name.into(), changed.clone()));
        let node = tokio::spawn(on_node_change(nodes, name.into(), changed.clone()));
        Wakeups {
            changed,
            _tasks: [AbortOnDrop(instance), AbortOnDrop(node)],
        }
    }

    /// Resolves at the next change, or at once when one came since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

async fn on_instance_change(api: Api<OsInstance>, name: String, changed: Arc<Notify>) {
    let events = watcher(api, by_name(&name)).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(error = %e, "OSInstance watch"),
        }
    }
}

/// Only a change of [`NodeFacts`] wakes the loop: the kubelet rewrites its Node's status
/// (heartbeats, images) without anything the lifecycle reads changing.
async fn on_node_change(api: Api<Node>, name: String, changed: Arc<Notify>) {
    let events = watcher(api, by_name(&name)).default_backoff();
    futures::pin_mut!(events);
    let mut last: Option<NodeFacts> = None;
    while let Some(event) = events.next().await {
        let facts = match event {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                Some(cordon::facts(&node))
            }
            Ok(watcher::Event::Delete(_)) => None,
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "Node watch");
                continue;
            }
        };
        if facts != last {
            last = facts;
            changed.notify_one();
        }
    }
}

/// The pods of one node as a watch keeps them, for a drain to wait on.
pub(crate) struct PodsOnNode {
    store: Store<Pod>,
    changed: Arc<Notify>,
    _task: AbortOnDrop,
}

impl PodsOnNode {
    pub fn start(client: &Client, node: &str) -> PodsOnNode {
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let api: Api<Pod> = Api::all(client.clone());
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let task = tokio::spawn(async move {
            let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => notify.notify_one(),
                    Err(e) => tracing::debug!(error = %e, "pod watch"),
                }
            }
        });
        PodsOnNode {
            store,
            changed,
            _task: AbortOnDrop(task),
        }
    }

    /// Resolves once the first list is in.
    pub async fn ready(&self) {
        // The writer lives as long as the task, which lives as long as `self`.
        let _ = self.store.wait_until_ready().await;
    }

    /// Resolves at the next change, or at once when one came since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The node's pod of that namespace and name now, if it is still the same pod (a pod of
    /// the same name with another uid is a replacement: the one asked for is gone). Only
    /// meaningful once [`ready`](Self::ready).
    pub fn current(&self, pod: &Pod) -> Option<Arc<Pod>> {
        let key = ObjectRef::new(&pod.name_any()).within(&pod.namespace().unwrap_or_default());
        self.store.get(&key).filter(|p| p.uid() == pod.uid())
    }
}
