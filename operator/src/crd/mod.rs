//! The `upgrade.openeuler.org/v1alpha1` custom resources, KubeOS-compatible, and the CRD
//! manifests generated from them.

mod os;
mod osinstance;
mod owner;
mod sysconfig;

pub use os::{
    ExecutionMode, ImageType, OpsType, Os, OsSpec, OsStatus, RolloutState, TimeWindow, ALL_LABEL,
    NO_LABEL,
};
pub use osinstance::{
    NamespacedName, NodePhase, NodeStatus, OsInstance, OsInstanceSpec, OsInstanceStatus,
};
pub use owner::{node_owner, owner_uids, ownership, Ownership};
pub use sysconfig::{Content, SysConfig, SysConfigs};

use kube::CustomResourceExt;

/// The command that regenerates `deploy/crds.yaml`, printed by the staleness test.
pub const REGENERATE_CRDS: &str =
    "cargo run -p operator --bin os-operator -- crds > deploy/crds.yaml";

/// Both CRDs as one multi-document YAML file, the content of `deploy/crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = format!("# Generated from the Rust types by `{REGENERATE_CRDS}`. Do not edit.\n");
    for crd in [Os::crd(), OsInstance::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
