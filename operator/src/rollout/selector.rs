//! KubeOS `nodeselector`: which nodes an OS resource drives
//! (`cmd/operator/controllers/requirements.go`, `nodeSelectorLabel`).

use std::collections::BTreeMap;

use crate::crd::{ALL_LABEL, NO_LABEL};

/// The node label whose value `nodeselector` names.
pub const NODE_SELECTOR_LABEL: &str = "upgrade.openeuler.org/node-selector";
/// Marks a control-plane node (KubeOS `LabelMaster`).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The same role under its pre-1.24 name, still set by some installers.
pub const LEGACY_MASTER_LABEL: &str = "node-role.kubernetes.io/master";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeSelection {
    /// `no-label`: nodes without the selector label.
    Unlabelled,
    /// `all-label`: every node.
    All,
    /// Nodes whose selector label equals this value exactly. As in KubeOS (a label-selector
    /// `Equals`), an empty value matches only nodes whose label is present and empty.
    Value(String),
}

impl NodeSelection {
    pub fn parse(nodeselector: &str) -> NodeSelection {
        match nodeselector {
            NO_LABEL => NodeSelection::Unlabelled,
            ALL_LABEL => NodeSelection::All,
            value => NodeSelection::Value(value.to_string()),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(NODE_SELECTOR_LABEL);
        match self {
            NodeSelection::Unlabelled => label.is_none(),
            NodeSelection::All => true,
            NodeSelection::Value(value) => label == Some(value),
        }
    }
}

pub fn is_control_plane(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(CONTROL_PLANE_LABEL) || labels.contains_key(LEGACY_MASTER_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> BTreeMap<String, String> {
        value
            .map(|v| (NODE_SELECTOR_LABEL.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn no_label_selects_only_unlabelled_nodes() {
        let s = NodeSelection::parse("no-label");
        assert!(s.matches(&labels(None)));
        assert!(!s.matches(&labels(Some("kubeos-v1"))));
        assert!(!s.matches(&labels(Some(""))));
    }

    #[test]
    fn all_label_selects_every_node() {
        let s = NodeSelection::parse("all-label");
        assert!(s.matches(&labels(None)));
        assert!(s.matches(&labels(Some("kubeos-v1"))));
    }

    #[test]
    fn a_value_selects_exactly_that_value() {
        let s = NodeSelection::parse("kubeos-v1");
        assert!(s.matches(&labels(Some("kubeos-v1"))));
        assert!(!s.matches(&labels(Some("kubeos-v2"))));
        assert!(!s.matches(&labels(None)));
        let empty = NodeSelection::parse("");
        assert!(empty.matches(&labels(Some(""))));
        assert!(!empty.matches(&labels(None)));
    }

    #[test]
    fn control_plane_by_either_role_label() {
        let mut l = BTreeMap::new();
        assert!(!is_control_plane(&l));
        l.insert(LEGACY_MASTER_LABEL.to_string(), String::new());
        assert!(is_control_plane(&l));
        l.clear();
        l.insert(CONTROL_PLANE_LABEL.to_string(), String::new());
        assert!(is_control_plane(&l));
    }
}
