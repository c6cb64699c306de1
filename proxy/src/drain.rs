//! Draining a node through the Eviction API, so PodDisruptionBudgets hold.
//!
//! Which pods (KubeOS `proxy/src/controller/drain.rs`, kubectl drain):
//! - mirror pods (static pods, annotation `kubernetes.io/config.mirror`) cannot be evicted
//!   through the API: skipped;
//! - DaemonSet pods would be recreated at once (the DaemonSet controller ignores cordons):
//!   skipped, as `kubectl drain --ignore-daemonsets` (KubeOS refuses the drain instead unless
//!   `evictpodforce`; a DaemonSet on every node would then block every upgrade);
//! - Succeeded or Failed pods: skipped;
//! - pods already terminating (deleted by someone, or evicted before this proxy restarted) are
//!   not evicted again but waited for: the node must not reboot under a pod still in its
//!   grace period;
//! - with `evictpodforce: false`, a pod with no controller (nothing would recreate it) or with
//!   an `emptyDir` volume (its data dies with it) refuses the whole drain before anything is
//!   evicted; with `true` they are evicted like the rest (KubeOS semantics).
//!
//! A budget that refuses (429) is retried with exponential backoff, 1 s doubling to 10 s, until
//! the overall deadline; `evictpodforce` never bypasses a budget (KubeOS retries too). An
//! eviction refused with 403 because the pod's namespace is being deleted (`NamespaceTerminating`)
//! is no failure: the namespace controller deletes the pod, and the drain waits for it, as
//! `kubectl drain` does. At most [`EVICTIONS_AT_ONCE`] evictions are asked at a time. A pod
//! counts as gone when the watch of the node's pods no longer has it, or has a pod of that
//! name with another uid; nothing is polled. Failing to list the pods fails the drain: an
//! unknown set of pods is never "drained".

use crate::watches::PodsOnNode;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, timeout_at, Instant};

const MIRROR: &str = "kubernetes.io/config.mirror";
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Evictions asked at the same time; the others wait for one of them to be accepted or to
/// fail. A node with hundreds of pods does not send hundreds of requests in one instant.
pub const EVICTIONS_AT_ONCE: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// For the whole drain: evictions and waiting for the pods to go.
    pub timeout: Duration,
    /// `deleteOptions.gracePeriodSeconds` of each eviction; `None`: the pod's own.
    pub grace_seconds: Option<u32>,
    /// KubeOS `evictpodforce`.
    pub force: bool,
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Evict,
    /// Already terminating: not evicted again, but the drain waits until it is gone.
    Wait,
    Skip(&'static str),
    /// The drain may not proceed (without `evictpodforce`): why.
    Refuse(&'static str),
}

pub fn classify(pod: &Pod, force: bool) -> Verdict {
    let meta = &pod.metadata;
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR))
    {
        return Verdict::Skip("mirror pod");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Verdict::Skip("finished");
    }
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| o.kind == "DaemonSet") {
        return Verdict::Skip("DaemonSet pod");
    }
    // Going anyway: nothing to refuse or evict, but the node must not reboot under it.
    if meta.deletion_timestamp.is_some() {
        return Verdict::Wait;
    }
    if force {
        return Verdict::Evict;
    }
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    if volumes.into_iter().flatten().any(|v| v.empty_dir.is_some()) {
        return Verdict::Refuse("has emptyDir local storage");
    }
    if controller.is_none() {
        return Verdict::Refuse("has no controller to recreate it");
    }
    Verdict::Evict
}

/// The wait before retry number `attempt` (0-based) of a refused eviction.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(BACKOFF_CAP)
}

/// A pod the drain could not get rid of, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// `namespace/name`.
    pub pod: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("listing the pods of node {node}: {source}")]
    List { node: String, source: kube::Error },
    #[error(
        "node {node} cannot be drained without evictpodforce: {}",
        pods.iter().map(|b| format!("{} {}", b.pod, b.message)).collect::<Vec<_>>().join(", ")
    )]
    Refused { node: String, pods: Vec<Blocker> },
    #[error(
        "draining node {node} failed after {} s; blocking pods: {}",
        elapsed.as_secs(), describe(blockers)
    )]
    Blocked {
        node: String,
        elapsed: Duration,
        blockers: Vec<Blocker>,
    },
}

impl DrainError {
    /// The pods that stopped the drain (`namespace/name`).
    pub fn blocking_pods(&self) -> Vec<String> {
        match self {
            DrainError::List { .. } => vec![],
            DrainError::Refused { pods, .. } => pods.iter().map(|b| b.pod.clone()).collect(),
            DrainError::Blocked { blockers, .. } => {
                blockers.iter().map(|b| b.pod.clone()).collect()
            }
        }
    }
}

fn describe(blockers: &[Blocker]) -> String {
    let parts: Vec<String> = blockers
        .iter()
        .map(|b| format!("{} ({})", b.pod, b.message))
        .collect();
    parts.join(", ")
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// What a drain does: the pods to evict, and those already terminating to wait for.
#[derive(Debug, Default)]
pub struct Plan {
    pub evict: Vec<Pod>,
    pub wait: Vec<Pod>,
}

/// The pods to evict and to wait for, or the refusal. Pure, so the filter is testable without
/// a server.
pub fn select(node: &str, pods: Vec<Pod>, force: bool) -> Result<Plan, DrainError> {
    let mut plan = Plan::default();
    let mut refused = vec![];
    for pod in pods {
        match classify(&pod, force) {
            Verdict::Evict => plan.evict.push(pod),
            Verdict::Wait => plan.wait.push(pod),
            Verdict::Skip(why) => tracing::debug!(pod = key(&pod), why, "not evicting"),
            Verdict::Refuse(why) => refused.push(Blocker {
                pod: key(&pod),
                message: why.into(),
            }),
        }
    }
    if refused.is_empty() {
        Ok(plan)
    } else {
        Err(DrainError::Refused {
            node: node.into(),
            pods: refused,
        })
    }
}

/// Lists the node's pods and decides what the drain does with each.
pub async fn plan(client: &Client, node: &str, force: bool) -> Result<Plan, DrainError> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all
        .list(&lp)
        .await
        .map_err(|source| DrainError::List {
            node: node.into(),
            source,
        })?
        .items;
    select(node, pods, force)
}

/// Evicts the plan's pods, at most [`EVICTIONS_AT_ONCE`] at a time, and waits until they and
/// the terminating ones are gone, within `cfg.timeout` from `start`. Whether a pod is gone is
/// seen on a watch of the node's pods, not asked pod by pod. Returns how many were evicted.
pub async fn run(
    client: &Client,
    node: &str,
    plan: &Plan,
    cfg: &DrainConfig,
    start: Instant,
) -> Result<usize, DrainError> {
    let deadline = start + cfg.timeout;
    tracing::info!(
        node,
        evict = plan.evict.len(),
        terminating = plan.wait.len(),
        "draining"
    );
    // Watching from before the first eviction: no deletion can slip between the two.
    let pods = PodsOnNode::start(client, node);
    let evictions: Vec<_> = (0..plan.evict.len())
        .map(|i| evict_nth(client, &plan.evict, i, cfg, deadline))
        .collect();
    let evicted: Vec<(usize, Result<Evicted, Blocker>)> = futures::stream::iter(evictions)
        .buffer_unordered(EVICTIONS_AT_ONCE)
        .collect()
        .await;
    let mut blockers = vec![];
    let mut going: Vec<(&Pod, &str)> = plan.wait.iter().map(|p| (p, "not deleted")).collect();
    for (i, result) in evicted {
        match result {
            Ok(Evicted::Gone) => {}
            Ok(Evicted::Going(pending)) => going.push((&plan.evict[i], pending)),
            Err(b) => blockers.push(b),
        }
    }
    blockers.extend(wait_gone(&pods, &going, deadline).await);
    if blockers.is_empty() {
        Ok(plan.evict.len())
    } else {
        Err(DrainError::Blocked {
            node: node.into(),
            elapsed: start.elapsed(),
            blockers,
        })
    }
}

/// Plans and runs a drain: evicts every pod of `node` that should go and waits until they,
/// and the pods already terminating, are gone. Returns how many were evicted.
pub async fn drain(client: &Client, node: &str, cfg: &DrainConfig) -> Result<usize, DrainError> {
    let start = Instant::now();
    let plan = plan(client, node, cfg.force).await?;
    run(client, node, &plan, cfg, start).await
}

/// Whether an eviction was refused because the pod's namespace is being deleted
/// (NamespaceLifecycle's 403 with a `NamespaceTerminating` cause).
fn namespace_terminating(e: &kube::core::Status) -> bool {
    e.code == 403
        && e.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Where an eviction left a pod.
#[derive(Debug)]
enum Evicted {
    /// It was gone already (404).
    Gone,
    /// It is going (or its namespace controller will delete it); what it waits for when it
    /// has not even started terminating at the deadline.
    Going(&'static str),
}

/// [`evict`] of `pods[i]`, answering with `i`.
async fn evict_nth(
    client: &Client,
    pods: &[Pod],
    i: usize,
    cfg: &DrainConfig,
    deadline: Instant,
) -> (usize, Result<Evicted, Blocker>) {
    (i, evict(client, &pods[i], cfg, deadline).await)
}

/// Asks for the eviction until it is accepted, retrying refusals (429, 5xx) with backoff.
async fn evict(
    client: &Client,
    pod: &Pod,
    cfg: &DrainConfig,
    deadline: Instant,
) -> Result<Evicted, Blocker> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let blocker = |message: String| Blocker {
        pod: key(pod),
        message,
    };
    let params = EvictParams {
        delete_options: cfg.grace_seconds.map(|g| DeleteParams {
            grace_period_seconds: Some(g),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    let mut last = String::from("eviction not answered in time");
    for attempt in 0.. {
        match timeout_at(deadline, api.evict(&pod.name_any(), &params)).await {
            Err(_) => return Err(blocker(last)),
            Ok(Ok(_)) => return Ok(Evicted::Going("evicted, but not deleted")),
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => return Ok(Evicted::Gone),
            // kubectl drain's rule: the namespace controller deletes the pod; wait for it.
            Ok(Err(kube::Error::Api(e))) if namespace_terminating(&e) => {
                tracing::info!(
                    pod = key(pod),
                    "namespace being deleted; waiting for the pod to go"
                );
                return Ok(Evicted::Going(
                    "its namespace is being deleted, but the pod is not deleted yet",
                ));
            }
            // 429: a budget refuses for now; 5xx: KubeOS sees misconfigured budgets here.
            Ok(Err(kube::Error::Api(e))) if e.code == 429 || e.code >= 500 => {
                tracing::info!(pod = key(pod), code = e.code, message = %e.message, "eviction refused; retrying");
                last = e.message;
            }
            Ok(Err(e)) => return Err(blocker(format!("eviction failed: {e}"))),
        }
        let next = Instant::now() + backoff(attempt);
        if next >= deadline {
            sleep_until(deadline).await;
            return Err(blocker(last));
        }
        sleep_until(next).await;
    }
    unreachable!("the retry loop only ends by returning")
}

/// Waits until every pod of `going` is gone from the node's watched pods; at the deadline,
/// names those that are not and says why (with its `pending` text when a pod has not even
/// started terminating).
async fn wait_gone(pods: &PodsOnNode, going: &[(&Pod, &str)], deadline: Instant) -> Vec<Blocker> {
    let ready = going.is_empty() || timeout_at(deadline, pods.ready()).await.is_ok();
    loop {
        let left: Vec<(&Pod, &str, Option<Arc<Pod>>)> = going
            .iter()
            .filter_map(|(pod, pending)| {
                let now = pods.current(pod);
                (!ready || now.is_some()).then_some((*pod, *pending, now))
            })
            .collect();
        if left.is_empty() {
            return vec![];
        }
        if !ready || Instant::now() >= deadline {
            return left
                .into_iter()
                .map(|(pod, pending, now)| Blocker {
                    pod: key(pod),
                    message: still_terminating(now.as_deref().unwrap_or(pod), pending),
                })
                .collect();
        }
        let _ = timeout_at(deadline, pods.changed()).await;
    }
}

/// Why a pod blocks a drain at its deadline: it was asked to go, and has not.
fn still_terminating(pod: &Pod, pending: &str) -> String {
    match (
        &pod.metadata.deletion_timestamp,
        pod.metadata.deletion_grace_period_seconds,
    ) {
        (Some(at), Some(grace)) => format!(
            "still terminating; its grace period of {grace} s ends at {}",
            at.0
        ),
        _ => pending.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": "r", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn skips_mirror_daemonset_and_finished_pods_and_waits_for_terminating_ones() {
        let mirror = pod(json!({"metadata": {"annotations": {MIRROR: "x"}}}));
        assert_eq!(classify(&mirror, false), Verdict::Skip("mirror pod"));
        let ds = pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "d", "controller": true}]}}));
        assert_eq!(classify(&ds, false), Verdict::Skip("DaemonSet pod"));
        assert_eq!(classify(&ds, true), Verdict::Skip("DaemonSet pod"));
        let going = pod(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert_eq!(
            classify(&going, false),
            Verdict::Wait,
            "waited for, not skipped"
        );
        let unmanaged_going = pod(json!({"metadata": {"ownerReferences": null,
            "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert_eq!(
            classify(&unmanaged_going, false),
            Verdict::Wait,
            "going anyway"
        );
        let ds_going = pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d",
                                 "uid": "d", "controller": true}]}}),
        );
        assert_eq!(classify(&ds_going, false), Verdict::Skip("DaemonSet pod"));
        for phase in ["Succeeded", "Failed"] {
            let done = pod(json!({"status": {"phase": phase}}));
            assert_eq!(classify(&done, false), Verdict::Skip("finished"));
        }
        assert_eq!(classify(&pod(json!({})), false), Verdict::Evict);
    }

    #[test]
    fn evictpodforce_decides_unmanaged_and_emptydir_pods() {
        let bare = pod(json!({"metadata": {"ownerReferences": null}}));
        assert_eq!(
            classify(&bare, false),
            Verdict::Refuse("has no controller to recreate it")
        );
        assert_eq!(classify(&bare, true), Verdict::Evict);
        // An owner that is not its controller does not recreate it either.
        let owned = pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c"}]}}));
        assert!(matches!(classify(&owned, false), Verdict::Refuse(_)));
        let scratch = pod(json!({"spec": {"volumes": [{"name": "s", "emptyDir": {}}]}}));
        assert_eq!(
            classify(&scratch, false),
            Verdict::Refuse("has emptyDir local storage")
        );
        assert_eq!(classify(&scratch, true), Verdict::Evict);
    }

    #[test]
    fn a_refused_pod_refuses_the_whole_drain_and_is_named() {
        let bare = pod(json!({"metadata": {"name": "lonely", "ownerReferences": null}}));
        let err = select("n1", vec![pod(json!({})), bare], false).unwrap_err();
        assert_eq!(err.blocking_pods(), vec!["ns/lonely".to_string()]);
        assert_eq!(
            err.to_string(),
            "node n1 cannot be drained without evictpodforce: ns/lonely has no controller to \
             recreate it"
        );
        assert_eq!(
            select("n1", vec![pod(json!({}))], false)
                .unwrap()
                .evict
                .len(),
            1
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten() {
        let secs: Vec<u64> = (0..7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn blocked_error_names_pods_and_budget_messages() {
        let err = DrainError::Blocked {
            node: "n1".into(),
            elapsed: Duration::from_secs(3),
            blockers: vec![Blocker {
                pod: "ns/db-0".into(),
                message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            }],
        };
        assert_eq!(
            err.to_string(),
            "draining node n1 failed after 3 s; blocking pods: ns/db-0 (Cannot evict pod as it \
             would violate the pod's disruption budget.)"
        );
    }
}
