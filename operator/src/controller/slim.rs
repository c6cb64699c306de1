//! What the caches keep of each object. A real Node is 10-30 KB, mostly `status.images` and
//! `metadata.managedFields`, none of which a rollout reads; caching whole Nodes would take
//! hundreds of MiB at 10,000 nodes (the operator's limit is 256 MiB, deploy/operator.yaml).
//! So every object is cut down as the watch delivers it, before the reflector stores it.
//!
//! Kept of a Node, and why:
//! - `metadata.name`, `uid`, `resourceVersion`: identity, OSInstance ownership, the
//!   reflector's bookkeeping;
//! - `metadata.labels`: `nodeselector`, control-plane roles;
//! - annotations of this project (`upgrade.openeuler.org/…`), none of anyone else's;
//! - `spec.unschedulable`: cordoned nodes count as unavailable;
//! - the `Ready` condition: NotReady nodes count as unavailable;
//! - `status.nodeInfo.osImage`: the version KubeOS compares with `osversion`.
//!
//! Everything else goes; `rollout::NodeView::from_node` of a slim Node equals that of the
//! whole one (tested below). OS and OSInstance objects are small and read whole, except their
//! `managedFields`, which nothing here reads.

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

/// Annotations under this prefix are the project's own and stay in the cache.
pub const OWN_ANNOTATION_PREFIX: &str = "upgrade.openeuler.org/";

/// Cuts a Node down to what the rollout reads.
pub fn node(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    let annotations = meta.annotations.map(|all| {
        all.into_iter()
            .filter(|(k, _)| k.starts_with(OWN_ANNOTATION_PREFIX))
            .collect()
    });
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        annotations,
        ..ObjectMeta::default()
    };
    node.spec = node.spec.take().map(|spec| NodeSpec {
        unschedulable: spec.unschedulable,
        ..NodeSpec::default()
    });
    node.status = node.status.take().map(|status| NodeStatus {
        conditions: status
            .conditions
            .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
        node_info: status.node_info.map(|info| NodeSystemInfo {
            os_image: info.os_image,
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
}

/// Drops `metadata.managedFields`, the server's record of who wrote which field.
pub fn managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::NodeView;
    use serde_json::json;

    fn sample(ready: bool) -> Node {
        let mut v = fakekube::sample::node("node-00007", "KubeOS v1", ready);
        v["metadata"]["uid"] = json!("3f2c");
        v["metadata"]["resourceVersion"] = json!("812");
        v["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        v["metadata"]["annotations"]["upgrade.openeuler.org/cordoned-by"] = json!("os-proxy");
        v["metadata"]["annotations"]["upgrade.openeuler.org/skip"] = json!("true");
        v["spec"]["unschedulable"] = json!(true);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_slim_node_decides_like_the_whole_one() {
        for ready in [true, false] {
            let whole = sample(ready);
            let mut slim = whole.clone();
            node(&mut slim);
            assert_eq!(
                NodeView::from_node(&slim, None),
                NodeView::from_node(&whole, None)
            );
            assert_eq!(slim.metadata.uid, whole.metadata.uid);
            assert_eq!(
                slim.metadata.resource_version,
                whole.metadata.resource_version
            );
            assert_eq!(slim.metadata.labels, whole.metadata.labels);
        }
    }

    #[test]
    fn the_big_parts_and_foreign_annotations_are_dropped() {
        let whole = sample(true);
        let mut slim = sample(true);
        node(&mut slim);
        assert!(slim.metadata.managed_fields.is_none());
        let status = slim.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.addresses.is_none());
        assert!(status.capacity.is_none() && status.allocatable.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        let annotations = slim.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [
                "upgrade.openeuler.org/cordoned-by",
                "upgrade.openeuler.org/skip"
            ]
        );
        let before = serde_json::to_vec(&whole).unwrap().len();
        let after = serde_json::to_vec(&slim).unwrap().len();
        assert!(before > 15_000, "the sample is realistic: {before} bytes");
        assert!(after < 1_500, "slim node is {after} bytes");
    }
}
