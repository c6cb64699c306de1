//! The `OS` custom resource: which OS version (or settings) a set of nodes should run, and how
//! fast to get there.
//!
//! Every KubeOS field keeps its KubeOS JSON name and meaning (`api/v1alpha1/os_types.go`,
//! `docs/quick-start.md` "OS CR参数说明"), so a KubeOS manifest applies unchanged. KubeOS's CRD
//! marks more fields required than its own documented manifests carry (the `opstype: config`
//! example has no `imageurl`, `flagSafe` or `mtls`), so only `osversion`, `opstype` and
//! `maxunavailable` are required here and the rest default to empty/false as in Go.
//! Fields KubeOS lacks are camelCase, as Kubernetes API conventions ask.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sysconfig::SysConfigs;

/// KubeOS's default selector: nodes without the `upgrade.openeuler.org/node-selector` label.
pub const NO_LABEL: &str = "no-label";
/// Selects every node the rollout may touch, labelled or not.
pub const ALL_LABEL: &str = "all-label";

// kube's `printcolumn(type_ = ...)` repeats per column; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "upgrade.openeuler.org",
    version = "v1alpha1",
    kind = "OS",
    root = "Os",
    plural = "os",
    singular = "os",
    namespaced,
    status = "OsStatus",
    doc = "OS is the OS version and node settings wanted on a set of nodes, and how to roll them out",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.osversion"),
    printcolumn(name = "Ops", type_ = "string", json_path = ".spec.opstype"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Target", type_ = "integer", json_path = ".status.target"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updated"),
    printcolumn(
        name = "In-Progress",
        type_ = "integer",
        json_path = ".status.inProgress"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Max-Unavailable",
        type_ = "string",
        json_path = ".spec.maxunavailable",
        priority = "1"
    ),
    printcolumn(
        name = "Sysconfig",
        type_ = "string",
        json_path = ".spec.sysconfigs.version",
        priority = "1"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct OsSpec {
    /// Target OS version, compared with the node's `status.nodeInfo.osImage` (the
    /// `PRETTY_NAME` of its `/etc/os-release`). With `opstype: config`, only nodes already at
    /// this version are configured.
    pub osversion: String,
    /// Disk image URL (http or https), for `imagetype: disk`.
    #[serde(default)]
    pub imageurl: String,
    /// Most nodes of the selected set that may be unavailable at once: NotReady, cordoned, or
    /// in an operation. A number (KubeOS), or a percentage of the selected nodes such as
    /// `"20%"`, rounded down but never below one node. Capped at the number of selected nodes.
    pub maxunavailable: IntOrString,
    /// Digest of the disk image (`sha256:`/`blake3:` or bare SHA-256 hex), or for
    /// docker/containerd the OCI manifest's `sha256:` (the image digest) or the root image's
    /// `blake3:`; may be empty when `containerimage` is pinned with `@sha256:`.
    #[serde(default)]
    pub checksum: String,
    /// An `http://` imageurl is only used when this is true.
    #[serde(default, rename = "flagSafe")]
    pub flag_safe: bool,
    /// Use mutual TLS (clientcert/clientkey) for an `https://` imageurl.
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub imagetype: ImageType,
    /// OCI reference (`registry/repository:tag` or `@sha256:`) of an ab-os bundle artifact,
    /// for imagetype docker/containerd: both mean os-agent's own registry client (docs/oci.md).
    #[serde(default)]
    pub containerimage: String,
    pub opstype: OpsType,
    /// When draining, also evict pods no controller manages and pods with emptyDir volumes
    /// (their data is lost). PodDisruptionBudgets are honoured either way.
    #[serde(default)]
    pub evictpodforce: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientcert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientkey: Option<String>,
    /// Settings applied by `opstype: config`, or after the reboot of an upgrade/rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysconfigs: Option<SysConfigs>,
    /// Settings applied before an upgrade/rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgradeconfigs: Option<SysConfigs>,
    /// `no-label` (default): nodes without the `upgrade.openeuler.org/node-selector` label;
    /// `all-label`: every node; any other value: nodes whose label has exactly that value.
    /// Control-plane nodes only with `includeControlPlane`.
    #[serde(default = "default_nodeselector")]
    pub nodeselector: String,
    /// New nodes start only inside this window; nodes already started finish outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timewindow: Option<TimeWindow>,
    /// Seconds between two batches of node starts.
    #[serde(default = "default_timeinterval")]
    pub timeinterval: i64,
    /// `serial`: one node at a time; `parallel`: up to maxunavailable.
    #[serde(default)]
    pub executionmode: ExecutionMode,

    /// Start no new node while true; nodes already started finish. A hold: set it back to
    /// false and the rollout goes on.
    #[serde(default)]
    pub paused: bool,
    /// End the rollout: no new node starts, nodes already started finish, operations no
    /// node's proxy took up yet (phase `Assigned`) are withdrawn, and the state becomes
    /// `Aborted` once none is left in flight. Unlike `paused`, it says the rollout is
    /// given up; write a new `osversion` (or `opstype: rollback`) to go somewhere else.
    #[serde(default)]
    pub abort: bool,
    /// Halt the rollout (start nothing more) once this many selected nodes failed the current
    /// operation.
    #[serde(default = "default_failure_budget", rename = "failureBudget")]
    #[schemars(range(min = 1))]
    pub failure_budget: u32,
    /// A node still in the operation this many seconds after it started is marked failed and
    /// stops holding an operation slot.
    #[serde(default = "default_node_timeout", rename = "nodeTimeoutSeconds")]
    #[schemars(range(min = 1))]
    pub node_timeout_seconds: u64,
    /// Also operate on control-plane nodes, never more than one at a time and never while any
    /// control-plane node is unavailable. KubeOS always skips them.
    #[serde(default, rename = "includeControlPlane")]
    pub include_control_plane: bool,
}

/// What the nodes do. Both `upgrade` and `rollback` end with the node running `osversion`;
/// `rollback` boots the other slot instead of downloading.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpsType {
    Upgrade,
    Config,
    Rollback,
}

/// Where the new root image comes from; empty for config and rollback.
// KubeOS's own documented config/rollback manifests say `imagetype: ""`, so it is accepted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Disk,
    Docker,
    Containerd,
    #[default]
    #[serde(rename = "")]
    Unset,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    Serial,
    #[default]
    Parallel,
}

/// `HH:MM:SS` (daily; an end before the start crosses midnight) or `YYYY-MM-DD HH:MM:SS`
/// (once), both ends in the same form; both empty means no window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TimeWindow {
    pub starttime: String,
    pub endtime: String,
    /// `UTC` (default), `Z`, or a fixed offset such as `+08:00`. KubeOS used the operator's
    /// local time, which is UTC in its container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_nodeselector() -> String {
    NO_LABEL.to_string()
}

fn default_timeinterval() -> i64 {
    15
}

fn default_failure_budget() -> u32 {
    1
}

fn default_node_timeout() -> u64 {
    3600
}

/// The rollout as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OsStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RolloutState>,
    /// Selected nodes.
    #[serde(default)]
    pub target: u32,
    /// Selected nodes already at the target version (or settings).
    #[serde(default)]
    pub updated: u32,
    #[serde(default)]
    pub in_progress: u32,
    /// Selected nodes that failed the current operation.
    #[serde(default)]
    pub failed: u32,
    /// Selected nodes still to do.
    #[serde(default)]
    pub pending: u32,
    /// Selected nodes left alone: annotated `upgrade.openeuler.org/skip: "true"`, or with
    /// `opstype: config`, not at `osversion`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u32,
    /// Names of the failed nodes (at most 20, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// Why nothing is starting right now, when that is the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Progressing`, `Paused`, `Aborted`, `Halted`, `Complete` and `SelectorConflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One word for `kubectl get os`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutState {
    /// Nodes are being operated on, or will be when the window, interval or capacity allows.
    Progressing,
    /// `spec.paused`: nothing new starts.
    Paused,
    /// The failure budget is spent: nothing new starts until the spec changes.
    Halted,
    /// `spec.abort`: nothing new starts; nodes already started are finishing.
    Aborting,
    /// `spec.abort`, and no node is in flight any more.
    Aborted,
    /// Every selected node is at the target.
    Complete,
    /// Every selected node was tried; some failed, fewer than the failure budget.
    Incomplete,
    /// The spec cannot be acted on (see the message).
    Invalid,
}
