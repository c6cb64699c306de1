//! Request routing: the URL path to a resource, namespace, name and subresource, and the
//! HTTP method plus query to the verb the real server's RBAC would name.

use std::collections::HashMap;

use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

/// Where a request points.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub rt: &'static ResourceType,
    /// `None` for cluster-scoped resources and for lists across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// The namespace part of the store key ("" for cluster-scoped objects).
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

/// `/api/v1/...` or `/apis/{group}/{version}/...`, for the types `store` serves.
pub(crate) fn parse_path(path: &str, store: &Store) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let find = |plural: &str| store.find(group, version, plural);
    let (rt, namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|rt| rt.namespaced) => (
            find(plural).ok_or_else(not_found)?,
            Some(ns.to_string()),
            tail,
        ),
        [plural, tail @ ..] => {
            let rt = find(plural).ok_or_else(not_found)?;
            // A named namespaced object needs its namespace in the path.
            if rt.namespaced && !tail.is_empty() {
                return Err(not_found());
            }
            (rt, None, tail)
        }
        [] => return Err(not_found()),
    };
    let (name, subresource) = match rest {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let sub_ok = match subresource.as_deref() {
        None => true,
        Some("status") => rt.status_subresource,
        Some("eviction") => rt.plural == "pods" && rt.group.is_empty(),
        Some(_) => false,
    };
    if !sub_ok || name.as_deref() == Some("") {
        return Err(not_found());
    }
    Ok(Target {
        rt,
        namespace,
        name,
        subresource,
    })
}

pub(crate) fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The verb a request counts as, as in [`crate::RequestCounts`].
pub(crate) fn verb(
    method: &hyper::Method,
    target: &Target,
    query: &HashMap<String, String>,
) -> &'static str {
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method.as_str(), target.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", _) if target.subresource.as_deref() == Some("eviction") => "evict",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_path(path: &str) -> Result<Target, ApiError> {
        super::parse_path(path, &crate::testing::store_with_crds())
    }

    #[test]
    fn core_namespaced_paths() {
        let t = parse_path("/api/v1/namespaces/ns/pods/p/eviction").unwrap();
        assert_eq!(t.rt.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("ns"));
        assert_eq!(t.name.as_deref(), Some("p"));
        assert_eq!(t.subresource.as_deref(), Some("eviction"));
        let all = parse_path("/api/v1/pods").unwrap();
        assert_eq!((all.namespace, all.name), (None, None));
    }

    #[test]
    fn namespace_objects_are_cluster_scoped() {
        let t = parse_path("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(t.rt.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("kube-system"));
        assert_eq!(t.namespace, None);
    }

    #[test]
    fn group_paths_and_status() {
        let t =
            parse_path("/apis/upgrade.openeuler.org/v1alpha1/namespaces/d/osinstances/n1/status")
                .unwrap();
        assert_eq!(t.rt.kind, "OSInstance");
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let nodes = parse_path("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(nodes.namespace, None);
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/api/v1/configmaps",
            "/apis/coordination.k8s.io/v1/namespaces/d/leases/l/status",
            "/api/v1/pods/p",
            "/api/v1/namespaces/d/pods/p/log",
            "/healthz",
        ] {
            assert_eq!(parse_path(path).unwrap_err().code, 404, "{path}");
        }
    }
}
