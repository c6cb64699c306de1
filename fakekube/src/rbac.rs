//! Authentication by bearer token and RBAC authorization, as far as the real server's RBAC
//! authorizer decides: a token the test issued names a user (a service account, with its
//! groups and, bound to a node, the node-name claim); the Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding objects stored in the server decide what it may do; a denial is 403
//! Forbidden with the real message. A request without a token is the cluster admin (every
//! existing test's client), which is neither checked nor recorded.
//!
//! Every decision for a token's user is recorded with the rules that allowed it, so a test can
//! check both that nothing was denied and that every granted verb was used.
//!
//! Not modelled: aggregated ClusterRoles, `nonResourceURLs` rules (discovery and /version are
//! allowed to every authenticated user, as the default `system:discovery` binding does),
//! `resourceNames` on list and watch (only requests that name an object match them), and the
//! escalation checks on writes of RBAC objects.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

/// Who a token authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
    /// `authentication.kubernetes.io/node-name` and the like.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The user of a request without a token: a cluster admin.
    pub fn admin() -> UserInfo {
        UserInfo {
            username: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    /// A service account's user, as the token authenticator names it.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }
}

/// The rule that allowed a request: `rules[rule]` of the role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    /// The Role's namespace; `None` for a ClusterRole.
    pub role_namespace: Option<String>,
    pub role: String,
    pub rule: usize,
}

/// One authorization decision for a token's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    pub api_group: String,
    /// The plural, with `/subresource` when there is one: `pods/eviction`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Every rule, of every role bound to the user, that allows the request; empty when
    /// it was denied.
    pub granted_by: Vec<Grant>,
}

impl Authorization {
    pub fn allowed(&self) -> bool {
        !self.granted_by.is_empty()
    }
}

/// The tokens a test issued and the decisions made for them.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    tokens: std::collections::HashMap<String, UserInfo>,
    pub decisions: Vec<Authorization>,
}

impl Auth {
    pub fn issue(&mut self, user: UserInfo) -> String {
        let token = format!("fakekube-token-{}", self.tokens.len() + 1);
        self.tokens.insert(token.clone(), user);
        token
    }

    /// `None` without an `Authorization` header (the admin); 401 for a token not issued.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<UserInfo>, ApiError> {
        let Some(header) = header else {
            return Ok(None);
        };
        header
            .strip_prefix("Bearer ")
            .and_then(|t| self.tokens.get(t.trim()))
            .cloned()
            .map(Some)
            .ok_or_else(|| ApiError::new(401, "Unauthorized"))
    }
}

/// What the server would ask RBAC about a request.
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub rt: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Attributes<'_> {
    fn resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.rt.plural),
            None => self.rt.plural.to_string(),
        }
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// RBAC's `ResourceMatches`: `*`, the exact `resource/subresource`, `resource/*` and
/// `*/subresource`.
fn resource_matches(rule: &Value, attrs: &Attributes<'_>) -> bool {
    let wanted = attrs.resource();
    strings(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == wanted
            || attrs.subresource.is_some_and(|sub| {
                *r == format!("{}/*", attrs.rt.plural) || *r == format!("*/{sub}")
            })
    })
}

fn rule_allows(rule: &Value, attrs: &Attributes<'_>) -> bool {
    let any = |field: &str, wanted: &str| {
        strings(&rule[field])
            .iter()
            .any(|v| *v == "*" || *v == wanted)
    };
    let names = strings(&rule["resourceNames"]);
    any("verbs", attrs.verb)
        && any("apiGroups", attrs.rt.group)
        && resource_matches(rule, attrs)
        && (names.is_empty() || attrs.name.is_some_and(|n| names.contains(&n)))
}

fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        Some("User") => user.username == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        _ => false,
    }
}

/// The rules of every role bound to `user` that allow the request.
pub(crate) fn grants(store: &Store, user: &UserInfo, attrs: &Attributes<'_>) -> Vec<Grant> {
    let find = |plural: &str| store.find("rbac.authorization.k8s.io", "v1", plural);
    let (Some(roles), Some(cluster_roles), Some(bindings), Some(cluster_bindings)) = (
        find("roles"),
        find("clusterroles"),
        find("rolebindings"),
        find("clusterrolebindings"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut check = |kind: &str, ns: Option<&str>, role: &Value| {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
            if rule_allows(rule, attrs) {
                out.push(Grant {
                    role_kind: kind.to_string(),
                    role_namespace: ns.map(str::to_string),
                    role: name.to_string(),
                    rule: i,
                });
            }
        }
    };
    let role_ref = |b: &Value| {
        let r = &b["roleRef"];
        (
            r["kind"].as_str().unwrap_or_default().to_string(),
            r["name"].as_str().unwrap_or_default().to_string(),
        )
    };
    for (_, b) in store.list(cluster_bindings, None) {
        if b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ""))
        {
            let (kind, name) = role_ref(b);
            if let (true, Some(role)) = (kind == "ClusterRole", store.get(cluster_roles, "", &name))
            {
                check("ClusterRole", None, role);
            }
        }
    }
    for ((ns, _), b) in store.list(bindings, None) {
        // A RoleBinding grants only in its own namespace.
        if attrs.namespace != Some(ns.as_str()) {
            continue;
        }
        if !b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ns))
        {
            continue;
        }
        match role_ref(b) {
            (kind, name) if kind == "Role" => {
                if let Some(role) = store.get(roles, ns, &name) {
                    check("Role", Some(ns), role);
                }
            }
            (kind, name) if kind == "ClusterRole" => {
                if let Some(role) = store.get(cluster_roles, "", &name) {
                    check("ClusterRole", None, role);
                }
            }
            _ => {}
        }
    }
    out
}

/// apiserver's `forbiddenMessage` wrapped as `NewForbidden` does.
pub(crate) fn forbidden(user: &UserInfo, attrs: &Attributes<'_>) -> ApiError {
    let resource = attrs.resource();
    let why = match attrs.namespace {
        Some(ns) => format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} in the namespace {ns:?}",
            user.username, attrs.verb, attrs.rt.group
        ),
        None => format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
            user.username, attrs.verb, attrs.rt.group
        ),
    };
    let qualified = attrs.rt.qualified();
    let message = match attrs.name {
        Some(name) => format!("{qualified} {name:?} is forbidden: {why}"),
        None => format!("{qualified} is forbidden: {why}"),
    };
    ApiError::new(403, message).with_details(serde_json::json!({
        "name": attrs.name.unwrap_or_default(), "group": attrs.rt.group, "kind": attrs.rt.plural,
    }))
}

/// The RBAC verb of a request counted as `verb` (`evict` is a create of `pods/eviction`).
pub(crate) fn rbac_verb(verb: &str) -> &str {
    match verb {
        "evict" => "create",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> Store {
        let mut store = Store::new(3);
        let rt = |p: &str| store_rt(p);
        let objects = [
            (
                "clusterroles",
                "",
                json!({"metadata": {"name": "reader"}, "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}]}),
            ),
            (
                "clusterrolebindings",
                "",
                json!({"metadata": {"name": "reader"},
                "roleRef": {"kind": "ClusterRole", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]}),
            ),
            (
                "roles",
                "ns",
                json!({"metadata": {"name": "lease"}, "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "resourceNames": ["mine"], "verbs": ["get", "update"]}]}),
            ),
            (
                "rolebindings",
                "ns",
                json!({"metadata": {"name": "lease"},
                "roleRef": {"kind": "Role", "name": "lease"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
            ),
        ];
        for (plural, ns, obj) in objects {
            store.create(rt(plural), ns, obj).unwrap();
        }
        store
    }

    fn store_rt(plural: &str) -> &'static ResourceType {
        crate::registry::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    fn attrs<'a>(
        verb: &'a str,
        plural: &str,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            rt: store_rt(plural),
            subresource: sub,
            namespace: ns,
            name,
        }
    }

    #[test]
    fn bindings_grant_their_roles_rules_where_they_apply() {
        let store = store();
        let sa = UserInfo::service_account("ns", "sa");
        let g = grants(&store, &sa, &attrs("list", "nodes", None, None, None));
        assert_eq!(
            g,
            [Grant {
                role_kind: "ClusterRole".into(),
                role_namespace: None,
                role: "reader".into(),
                rule: 0
            }]
        );
        assert!(grants(&store, &sa, &attrs("patch", "nodes", None, None, Some("n"))).is_empty());
        assert_eq!(
            grants(
                &store,
                &sa,
                &attrs("create", "pods", Some("eviction"), Some("x"), Some("p"))
            )[0]
            .rule,
            1
        );
        assert!(grants(
            &store,
            &sa,
            &attrs("get", "pods", None, Some("x"), Some("p"))
        )
        .is_empty());
        let other = UserInfo::service_account("other", "sa");
        assert!(grants(&store, &other, &attrs("list", "nodes", None, None, None)).is_empty());
    }

    #[test]
    fn role_bindings_grant_in_their_namespace_and_resource_names_need_a_name() {
        let store = store();
        let sa = UserInfo::service_account("ns", "sa");
        assert_eq!(
            grants(
                &store,
                &sa,
                &attrs("update", "leases", None, Some("ns"), Some("mine"))
            )
            .len(),
            1
        );
        assert!(grants(
            &store,
            &sa,
            &attrs("update", "leases", None, Some("ns"), Some("theirs"))
        )
        .is_empty());
        assert!(grants(
            &store,
            &sa,
            &attrs("get", "leases", None, Some("other"), Some("mine"))
        )
        .is_empty());
        assert!(grants(&store, &sa, &attrs("get", "leases", None, Some("ns"), None)).is_empty());
    }

    #[test]
    fn denials_read_as_the_real_server_words_them() {
        let sa = UserInfo::service_account("ns", "sa");
        let e = forbidden(&sa, &attrs("delete", "pods", None, Some("web"), Some("p1")));
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(e.message, "pods \"p1\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot delete resource \"pods\" in API group \"\" in the namespace \"web\"");
        let e = forbidden(&sa, &attrs("list", "clusterroles", None, None, None));
        assert_eq!(e.message, "clusterroles.rbac.authorization.k8s.io is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope");
    }
}
