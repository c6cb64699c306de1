//! One OS resource, one pass: observe (caches plus this operator's unseen writes), decide,
//! apply the decision, announce results, write the status. Everything that is decided lives in
//! `rollout`; this file only reads and writes.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::metrics::Metrics;
use super::writes::{self, Overlay, Writer, FIELD_MANAGER, REPORTED_ANNOTATION};
use crate::crd::{NodePhase, OpsType, Os, OsInstance, OsStatus, RolloutState};
use crate::rollout::{decide, os_status, Decision, Observed, Plan};

/// What every reconcile shares: the client, the caches, the event recorder and the metrics.
pub struct Shared {
    pub client: Client,
    pub nodes: Store<Node>,
    pub instances: Store<OsInstance>,
    pub recorder: Recorder,
    /// This operator's identity, the `reportingInstance` of its events.
    pub identity: String,
    pub metrics: Arc<Metrics>,
    pub overlay: Overlay,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot start the operation on node {node}: {source}")]
    Start { node: String, source: kube::Error },
    #[error("cannot record the failure of node {node}: {source}")]
    MarkFailed { node: String, source: kube::Error },
    #[error("cannot withdraw the operation of node {node}: {source}")]
    Withdraw { node: String, source: kube::Error },
    #[error("cannot write the spec of OSInstance {node}: {source}")]
    RepairSpec { node: String, source: kube::Error },
    #[error("cannot write the status of OS {os}: {source}")]
    Status { os: String, source: kube::Error },
}

/// When to look again without an event: the decision's `next_check`, or soon after a write
/// lost a race (409) so the next decision sees the winner's change.
pub struct Outcome {
    pub next_check: Option<Timestamp>,
    pub conflict: bool,
}

/// One pass over `os`; `oses` are all OS resources (to find others selecting its nodes).
pub async fn reconcile_os(
    sh: &Shared,
    os: &Os,
    oses: &[Arc<Os>],
    now: Timestamp,
) -> Result<Outcome, ReconcileError> {
    let namespace = os.namespace().unwrap_or_default();
    let cached = sh
        .instances
        .state()
        .into_iter()
        .filter(|i| i.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .collect();
    let instances = sh.overlay.apply(cached);
    let nodes = sh.nodes.state();
    let others: Vec<(String, &crate::crd::OsSpec)> = oses
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|o| o.name_any() != os.name_any())
        .map(|o| (format!("{namespace}/{}", o.name_any()), &o.spec))
        .collect();
    let observed = Observed::from_cluster(
        nodes.iter().map(|n| n.as_ref()),
        instances.iter().map(|i| i.as_ref()),
    )
    .with_contested(&os.spec, &others);
    let decision = decide(&os.spec, &observed, now);
    let by_name: HashMap<&str, &OsInstance> = instances
        .iter()
        .filter_map(|i| Some((i.metadata.name.as_deref()?, i.as_ref())))
        .collect();
    let api: Api<OsInstance> = Api::namespaced(sh.client.clone(), &namespace);
    let writer = Writer {
        api,
        overlay: &sh.overlay,
    };
    let ctx = OsCtx {
        sh,
        os,
        os_ref: os.object_ref(&()),
        key: format!("{namespace}/{}", os.name_any()),
        writer,
        now,
    };
    let mut conflict = false;
    conflict |= ctx.mark_failures(&decision, &by_name).await?;
    if let Ok(plan) = Plan::from_spec(&os.spec) {
        conflict |= ctx.withdraw_nodes(&decision, &plan, &by_name).await?;
        conflict |= ctx.repair_specs(&plan, &decision, &instances).await?;
        conflict |= ctx.start_nodes(&decision, &plan, &by_name).await?;
        ctx.announce_results(&decision, &plan, &instances).await;
        ctx.rollout_metrics(&plan, &instances, &decision);
    }
    ctx.write_status(&decision).await?;
    Ok(Outcome {
        next_check: decision.next_check,
        conflict,
    })
}

struct OsCtx<'a> {
    sh: &'a Shared,
    os: &'a Os,
    os_ref: ObjectReference,
    key: String,
    writer: Writer<'a>,
    now: Timestamp,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

fn reported_key(operation: Option<OpsType>, target: Option<&str>, phase: NodePhase) -> String {
    let op = operation.map_or_else(String::new, |o| {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    });
    format!("{op}/{}/{phase:?}", target.unwrap_or_default())
}

impl OsCtx<'_> {
    async fn event(&self, type_: EventType, reason: &str, node: Option<&str>, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(crate::note::note(&note)),
            action: reason.to_string(),
            secondary: node.map(node_ref),
        };
        if let Err(e) = self.sh.recorder.publish(&ev, &self.os_ref).await {
            warn!(os = %self.key, reason, error = %e, "cannot publish event");
        }
    }

    /// Publishes a node's result as an Event whose name follows from the OS,
    /// the node and the result (`key`): published again (an operator killed
    /// before it recorded the announcement), it already exists and is not
    /// repeated. So a result is announced exactly once across restarts.
    async fn announce_once(
        &self,
        type_: EventType,
        reason: &str,
        node: &str,
        note: String,
        key: &str,
    ) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let os = self.os_ref.name.clone().unwrap_or_default();
        // FNV-1a: a stable, short suffix (not a security boundary).
        let hash = format!("{os}\0{node}\0{reason}\0{key}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let namespace = self.os_ref.namespace.clone();
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{os}.{node}.{hash:016x}")),
                namespace: namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(reason.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(crate::note::note(&note)),
            event_time: Some(MicroTime(Timestamp::now())),
            regarding: Some(self.os_ref.clone()),
            related: Some(node_ref(node)),
            reporting_controller: Some("os-operator".into()),
            reporting_instance: Some(self.sh.identity.clone()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(
            self.sh.client.clone(),
            namespace.as_deref().unwrap_or("default"),
        );
        match api.create(&kube::api::PostParams::default(), &event).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Returns whether a write lost a race.
    async fn mark_failures(
        &self,
        decision: &Decision,
        by_name: &HashMap<&str, &OsInstance>,
    ) -> Result<bool, ReconcileError> {
        for failure in &decision.mark_failed {
            let Some(osi) = by_name.get(failure.node.as_str()) else {
                continue;
            };
            let status = osi.status.clone().unwrap_or_default();
            let reported = reported_key(
                status.operation,
                status.target_version.as_deref(),
                NodePhase::Failed,
            );
            let reason = failure.reason.to_string();
            match self
                .writer
                .mark_failed(osi, &reason, &reported, self.now)
                .await
            {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => return Ok(true),
                Err(source) => {
                    return Err(ReconcileError::MarkFailed {
                        node: failure.node.clone(),
                        source,
                    })
                }
            }
            warn!(os = %self.key, node = %failure.node, %reason, "node failed");
            self.sh.metrics.inc_node_failed(&self.key);
            let note = format!("node {} failed: {reason}", failure.node);
            self.event(EventType::Warning, "NodeFailed", Some(&failure.node), note)
                .await;
        }
        Ok(false)
    }

    /// Withdraws the operations `spec.abort` found still `Assigned`; returns whether a write
    /// lost a race (the proxy took the operation up first: it goes on).
    async fn withdraw_nodes(
        &self,
        decision: &Decision,
        plan: &Plan,
        by_name: &HashMap<&str, &OsInstance>,
    ) -> Result<bool, ReconcileError> {
        for node in &decision.withdraw {
            let Some(osi) = by_name.get(node.as_str()) else {
                continue;
            };
            match self.writer.withdraw(osi, self.now).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => return Ok(true),
                Err(source) => {
                    return Err(ReconcileError::Withdraw {
                        node: node.clone(),
                        source,
                    })
                }
            }
            info!(os = %self.key, %node, "operation withdrawn by spec.abort before the node started it");
            let note = format!(
                "{:?} of node {node} to {} withdrawn by spec.abort before the node started it",
                plan.operation, plan.target
            );
            self.event(EventType::Normal, "NodeWithdrawn", Some(node), note)
                .await;
        }
        Ok(false)
    }

    async fn repair_specs(
        &self,
        plan: &Plan,
        decision: &Decision,
        instances: &[Arc<OsInstance>],
    ) -> Result<bool, ReconcileError> {
        let spec = self.start_spec(plan);
        for osi in instances.iter().filter(|i| {
            writes::needs_spec_repair(i, plan.operation, &plan.target)
                && !decision.withdraw.contains(&i.name_any())
        }) {
            let node = osi.name_any();
            match self.writer.repair_spec(osi, spec.clone()).await {
                Ok(_) => info!(os = %self.key, %node, "rewrote the lost spec of an assigned node"),
                Err(e) if is_conflict(&e) => return Ok(true),
                Err(source) => return Err(ReconcileError::RepairSpec { node, source }),
            }
        }
        Ok(false)
    }

    fn start_spec(&self, plan: &Plan) -> serde_json::Value {
        writes::start_spec(
            &self.os.spec,
            plan.operation,
            &self.os.name_any(),
            &self.os.namespace().unwrap_or_default(),
        )
    }

    async fn start_nodes(
        &self,
        decision: &Decision,
        plan: &Plan,
        by_name: &HashMap<&str, &OsInstance>,
    ) -> Result<bool, ReconcileError> {
        let spec = self.start_spec(plan);
        for node in &decision.start {
            let Some(osi) = by_name.get(node.as_str()) else {
                continue;
            };
            let status = writes::start_status(plan.operation, &plan.target, self.now);
            match self.writer.start(osi, status, spec.clone()).await {
                Ok(_) => {}
                // Someone changed the node's instance since the cache saw it: decide again.
                Err(e) if is_conflict(&e) => return Ok(true),
                Err(source) => {
                    return Err(ReconcileError::Start {
                        node: node.clone(),
                        source,
                    })
                }
            }
            info!(os = %self.key, %node, operation = ?plan.operation, target = %plan.target, "node started");
            self.sh.metrics.inc_node_started(&self.key);
            let note = format!(
                "{:?} of node {node} to {} started",
                plan.operation, plan.target
            );
            self.event(EventType::Normal, "NodeStarted", Some(node), note)
                .await;
        }
        Ok(false)
    }

    /// Successes and failures the proxies reported, announced once each (the annotation
    /// remembers it across restarts). Failures the operator itself recorded were announced
    /// when recorded.
    async fn announce_results(
        &self,
        decision: &Decision,
        plan: &Plan,
        instances: &[Arc<OsInstance>],
    ) {
        for osi in instances {
            let node = osi.name_any();
            let Some(status) = osi.status.as_ref() else {
                continue;
            };
            let Some(phase @ (NodePhase::Succeeded | NodePhase::Failed)) = status.phase else {
                continue;
            };
            if status.operation != Some(plan.operation)
                || status.target_version.as_deref() != Some(plan.target.as_str())
                || decision.mark_failed.iter().any(|f| f.node == node)
            {
                continue;
            }
            let reported = reported_key(status.operation, Some(&plan.target), phase);
            if osi.annotations().get(REPORTED_ANNOTATION) == Some(&reported) {
                continue;
            }
            // The event first, under a name of its own (idempotent), then the
            // annotation: killed in between, the next operator publishes the
            // same event again, which already exists.
            let (type_, reason, note) = if phase == NodePhase::Succeeded {
                let note = format!("node {node} reached {}", plan.target);
                (EventType::Normal, "NodeSucceeded", note)
            } else {
                let error = status.last_error.as_deref().unwrap_or("no reason reported");
                let note = format!("node {node} failed {}: {error}", plan.target);
                (EventType::Warning, "NodeFailed", note)
            };
            if let Err(e) = self
                .announce_once(type_, reason, &node, note, &reported)
                .await
            {
                warn!(os = %self.key, %node, reason, error = %e, "cannot publish event");
                continue;
            }
            if let Err(e) = self.writer.mark_reported(osi, &reported).await {
                // Announced; the next pass records it (the event is not repeated).
                warn!(os = %self.key, %node, error = %e, "cannot record the announced result");
                continue;
            }
            if phase == NodePhase::Succeeded {
                self.sh.metrics.inc_node_succeeded(&self.key);
            } else {
                self.sh.metrics.inc_node_failed(&self.key);
            }
        }
    }

    fn rollout_metrics(&self, plan: &Plan, instances: &[Arc<OsInstance>], decision: &Decision) {
        let c = &decision.counts;
        self.sh.metrics.set_nodes(
            &self.key,
            &[
                ("updated", c.updated as u64),
                (
                    "in_progress",
                    (c.in_progress as usize + decision.start.len()) as u64,
                ),
                ("failed", c.failed as u64),
                (
                    "pending",
                    (c.pending as usize - decision.start.len()) as u64,
                ),
                ("skipped", c.skipped as u64),
            ],
        );
        let ours = instances
            .iter()
            .filter_map(|i| i.status.as_ref())
            .filter(|s| {
                s.operation == Some(plan.operation)
                    && s.target_version.as_deref() == Some(plan.target.as_str())
            });
        let (mut first, mut last) = (None::<Timestamp>, None::<Timestamp>);
        for s in ours {
            if let Some(t) = s.started_at.as_ref().map(|t| t.0) {
                first = Some(first.map_or(t, |f| f.min(t)));
            }
            if let Some(t) = s.finished_at.as_ref().map(|t| t.0) {
                last = Some(last.map_or(t, |l| l.max(t)));
            }
        }
        let Some(first) = first else { return };
        let end = match decision.state {
            RolloutState::Complete | RolloutState::Incomplete => last.unwrap_or(self.now),
            _ => self.now,
        };
        self.sh
            .metrics
            .set_rollout_started(&self.key, first.as_millisecond() as f64 / 1000.0);
        let seconds = end.duration_since(first).as_secs_f64().max(0.0);
        self.sh.metrics.set_rollout_duration(&self.key, seconds);
    }

    async fn write_status(&self, decision: &Decision) -> Result<(), ReconcileError> {
        let previous = self.os.status.as_ref();
        let status = os_status(decision, self.os.metadata.generation, previous, self.now);
        if previous == Some(&status) {
            return Ok(());
        }
        let api: Api<Os> = Api::namespaced(
            self.sh.client.clone(),
            &self.os.namespace().unwrap_or_default(),
        );
        // The whole status is replaced: a merge patch would keep fields that became empty.
        let patch: json_patch::Patch = serde_json::from_value(json!([
            { "op": "add", "path": "/status", "value": status }
        ]))
        .expect("a JSON patch with one add operation");
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        api.patch_status(&self.os.name_any(), &params, &Patch::<()>::Json(patch))
            .await
            .map_err(|source| ReconcileError::Status {
                os: self.key.clone(),
                source,
            })?;
        self.announce_transition(previous, &status).await;
        Ok(())
    }

    async fn announce_transition(&self, previous: Option<&OsStatus>, status: &OsStatus) {
        let conflict = |s: Option<&OsStatus>| {
            s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "SelectorConflict"))
                .filter(|c| c.status == "True")
                .map(|c| c.message.clone())
        };
        if let (None, Some(message)) = (conflict(previous), conflict(Some(status))) {
            warn!(os = %self.key, %message, "nodes selected by two OS resources");
            self.event(EventType::Warning, "SelectorConflict", None, message)
                .await;
        }
        let before = previous.and_then(|p| p.state);
        let (Some(state), true) = (status.state, status.state != before) else {
            return;
        };
        let message = status.message.clone().unwrap_or_default();
        let (type_, reason, note) = match state {
            RolloutState::Halted => (EventType::Warning, "RolloutHalted", message),
            RolloutState::Invalid => (EventType::Warning, "InvalidSpec", message),
            RolloutState::Complete => (
                EventType::Normal,
                "RolloutComplete",
                if status.skipped == 0 {
                    format!(
                        "all {} selected nodes run {}",
                        status.target,
                        self.target_name()
                    )
                } else {
                    format!(
                        "{} of {} selected nodes run {}; {} skipped",
                        status.updated,
                        status.target,
                        self.target_name(),
                        status.skipped
                    )
                },
            ),
            RolloutState::Incomplete => (
                EventType::Warning,
                "RolloutIncomplete",
                format!("every node was tried; {} failed", status.failed),
            ),
            RolloutState::Paused => (EventType::Normal, "RolloutPaused", message),
            RolloutState::Aborting => (
                EventType::Normal,
                "RolloutAborting",
                format!(
                    "spec.abort: nothing new starts; waiting for {} nodes in flight",
                    status.in_progress
                ),
            ),
            RolloutState::Aborted => (
                EventType::Normal,
                "RolloutAborted",
                format!(
                    "spec.abort: {} of {} nodes updated, {} failed, {} never started",
                    status.updated, status.target, status.failed, status.pending
                ),
            ),
            RolloutState::Progressing => return,
        };
        info!(os = %self.key, ?state, "rollout state changed");
        self.event(type_, reason, None, note).await;
    }

    fn target_name(&self) -> String {
        match Plan::from_spec(&self.os.spec) {
            Ok(plan) => plan.target,
            Err(_) => self.os.spec.osversion.clone(),
        }
    }
}
