//! The resource types the fake server knows, with the attributes that change API semantics:
//! the built-in ones below, and those a CustomResourceDefinition adds (`crd.rs`), interned here
//! so that every resource type is a `&'static ResourceType`.

use std::sync::Mutex;

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
    /// Discovery's `shortNames` (`kubectl get no`) and `categories` (`kubectl get all`).
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Discovery's `singularName`; empty for built-ins, as servers before 1.27 sent it.
    pub singular: &'static str,
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
        short_names: &[],
        categories: &[],
        singular: "",
    }
}

const ALL: &[&str] = &["all"];

pub(crate) static RESOURCES: &[ResourceType] = &[
    ResourceType {
        fields: &["spec.unschedulable"],
        short_names: &["no"],
        ..rt("", "v1", "nodes", "Node", false, true)
    },
    ResourceType {
        fields: POD_FIELDS,
        short_names: &["po"],
        categories: ALL,
        ..rt("", "v1", "pods", "Pod", true, true)
    },
    ResourceType {
        fields: &["status.phase"],
        short_names: &["ns"],
        ..rt("", "v1", "namespaces", "Namespace", false, false)
    },
    ResourceType {
        fields: CORE_EVENT_FIELDS,
        short_names: &["ev"],
        ..rt("", "v1", "events", "Event", true, false)
    },
    ResourceType {
        short_names: &["sa"],
        ..rt("", "v1", "serviceaccounts", "ServiceAccount", true, false)
    },
    ResourceType {
        short_names: &["ev"],
        ..rt("events.k8s.io", "v1", "events", "Event", true, false)
    },
    ResourceType {
        short_names: &["pdb"],
        ..rt(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            true,
        )
    },
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ResourceType {
        short_names: &["ds"],
        categories: ALL,
        ..rt("apps", "v1", "daemonsets", "DaemonSet", true, true)
    },
    ResourceType {
        short_names: &["rs"],
        categories: ALL,
        ..rt("apps", "v1", "replicasets", "ReplicaSet", true, true)
    },
    ResourceType {
        short_names: &["deploy"],
        categories: ALL,
        ..rt("apps", "v1", "deployments", "Deployment", true, true)
    },
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    ResourceType {
        short_names: &["crd", "crds"],
        ..rt(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        )
    },
    rt(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
        false,
        true,
    ),
    rt(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
        false,
        false,
    ),
];

/// A built-in resource type.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
}

/// A resource type as a CustomResourceDefinition version defines it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defined<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub plural: &'a str,
    pub kind: &'a str,
    pub singular: &'a str,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub short_names: &'a [String],
    pub categories: &'a [String],
}

impl Defined<'_> {
    fn is(&self, rt: &ResourceType) -> bool {
        let same =
            |a: &[&str], b: &[String]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y);
        rt.group == self.group
            && rt.version == self.version
            && rt.plural == self.plural
            && rt.kind == self.kind
            && rt.singular == self.singular
            && rt.namespaced == self.namespaced
            && rt.status_subresource == self.status_subresource
            && same(rt.short_names, self.short_names)
            && same(rt.categories, self.categories)
    }
}

/// Resource types CustomResourceDefinitions defined, each kept once for the whole process
/// (leaked on first use): every server and test that applies the same CRD shares its entry,
/// so the memory held is bounded by the distinct definitions, not by how often they are
/// applied, and every resource type stays a `&'static ResourceType`.
static INTERNED: Mutex<Vec<&'static ResourceType>> = Mutex::new(Vec::new());

/// The one `&'static` entry for `d`.
pub(crate) fn intern(d: Defined<'_>) -> &'static ResourceType {
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = interned.iter().find(|r| d.is(r)) {
        return existing;
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let leak_all = |v: &[String]| -> &'static [&'static str] {
        Box::leak(
            v.iter()
                .map(|s| leak(s))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    };
    let rt: &'static ResourceType = Box::leak(Box::new(ResourceType {
        group: leak(d.group),
        version: leak(d.version),
        plural: leak(d.plural),
        kind: leak(d.kind),
        namespaced: d.namespaced,
        status_subresource: d.status_subresource,
        fields: &[],
        short_names: leak_all(d.short_names),
        categories: leak_all(d.categories),
        singular: leak(d.singular),
    }));
    interned.push(rt);
    rt
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
        assert!(
            find("upgrade.openeuler.org", "v1alpha1", "os").is_none(),
            "custom resources come from their CRD"
        );
    }
}
