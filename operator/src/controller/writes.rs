//! The operator's writes to OSInstances, and the overlay that keeps its own writes visible
//! until the watch delivers them.
//!
//! Why the overlay: the reflector caches lag behind the API server. A reconcile that runs
//! right after starting nodes would otherwise see them idle and start more, exceeding
//! `maxunavailable`. Each write's result is kept until the cache holds a different
//! `resourceVersion` than the one the write replaced (resourceVersions are opaque: they are
//! only compared for equality).
//!
//! Order of a start (crash-safe): the status first (`phase: Assigned`, operation, target,
//! `startedAt`), which makes the node count as unavailable, then `spec.nodestatus`, which
//! tells the proxy to act. A crash between the two leaves an Assigned instance with an idle
//! spec; `needs_spec_repair` finds it and the next reconcile writes the spec again. Every
//! write carries the `resourceVersion` it was decided on, so a concurrent change by the proxy
//! or another replica yields a 409 and a fresh decision instead of a blind overwrite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use crate::crd::{NodePhase, NodeStatus, OpsType, OsInstance, OsSpec};

/// Annotation holding the last result the operator announced with an Event, so a restart
/// neither repeats nor misses one: `<operation>/<target>/<phase>`.
pub const REPORTED_ANNOTATION: &str = "upgrade.openeuler.org/reported";

pub const FIELD_MANAGER: &str = "os-operator";

/// Writes not yet seen in the cache, by (namespace, name).
#[derive(Default)]
pub struct Overlay {
    pending: Mutex<HashMap<(String, String), Pending>>,
}

struct Pending {
    replaced_version: Option<String>,
    object: Arc<OsInstance>,
}

impl Overlay {
    pub fn record(&self, before: &OsInstance, after: OsInstance) {
        let key = key(&after);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Several writes in one reconcile: the cache must move past the first one's base.
        let replaced_version = match pending.remove(&key) {
            Some(p) => p.replaced_version,
            None => before.metadata.resource_version.clone(),
        };
        pending.insert(
            key,
            Pending {
                replaced_version,
                object: Arc::new(after),
            },
        );
    }

    /// The cached instances with this operator's unseen writes laid over them.
    pub fn apply(&self, cached: Vec<Arc<OsInstance>>) -> Vec<Arc<OsInstance>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(cached.len());
        for osi in cached {
            let k = key(&osi);
            match pending.get(&k) {
                Some(p) if p.replaced_version == osi.metadata.resource_version => {
                    out.push(Arc::clone(&p.object))
                }
                Some(_) => {
                    pending.remove(&k);
                    out.push(osi);
                }
                None => out.push(osi),
            }
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(osi: &OsInstance) -> (String, String) {
    (
        osi.metadata.namespace.clone().unwrap_or_default(),
        osi.metadata.name.clone().unwrap_or_default(),
    )
}

fn name_of(osi: &OsInstance) -> &str {
    osi.metadata.name.as_deref().unwrap_or_default()
}

fn nodestatus_for(operation: OpsType) -> NodeStatus {
    match operation {
        OpsType::Upgrade => NodeStatus::Upgrade,
        OpsType::Rollback => NodeStatus::Rollback,
        OpsType::Config => NodeStatus::Config,
    }
}

/// What a start writes into the status. Explicit nulls clear the previous operation's
/// leftovers (a merge patch keeps absent fields).
pub fn start_status(operation: OpsType, target: &str, now: Timestamp) -> Value {
    json!({
        "phase": NodePhase::Assigned,
        "operation": operation,
        "targetVersion": target,
        "progress": 0,
        "startedAt": Time(now),
        "finishedAt": null,
        "lastError": null,
    })
}

/// What a start writes into the spec: the operation and the settings the proxy applies.
pub fn start_spec(spec: &OsSpec, operation: OpsType, os_name: &str, os_namespace: &str) -> Value {
    json!({
        "nodestatus": nodestatus_for(operation),
        "namespacedname": { "name": os_name, "namespace": os_namespace },
        "sysconfigs": spec.sysconfigs,
        "upgradeconfigs": spec.upgradeconfigs,
    })
}

/// The step a withdrawn operation shows.
pub const WITHDRAWN_STEP: &str = "withdrawn by spec.abort before the node's proxy took it up";

/// What a withdrawal writes into the status: the node is idle again and was never started
/// (operation and target stay, to say what was withdrawn).
pub fn withdrawn_status(now: Timestamp) -> Value {
    json!({
        "phase": NodePhase::Idle,
        "step": WITHDRAWN_STEP,
        "stepSince": Time(now),
        "progress": 0,
        "finishedAt": Time(now),
    })
}

/// An instance the operator assigned whose spec write was lost (crash between the two
/// writes of a start): Assigned for this operation and target but told nothing.
pub fn needs_spec_repair(osi: &OsInstance, operation: OpsType, target: &str) -> bool {
    let Some(status) = osi.status.as_ref() else {
        return false;
    };
    status.phase == Some(NodePhase::Assigned)
        && status.operation == Some(operation)
        && status.target_version.as_deref() == Some(target)
        && osi.spec.nodestatus == NodeStatus::Idle
}

pub struct Writer<'a> {
    pub api: Api<OsInstance>,
    pub overlay: &'a Overlay,
}

impl Writer<'_> {
    async fn patch(
        &self,
        current: &OsInstance,
        body: Value,
        status: bool,
    ) -> Result<OsInstance, kube::Error> {
        let mut body = body;
        body["metadata"]["resourceVersion"] = json!(current.metadata.resource_version);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(&body);
        let name = name_of(current);
        let after = if status {
            self.api.patch_status(name, &params, &patch).await?
        } else {
            self.api.patch(name, &params, &patch).await?
        };
        self.overlay.record(current, after.clone());
        Ok(after)
    }

    /// Starts the operation on one node: status, then spec (see the module comment).
    pub async fn start(
        &self,
        current: &OsInstance,
        status: Value,
        spec: Value,
    ) -> Result<OsInstance, kube::Error> {
        let assigned = self
            .patch(current, json!({ "status": status }), true)
            .await?;
        self.patch(&assigned, json!({ "spec": spec }), false).await
    }

    /// Withdraws an operation no proxy took up (phase `Assigned`): the spec first (the proxy
    /// acts only on a non-idle spec), then the status. Both writes carry the resourceVersion
    /// they were decided on, and so does the proxy's first write out of `Assigned`: whichever
    /// comes second gets a 409, so a node is either withdrawn untouched or goes on.
    pub async fn withdraw(
        &self,
        current: &OsInstance,
        now: Timestamp,
    ) -> Result<OsInstance, kube::Error> {
        let idle = if current.spec.nodestatus == NodeStatus::Idle {
            current.clone()
        } else {
            let spec = json!({ "spec": { "nodestatus": NodeStatus::Idle } });
            self.patch(current, spec, false).await?
        };
        let status = json!({ "status": withdrawn_status(now) });
        self.patch(&idle, status, true).await
    }

    pub async fn repair_spec(
        &self,
        current: &OsInstance,
        spec: Value,
    ) -> Result<OsInstance, kube::Error> {
        self.patch(current, json!({ "spec": spec }), false).await
    }

    /// Records a failure the operator found (timeout, wrong version) and tells the proxy to
    /// stand down. The annotation marks the failure as announced.
    pub async fn mark_failed(
        &self,
        current: &OsInstance,
        reason: &str,
        reported: &str,
        now: Timestamp,
    ) -> Result<OsInstance, kube::Error> {
        let status = json!({ "status": {
            "phase": NodePhase::Failed,
            "lastError": reason,
            "finishedAt": Time(now),
        }});
        let failed = self.patch(current, status, true).await?;
        let spec = json!({
            "metadata": { "annotations": { REPORTED_ANNOTATION: reported } },
            "spec": { "nodestatus": NodeStatus::Idle },
        });
        self.patch(&failed, spec, false).await
    }

    pub async fn mark_reported(
        &self,
        current: &OsInstance,
        reported: &str,
    ) -> Result<OsInstance, kube::Error> {
        let body = json!({ "metadata": { "annotations": { REPORTED_ANNOTATION: reported } } });
        self.patch(current, body, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{OsInstanceSpec, OsInstanceStatus};

    fn instance(name: &str, rv: &str, phase: Option<NodePhase>) -> OsInstance {
        let mut osi = OsInstance::new(name, OsInstanceSpec::default());
        osi.metadata.namespace = Some("ns".into());
        osi.metadata.resource_version = Some(rv.into());
        osi.status = Some(OsInstanceStatus {
            phase,
            ..Default::default()
        });
        osi
    }

    #[test]
    fn overlay_hides_the_cache_until_it_moves_past_the_replaced_version() {
        let overlay = Overlay::default();
        let before = instance("a", "10", None);
        overlay.record(&before, instance("a", "11", Some(NodePhase::Assigned)));
        let seen = overlay.apply(vec![Arc::new(before), Arc::new(instance("b", "3", None))]);
        assert_eq!(seen[0].metadata.resource_version.as_deref(), Some("11"));
        assert_eq!(seen[1].metadata.name.as_deref(), Some("b"));
        assert_eq!(overlay.len(), 1);

        // The cache caught up (or someone else wrote): the cache wins and the entry goes.
        let seen = overlay.apply(vec![Arc::new(instance(
            "a",
            "12",
            Some(NodePhase::Draining),
        ))]);
        assert_eq!(
            seen[0].status.as_ref().unwrap().phase,
            Some(NodePhase::Draining)
        );
        assert!(overlay.is_empty());
    }

    #[test]
    fn two_writes_in_a_row_wait_for_the_cache_to_leave_the_first_base() {
        let overlay = Overlay::default();
        let base = instance("a", "10", None);
        let first = instance("a", "11", Some(NodePhase::Assigned));
        overlay.record(&base, first.clone());
        overlay.record(&first, instance("a", "12", Some(NodePhase::Assigned)));
        let seen = overlay.apply(vec![Arc::new(base)]);
        assert_eq!(seen[0].metadata.resource_version.as_deref(), Some("12"));
    }

    #[test]
    fn a_lost_spec_write_is_found() {
        let mut osi = instance("a", "1", Some(NodePhase::Assigned));
        let status = osi.status.as_mut().unwrap();
        status.operation = Some(OpsType::Upgrade);
        status.target_version = Some("v2".into());
        assert!(needs_spec_repair(&osi, OpsType::Upgrade, "v2"));
        assert!(!needs_spec_repair(&osi, OpsType::Upgrade, "v3"));
        osi.spec.nodestatus = NodeStatus::Upgrade;
        assert!(!needs_spec_repair(&osi, OpsType::Upgrade, "v2"));
    }

    #[test]
    fn a_withdrawn_node_is_idle_with_the_step_saying_why() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = withdrawn_status(now);
        assert_eq!(status["phase"], "Idle");
        assert_eq!(status["step"], WITHDRAWN_STEP);
        assert_eq!(status["finishedAt"], "2026-01-01T00:00:00Z");
        // What was withdrawn stays on record.
        assert!(status.get("operation").is_none() && status.get("targetVersion").is_none());
    }

    #[test]
    fn start_status_clears_the_previous_operations_leftovers() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = start_status(OpsType::Rollback, "v1", now);
        assert_eq!(status["phase"], "Assigned");
        assert_eq!(status["operation"], "rollback");
        assert!(status["lastError"].is_null() && status.get("lastError").is_some());
        assert_eq!(status["startedAt"], "2026-01-01T00:00:00Z");
    }
}
