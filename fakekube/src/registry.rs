//! The resource types the fake server knows, with the attributes that change API semantics.

/// One served resource: where it lives in the URL space and how the server treats it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// With a status subresource, writes to the main resource ignore `.status` and writes to
    /// `/status` change only `.status`.
    pub status_subresource: bool,
    /// Field selectors this resource supports beyond `metadata.name`/`metadata.namespace`
    /// (from each type's `GetAttrs`/field label conversion in kubernetes/kubernetes).
    pub fields: &'static [&'static str],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` for the core group, `osinstances.upgrade.openeuler.org` otherwise, as in the
    /// real server's error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Field paths whose missing value reads as `false` rather than the empty string.
    pub fn boolean_field(&self, field: &str) -> bool {
        matches!(field, "spec.unschedulable" | "spec.hostNetwork")
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
        fields: &[],
    }
}

pub(crate) static RESOURCES: &[ResourceType] = &[
    ResourceType {
        fields: &["spec.unschedulable"],
        ..rt("", "v1", "nodes", "Node", false, true)
    },
    ResourceType {
        fields: POD_FIELDS,
        ..rt("", "v1", "pods", "Pod", true, true)
    },
    ResourceType {
        fields: &["status.phase"],
        ..rt("", "v1", "namespaces", "Namespace", false, false)
    },
    ResourceType {
        fields: CORE_EVENT_FIELDS,
        ..rt("", "v1", "events", "Event", true, false)
    },
    rt("events.k8s.io", "v1", "events", "Event", true, false),
    rt(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
    ),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    rt("upgrade.openeuler.org", "v1alpha1", "os", "OS", true, true),
    rt(
        "upgrade.openeuler.org",
        "v1alpha1",
        "osinstances",
        "OSInstance",
        true,
        true,
    ),
    rt("apps", "v1", "daemonsets", "DaemonSet", true, true),
    rt("apps", "v1", "replicasets", "ReplicaSet", true, true),
];

pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_events_k8s_io_events_are_distinct() {
        let core = find("", "v1", "events").unwrap();
        let new = find("events.k8s.io", "v1", "events").unwrap();
        assert_ne!(core, new);
        assert_eq!(new.api_version(), "events.k8s.io/v1");
        assert_eq!(core.api_version(), "v1");
    }

    #[test]
    fn unknown_resources_are_not_found() {
        assert!(find("", "v1", "configmaps").is_none());
        assert!(find("upgrade.openeuler.org", "v1", "os").is_none());
    }
}
