//! The `OSInstance` custom resource: one per node, named after the node, in the namespace of
//! the `OS` that drives it.
//!
//! The spec keeps KubeOS's fields (`nodestatus`, `namespacedname`, `sysconfigs`,
//! `upgradeconfigs`): the operator writes it to start an operation, the proxy on the node acts
//! on it. The status keeps KubeOS's applied `sysconfigs`/`upgradeconfigs` and adds what the
//! rollout needs to read: phase, versions, progress, last error and timestamps.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::os::OpsType;
use super::sysconfig::SysConfigs;

// kube's `printcolumn(type_ = ...)` repeats per column; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "upgrade.openeuler.org",
    version = "v1alpha1",
    kind = "OSInstance",
    root = "OsInstance",
    plural = "osinstances",
    singular = "osinstance",
    shortname = "osi",
    namespaced,
    status = "OsInstanceStatus",
    doc = "OSInstance is one node's part in an OS rollout",
    printcolumn(name = "Nodestatus", type_ = "string", json_path = ".spec.nodestatus"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Current",
        type_ = "string",
        json_path = ".status.currentVersion"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.targetVersion"),
    printcolumn(name = "Progress", type_ = "integer", json_path = ".status.progress"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.step"),
    printcolumn(name = "Error", type_ = "string", json_path = ".status.lastError"),
    printcolumn(
        name = "Sysconfig-Current",
        type_ = "string",
        json_path = ".status.sysconfigs.version"
    ),
    printcolumn(
        name = "Sysconfig-Desired",
        type_ = "string",
        json_path = ".spec.sysconfigs.version",
        priority = "1"
    ),
    printcolumn(
        name = "Upgradeconfig-Current",
        type_ = "string",
        json_path = ".status.upgradeconfigs.version",
        priority = "1"
    ),
    printcolumn(
        name = "Upgradeconfig-Desired",
        type_ = "string",
        json_path = ".spec.upgradeconfigs.version",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct OsInstanceSpec {
    /// What the operator asks of the node; back to `idle` when the node is done.
    #[serde(default)]
    pub nodestatus: NodeStatus,
    /// The OS resource that drives this node (KubeOS-Rust's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespacedname: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysconfigs: Option<SysConfigs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgradeconfigs: Option<SysConfigs>,
}

/// KubeOS's `NodeStatus` strings (`pkg/values/values.go`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Idle,
    Upgrade,
    Rollback,
    Config,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NamespacedName {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OsInstanceStatus {
    /// Settings the node has applied (KubeOS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysconfigs: Option<SysConfigs>,
    /// Pre-upgrade settings the node has applied (KubeOS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgradeconfigs: Option<SysConfigs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// The operation this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OpsType>,
    /// Where the operation goes: the OS version, or the settings version for `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The OS version the node runs, as its agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Percent of the current step done (download and write dominate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the node is doing now, in words (`downloading 1.2 GiB of 2.0 GiB`, `evicting 3
    /// pods`, `waiting for the health gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Since when the node is at `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_since: Option<Time>,
    /// When the operator started the operation; per-node timeouts count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// Where a node is in its operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    /// No operation in flight.
    Idle,
    /// The operator started it; the proxy has not picked it up yet.
    Assigned,
    /// The agent is writing and verifying the new image while workloads still run.
    Preparing,
    /// Cordoned; pods are being evicted.
    Draining,
    /// Rebooting into the new slot on trial.
    Rebooting,
    /// Up on the new slot; health checks before the slot is kept.
    Confirming,
    /// Applying settings (`opstype: config`, or after an upgrade's reboot).
    Configuring,
    Succeeded,
    Failed,
}

impl NodePhase {
    /// Phases of an operation still in flight.
    pub fn is_active(self) -> bool {
        !matches!(
            self,
            NodePhase::Idle | NodePhase::Succeeded | NodePhase::Failed
        )
    }
}
