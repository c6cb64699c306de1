//! What the rollout needs to know about the cluster, taken from Node and OSInstance objects.
//! The views are plain values so decisions can be tested without building Kubernetes objects.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

use super::plan::Plan;
use super::selector::is_control_plane;
use super::selects;
use crate::crd::{ownership, NodePhase, NodeStatus, OpsType, OsInstance, OsSpec, Ownership};

/// Every node of the cluster, each with its OSInstance if the proxy on it created one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub nodes: Vec<NodeView>,
    /// Nodes that other OS resources select for another target: node name to those
    /// resources (`namespace/name`). See [`Observed::with_contested`].
    pub contested: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`, by us or anyone else.
    pub cordoned: bool,
    pub control_plane: bool,
    /// `status.nodeInfo.osImage`, what KubeOS compares with `osversion`.
    pub os_version: String,
    /// Annotated `upgrade.openeuler.org/skip: "true"`: the rollout leaves it alone.
    pub skip: bool,
    pub instance: Option<InstanceView>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceView {
    pub phase: Option<NodePhase>,
    pub operation: Option<OpsType>,
    pub target_version: Option<String>,
    /// The OS version the node's agent reports.
    pub current_version: Option<String>,
    /// `status.sysconfigs.version`: the settings the node has applied.
    pub applied_config_version: Option<String>,
    pub started_at: Option<Timestamp>,
}

impl InstanceView {
    pub fn from_instance(osi: &OsInstance) -> InstanceView {
        let status = osi.status.clone().unwrap_or_default();
        // A KubeOS-style start (only `spec.nodestatus` written, or the status write lost
        // to a crash) is still an operation in flight and must hold its slot.
        let phase = match status.phase {
            None | Some(NodePhase::Idle) if osi.spec.nodestatus != NodeStatus::Idle => {
                Some(NodePhase::Assigned)
            }
            phase => phase,
        };
        InstanceView {
            phase,
            operation: status.operation,
            target_version: status.target_version,
            current_version: status.current_version,
            applied_config_version: status.sysconfigs.and_then(|c| c.version),
            started_at: status.started_at.map(|t| t.0),
        }
    }

    pub fn is_active(&self) -> bool {
        self.phase.is_some_and(NodePhase::is_active)
    }

    /// The last operation was `operation` towards `version`.
    pub fn is_for(&self, operation: OpsType, version: &str) -> bool {
        self.operation == Some(operation) && self.target_version.as_deref() == Some(version)
    }
}

/// A Node annotation: with the value `"true"`, no rollout starts the node (one already in an
/// operation finishes it). Any other value is ignored.
pub const SKIP_ANNOTATION: &str = "upgrade.openeuler.org/skip";

impl NodeView {
    pub fn from_node(node: &Node, instance: Option<InstanceView>) -> NodeView {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            control_plane: is_control_plane(&labels),
            labels,
            ready,
            cordoned: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            os_version: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.os_image.clone())
                .unwrap_or_default(),
            skip: node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SKIP_ANNOTATION))
                .is_some_and(|v| v == "true"),
            instance,
        }
    }
}

impl Observed {
    /// Pairs each node with the OSInstance of the same name, unless that one is owned by
    /// another Node uid. `instances` are those of the OS resource's namespace.
    pub fn from_cluster<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        instances: impl IntoIterator<Item = &'a OsInstance>,
    ) -> Observed {
        let by_name: HashMap<&str, &OsInstance> = instances
            .into_iter()
            .filter_map(|i| i.metadata.name.as_deref().map(|n| (n, i)))
            .collect();
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                let uid = node.metadata.uid.as_deref().unwrap_or_default();
                // One left by a deleted Node of the same name is not this node's: a node
                // registered again starts fresh (the controller deletes the stale one).
                let instance = by_name
                    .get(name)
                    .filter(|i| ownership(i, uid) != Ownership::Stale)
                    .map(|i| InstanceView::from_instance(i));
                NodeView::from_node(node, instance)
            })
            .collect();
        Observed {
            nodes,
            contested: BTreeMap::new(),
        }
    }

    /// Records the nodes both `spec` and one of `others` (`namespace/name`, spec) select,
    /// when that other resource wants another operation or target: two OS resources driving
    /// one node to different versions would undo each other's work forever. Others whose
    /// spec is invalid start nothing and are left out.
    pub fn with_contested(mut self, spec: &OsSpec, others: &[(String, &OsSpec)]) -> Observed {
        let want = |s: &OsSpec| Plan::from_spec(s).ok().map(|p| (p.operation, p.target));
        let mine = want(spec);
        for (key, other) in others {
            let theirs = want(other);
            if theirs.is_none() || theirs == mine {
                continue;
            }
            for node in self
                .nodes
                .iter()
                .filter(|n| selects(spec, n) && selects(other, n))
            {
                self.contested
                    .entry(node.name.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{OsInstanceSpec, OsInstanceStatus, SysConfigs};
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus as K8sNodeStatus, NodeSystemInfo,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, ready: &str, unschedulable: Option<bool>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [(
                        "node-role.kubernetes.io/control-plane".to_string(),
                        String::new(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable,
                ..Default::default()
            }),
            status: Some(K8sNodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                node_info: Some(NodeSystemInfo {
                    os_image: "KubeOS 1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn instance(
        name: &str,
        nodestatus: NodeStatus,
        status: Option<OsInstanceStatus>,
    ) -> OsInstance {
        let mut osi = OsInstance::new(
            name,
            OsInstanceSpec {
                nodestatus,
                ..Default::default()
            },
        );
        osi.status = status;
        osi
    }

    #[test]
    fn node_fields_come_from_conditions_spec_and_node_info() {
        let observed = Observed::from_cluster(
            &[node("a", "True", None), node("b", "Unknown", Some(true))],
            &[],
        );
        let a = &observed.nodes[0];
        assert!(a.ready && !a.cordoned && a.control_plane && a.instance.is_none());
        assert_eq!(a.os_version, "KubeOS 1.0");
        let b = &observed.nodes[1];
        assert!(!b.ready && b.cordoned);
    }

    #[test]
    fn instances_pair_with_nodes_by_name() {
        let started: Timestamp = "2024-05-01T00:00:00Z".parse().unwrap();
        let status = OsInstanceStatus {
            phase: Some(NodePhase::Draining),
            operation: Some(OpsType::Upgrade),
            target_version: Some("KubeOS 2.0".into()),
            sysconfigs: Some(SysConfigs {
                version: Some("c1".into()),
                configs: None,
            }),
            started_at: Some(Time(started)),
            ..Default::default()
        };
        let observed = Observed::from_cluster(
            &[node("a", "True", None), node("b", "True", None)],
            &[instance("b", NodeStatus::Upgrade, Some(status))],
        );
        assert!(observed.nodes[0].instance.is_none());
        let b = observed.nodes[1].instance.as_ref().unwrap();
        assert!(b.is_active() && b.is_for(OpsType::Upgrade, "KubeOS 2.0"));
        assert_eq!(b.applied_config_version.as_deref(), Some("c1"));
        assert_eq!(b.started_at, Some(started));
    }

    #[test]
    fn an_instance_owned_by_a_deleted_node_of_the_same_name_is_not_paired() {
        let mut n = node("a", "True", None);
        n.metadata.uid = Some("new".into());
        let mut stale = instance("a", NodeStatus::Upgrade, None);
        let mut old = n.clone();
        old.metadata.uid = Some("old".into());
        stale.metadata.owner_references = Some(vec![crate::crd::node_owner(&old).unwrap()]);
        let observed = Observed::from_cluster(&[n.clone()], &[stale]);
        assert!(observed.nodes[0].instance.is_none());
        let mut own = instance("a", NodeStatus::Upgrade, None);
        own.metadata.owner_references = Some(vec![crate::crd::node_owner(&n).unwrap()]);
        let observed = Observed::from_cluster(&[n], &[own]);
        assert!(observed.nodes[0].instance.is_some());
    }

    #[test]
    fn kubeos_style_start_without_status_counts_as_assigned() {
        let view = InstanceView::from_instance(&instance("a", NodeStatus::Upgrade, None));
        assert_eq!(view.phase, Some(NodePhase::Assigned));
        assert!(view.is_active());
        let idle = InstanceView::from_instance(&instance("a", NodeStatus::Idle, None));
        assert_eq!(idle.phase, None);
        assert!(!idle.is_active());
    }

    #[test]
    fn a_finished_phase_wins_over_a_stale_nodestatus() {
        let status = OsInstanceStatus {
            phase: Some(NodePhase::Failed),
            ..Default::default()
        };
        let view = InstanceView::from_instance(&instance("a", NodeStatus::Upgrade, Some(status)));
        assert_eq!(view.phase, Some(NodePhase::Failed));
    }
}
