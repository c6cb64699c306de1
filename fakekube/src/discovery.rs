//! Discovery, as clients (kubectl's RESTMapper, kube-rs `Discovery`) read it: `/version`,
//! `/api` (APIVersions), `/apis` (APIGroupList), and one APIResourceList per group version
//! with each resource's names, kind, scope, verbs, short names and categories, and its
//! subresources. Built from what the server serves now, CRDs included; the aggregated
//! (`apidiscovery.k8s.io/v2`) form is not offered, so clients fall back to these documents as
//! they do with servers before 1.26.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

/// The Kubernetes version fakekube answers for: the one whose API k8s-openapi's `v1_33`
/// feature describes.
const MINOR: &str = "33";

/// Every verb this server serves on a resource (collection deletes are not served).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The discovery document at `path`, `None` for a path that is not discovery.
pub(crate) fn serve(store: &Store, path: &str, host: &str) -> Option<Result<Value, ApiError>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || {
        ApiError::new(
            404,
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let doc = match segments.as_slice() {
        ["version"] => Ok(version()),
        ["api"] => Ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        })),
        ["apis"] => Ok(group_list(store)),
        ["api", version] => resource_list(store, "", version).ok_or_else(not_found),
        ["apis", group] => group_of(store, group).ok_or_else(not_found),
        ["apis", group, version] => resource_list(store, group, version).ok_or_else(not_found),
        _ => return None,
    };
    Some(doc)
}

fn version() -> Value {
    json!({
        "major": "1", "minor": MINOR, "gitVersion": format!("v1.{MINOR}.0-fakekube"),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "", "compiler": "fakekube", "platform": "linux/amd64",
    })
}

/// Group name to its versions, in the order the types are served.
fn groups(store: &Store) -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut groups: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for rt in store.served().filter(|rt| !rt.group.is_empty()) {
        let versions = groups.entry(rt.group).or_default();
        if !versions.contains(&rt.version) {
            versions.push(rt.version);
        }
    }
    groups
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions[0]),
    })
}

fn group_list(store: &Store) -> Value {
    let groups: Vec<Value> = groups(store)
        .iter()
        .map(|(name, versions)| group_json(name, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group_of(store: &Store, group: &str) -> Option<Value> {
    let groups = groups(store);
    let versions = groups.get(group)?;
    let mut doc = group_json(group, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn resource_list(store: &Store, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = store
        .served()
        .filter(|rt| rt.group == group && rt.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in types {
        resources.push(resource_json(rt));
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural), "singularName": "",
                "namespaced": rt.namespaced, "kind": rt.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if rt.group.is_empty() && rt.plural == "pods" {
            resources.push(json!({
                "name": "pods/eviction", "singularName": "", "namespaced": true,
                "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    }))
}

fn resource_json(rt: &ResourceType) -> Value {
    let mut r = json!({
        "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
        "kind": rt.kind, "verbs": VERBS,
    });
    if !rt.short_names.is_empty() {
        r["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        r["categories"] = json!(rt.categories);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::store_with_crds;

    fn doc(store: &Store, path: &str) -> Value {
        serve(store, path, "127.0.0.1:1").unwrap().unwrap()
    }

    #[test]
    fn crd_resources_are_discovered_from_their_definition() {
        let store = store_with_crds();
        let list = doc(&store, "/apis/upgrade.openeuler.org/v1alpha1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["os", "os/status", "osinstances", "osinstances/status"]
        );
        let osi = &list["resources"][2];
        assert_eq!(osi["kind"], "OSInstance");
        assert_eq!(osi["shortNames"], json!(["osi"]));
        assert_eq!(osi["singularName"], "osinstance");
        assert_eq!(osi["namespaced"], true);
        let groups = doc(&store, "/apis");
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "upgrade.openeuler.org"
                && g["preferredVersion"]["groupVersion"] == "upgrade.openeuler.org/v1alpha1"));
    }

    #[test]
    fn without_the_crd_its_group_is_not_found() {
        let store = Store::new(1);
        let err = serve(&store, "/apis/upgrade.openeuler.org/v1alpha1", "h")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, 404);
        assert!(!doc(&store, "/apis")
            .to_string()
            .contains("upgrade.openeuler.org"));
    }

    #[test]
    fn core_resources_list_subresources_and_short_names() {
        let store = Store::new(1);
        let core = doc(&store, "/api/v1");
        let find = |name: &str| {
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(find("pods/eviction")["kind"], "Eviction");
        assert_eq!(find("nodes")["shortNames"], json!(["no"]));
        assert_eq!(find("nodes")["namespaced"], false);
        assert_eq!(find("pods")["categories"], json!(["all"]));
        assert!(
            serve(&store, "/api/v1/pods", "h").is_none(),
            "a resource path"
        );
    }
}
