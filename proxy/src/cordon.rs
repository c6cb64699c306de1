//! Cordon discipline: the proxy uncordons only a node it cordoned itself.
//!
//! Cordoning sets `spec.unschedulable` and our annotation in one merge patch, so no observer
//! ever sees one without the other. A node that is already unschedulable belongs to whoever
//! cordoned it (an admin draining it for other reasons): we record nothing and so never lift
//! their cordon. Both patches carry the resourceVersion they were decided on; a 409 means the
//! node changed under us, and the caller re-reads and decides again.

use crate::lifecycle::NodeFacts;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

/// Marks a cordon as ours.
pub const CORDONED_BY: &str = "upgrade.openeuler.org/cordoned-by";
pub const CORDONED_BY_US: &str = "os-proxy";

/// What the lifecycle reads from a Node.
pub fn facts(node: &Node) -> NodeFacts {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let cordoned_by_us = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CORDONED_BY))
        .is_some_and(|v| v == CORDONED_BY_US);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    NodeFacts {
        unschedulable,
        cordoned_by_us,
        ready,
    }
}

/// The cordon patch, or `None` when the node is unschedulable already (someone else's cordon,
/// or ours from before a restart).
pub fn cordon_patch(facts: &NodeFacts, resource_version: &str) -> Option<Value> {
    if facts.unschedulable {
        return None;
    }
    Some(json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { CORDONED_BY: CORDONED_BY_US },
        },
        "spec": { "unschedulable": true },
    }))
}

/// The uncordon patch, or `None` when the cordon (if any) is not ours.
pub fn uncordon_patch(facts: &NodeFacts, resource_version: &str) -> Option<Value> {
    if !facts.cordoned_by_us {
        return None;
    }
    Some(json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { CORDONED_BY: null },
        },
        "spec": { "unschedulable": null },
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum CordonError {
    #[error("reading node {node}: {source}")]
    Read { node: String, source: kube::Error },
    #[error("{action} node {node}: {source}")]
    Patch {
        action: &'static str,
        node: String,
        source: kube::Error,
    },
    #[error("{action} node {node}: it kept changing under us (409 Conflict {attempts} times)")]
    Conflicts {
        action: &'static str,
        node: String,
        attempts: u32,
    },
}

/// What a cordon or uncordon call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Patched,
    /// Nothing to do: already cordoned (by anyone), or not cordoned by us.
    Unchanged,
}

const ATTEMPTS: u32 = 5;

/// Cordons the node unless it is unschedulable already.
pub async fn cordon(nodes: &Api<Node>, name: &str) -> Result<Outcome, CordonError> {
    patch_with_retry(nodes, name, "cordoning", cordon_patch).await
}

/// Lifts our cordon; leaves anyone else's.
pub async fn uncordon(nodes: &Api<Node>, name: &str) -> Result<Outcome, CordonError> {
    patch_with_retry(nodes, name, "uncordoning", uncordon_patch).await
}

async fn patch_with_retry(
    nodes: &Api<Node>,
    name: &str,
    action: &'static str,
    decide: fn(&NodeFacts, &str) -> Option<Value>,
) -> Result<Outcome, CordonError> {
    for _ in 0..ATTEMPTS {
        let node = nodes.get(name).await.map_err(|source| CordonError::Read {
            node: name.into(),
            source,
        })?;
        let rv = node.metadata.resource_version.clone().unwrap_or_default();
        let Some(patch) = decide(&facts(&node), &rv) else {
            return Ok(Outcome::Unchanged);
        };
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = name, action, "patched");
                return Ok(Outcome::Patched);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(node = name, action, "node changed; deciding again");
            }
            Err(source) => {
                return Err(CordonError::Patch {
                    action,
                    node: name.into(),
                    source,
                })
            }
        }
    }
    Err(CordonError::Conflicts {
        action,
        node: name.into(),
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(unschedulable: bool, cordoned_by_us: bool) -> NodeFacts {
        NodeFacts {
            unschedulable,
            cordoned_by_us,
            ready: true,
        }
    }

    #[test]
    fn cordon_is_one_patch_with_annotation_and_resource_version() {
        let p = cordon_patch(&f(false, false), "42").unwrap();
        assert_eq!(p["spec"]["unschedulable"], true);
        assert_eq!(p["metadata"]["annotations"][CORDONED_BY], CORDONED_BY_US);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn a_node_already_unschedulable_is_not_claimed() {
        assert_eq!(cordon_patch(&f(true, false), "1"), None);
        assert_eq!(cordon_patch(&f(true, true), "1"), None);
    }

    #[test]
    fn uncordon_only_our_cordon_and_remove_the_annotation() {
        assert_eq!(uncordon_patch(&f(true, false), "1"), None);
        assert_eq!(uncordon_patch(&f(false, false), "1"), None);
        let p = uncordon_patch(&f(true, true), "7").unwrap();
        assert!(p["spec"]["unschedulable"].is_null());
        assert!(p["metadata"]["annotations"][CORDONED_BY].is_null());
        assert!(p["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key(CORDONED_BY));
        assert_eq!(p["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn facts_read_the_node() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "annotations": {CORDONED_BY: CORDONED_BY_US}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert_eq!(facts(&node), f(true, true));
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(
            facts(&bare),
            NodeFacts {
                unschedulable: false,
                cordoned_by_us: false,
                ready: false
            }
        );
    }
}
