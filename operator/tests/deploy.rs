//! The manifests under `deploy/`: generated CRDs are current, every object parses strictly into
//! its Kubernetes type (an offline stand-in for `kubectl apply --dry-run`), and KubeOS-format OS
//! manifests parse into the Rust types unchanged.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use operator::crd::{
    crds_yaml, ImageType, NodePhase, NodeStatus, OpsType, Os, OsInstance, REGENERATE_CRDS,
};
use operator::rollout::Plan;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `T` and requires that nothing is lost on the way back: a misspelled or
/// misplaced field would be dropped by the typed parse and show up here.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{} {} changed in a round trip",
        doc["kind"], doc["metadata"]["name"]
    );
    typed
}

#[test]
fn crds_yaml_is_current() {
    let generated = crds_yaml().unwrap();
    assert!(
        deploy("crds.yaml") == generated,
        "deploy/crds.yaml is stale; regenerate it from the workspace root with:\n    {REGENERATE_CRDS}"
    );
}

#[test]
fn crds_are_valid_custom_resource_definitions() {
    let docs = documents(&deploy("crds.yaml"));
    let crds: Vec<CustomResourceDefinition> = docs.iter().map(strict).collect();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "os.upgrade.openeuler.org",
            "osinstances.upgrade.openeuler.org"
        ]
    );
    for crd in &crds {
        assert_eq!(crd.spec.group, "upgrade.openeuler.org");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "status subresource"
        );
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert!(columns.iter().any(|c| c.json_path.starts_with(".status.")));
    }
}

#[test]
fn operator_manifests_parse_into_their_kubernetes_types() {
    let docs = documents(&deploy("operator.yaml"));
    let mut kinds = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "Namespace" => drop(strict::<Namespace>(doc)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(doc)),
            "ClusterRole" => check_least_privilege(&strict::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc)),
            "Role" => drop(strict::<Role>(doc)),
            "RoleBinding" => drop(strict::<RoleBinding>(doc)),
            "Deployment" => check_deployment(&strict::<Deployment>(doc)),
            "PodDisruptionBudget" => drop(strict::<PodDisruptionBudget>(doc)),
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds[0], "Namespace",
        "the namespace comes first for kubectl apply"
    );
}

#[test]
fn proxy_manifests_parse_and_grant_only_what_the_proxy_does() {
    let docs = documents(&deploy("proxy.yaml"));
    let mut kinds = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ServiceAccount" => drop(strict::<ServiceAccount>(doc)),
            "ClusterRole" => check_proxy_role(&strict::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc)),
            "Role" => check_proxy_namespaced_role(&strict::<Role>(doc)),
            "RoleBinding" => {
                let b = strict::<RoleBinding>(doc);
                assert!(
                    matches!(
                        b.metadata.namespace.as_deref(),
                        Some("os-upgrade-system" | "default")
                    ),
                    "{b:?}"
                );
            }
            "DaemonSet" => check_daemonset(&strict::<DaemonSet>(doc)),
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert!(kinds.iter().any(|k| k == "DaemonSet"));
    assert!(kinds.iter().any(|k| k == "Role"));
}

/// OS and OSInstance rights exist in the operator's namespace only: a proxy's token cannot
/// read or write them anywhere else. Its Events (about its Node, a cluster-scoped object)
/// are written in `default` only, where kube's Recorder puts them.
fn check_proxy_namespaced_role(role: &Role) {
    let (group, resources): (&str, &[&str]) = match role.metadata.namespace.as_deref() {
        Some("os-upgrade-system") => (
            "upgrade.openeuler.org",
            &["os", "osinstances", "osinstances/status"],
        ),
        Some("default") => ("events.k8s.io", &["events"]),
        other => panic!("a proxy Role in {other:?}"),
    };
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert_eq!(rule.api_groups.as_deref(), Some(&[group.to_owned()][..]));
        for resource in rule.resources.as_deref().unwrap_or_default() {
            assert!(resources.contains(&resource.as_str()), "{rule:?}");
        }
        assert!(!rule.verbs.iter().any(|v| v == "delete" || v == "*"));
    }
}

fn check_proxy_role(role: &ClusterRole) {
    let rules = role.rules.as_deref().unwrap_or_default();
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    // Drains go through the Eviction API, which honours PodDisruptionBudgets.
    assert!(grants("pods/eviction", "create"));
    assert!(
        !grants("pods", "delete"),
        "the proxy must not delete pods directly"
    );
    assert!(grants("nodes", "patch") && !grants("nodes", "delete"));
    for namespaced in ["os", "osinstances", "osinstances/status"] {
        assert!(
            !["get", "list", "watch", "create", "patch", "update"]
                .iter()
                .any(|v| grants(namespaced, v)),
            "{namespaced} granted cluster-wide"
        );
    }
    assert!(!grants("secrets", "get"));
    assert!(
        !grants("events", "create") && !grants("events", "patch"),
        "the proxy's Events are about its Node and go to `default`: a Role there grants \
         them, not a ClusterRole (which would let a node's token write Events anywhere)"
    );
    for rule in rules {
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "wildcard verb in {rule:?}"
        );
    }
}

fn check_daemonset(ds: &DaemonSet) {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("os-proxy"));
    let container = &pod.containers[0];
    let env: Vec<_> = container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .collect();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let socket = env.iter().find(|e| e.name == "AGENT_SOCKET").unwrap();
    let mount = &container.volume_mounts.as_deref().unwrap()[0];
    assert!(socket
        .value
        .as_deref()
        .unwrap()
        .starts_with(&mount.mount_path));
    // The host's socket directory: read-only (connecting needs no write), and the agent's
    // own (the pod waits for it rather than the kubelet creating it).
    assert_eq!(mount.read_only, Some(true), "the agent socket mount");
    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    let host_path = volume.host_path.as_ref().expect("a hostPath volume");
    assert_eq!(host_path.type_.as_deref(), Some("Directory"));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|c| c.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "the proxy's seccomp profile"
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("upgrade.openeuler.org/os-agent"))
            .map(String::as_str),
        Some("true"),
        "the proxy runs only where os-agent does"
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the proxy must keep running on cordoned and tainted nodes"
    );
}

fn check_least_privilege(role: &ClusterRole) {
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(
            !rule
                .api_groups
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|g| g == "upgrade.openeuler.org"),
            "OS/OSInstance rights belong in the os-upgrade-system Role: {rule:?}"
        );
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            !resources.iter().any(|r| r == "events"),
            "the operator's Events are about OS resources, created in their namespace \
             (os-upgrade-system): a Role there grants them, not a ClusterRole: {rule:?}"
        );
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "wildcard verb in {rule:?}"
        );
        assert!(
            !resources.iter().any(|r| r == "*"),
            "wildcard resource in {rule:?}"
        );
        let writes = rule
            .verbs
            .iter()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
        for read_only in ["nodes", "pods", "secrets", "os"] {
            assert!(
                !(writes && resources.iter().any(|r| r == read_only)),
                "writes {read_only}"
            );
        }
    }
}

fn check_deployment(deployment: &Deployment) {
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("os-operator"));
    let container = &pod.containers[0].security_context.as_ref().unwrap();
    assert_eq!(container.allow_privilege_escalation, Some(false));
    assert_eq!(container.read_only_root_filesystem, Some(true));
    let pod_context = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_context.run_as_non_root, Some(true));
    assert_eq!(
        pod_context
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "the operator's seccomp profile"
    );
}

/// One grant as docs/security.md's RBAC table names it: (resource, resource name or "", verb),
/// with the API group when the table gives one.
type TableGrant = (String, String, String);

/// The grants of one table cell or one kind of role, and the (API group, resource) pairs
/// named with them.
type Grants = (BTreeSet<TableGrant>, Vec<(String, String)>);

/// The grants of the table row of `account`: the cluster-wide cell, the cell of the Role in
/// os-upgrade-system and that of the Role in `default` ("—" for none).
fn security_md_row(account: &str) -> [Grants; 3] {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md");
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("| {account} |");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no RBAC table row for {account} in docs/security.md"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 6, "{line}");
    [cells[2], cells[3], cells[4]].map(|cell| {
        let (mut grants, mut groups) = (BTreeSet::new(), Vec::new());
        for item in cell.split("; ").filter(|item| *item != "—") {
            let mut words: Vec<&str> = item.split_whitespace().collect();
            let verbs = words
                .pop()
                .unwrap_or_else(|| panic!("empty item in {line}"));
            let name = match words.last() {
                Some(w) if w.starts_with('`') => words.pop().unwrap().trim_matches('`'),
                _ => "",
            };
            let resource = match words[..] {
                [resource] => resource,
                [group, resource] => {
                    groups.push((group.to_string(), resource.to_string()));
                    resource
                }
                _ => panic!("cannot read {item:?} in {line}"),
            };
            for verb in verbs.split('/') {
                grants.insert((resource.into(), name.into(), verb.into()));
            }
        }
        (grants, groups)
    })
}

/// The rules of every `kind` (ClusterRole, or Role in `namespace`) in a deploy/ file:
/// grants and (group, resource) pairs.
fn manifest_grants(file: &str, kind: &str, namespace: Option<&str>) -> Grants {
    let (mut grants, mut groups) = (BTreeSet::new(), Vec::new());
    for doc in documents(&deploy(file))
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["namespace"].as_str() == namespace)
    {
        let rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
            serde_json::from_value(doc["rules"].clone()).unwrap();
        for rule in rules {
            let names = rule.resource_names.unwrap_or_else(|| vec![String::new()]);
            for resource in rule.resources.unwrap_or_default() {
                for group in rule.api_groups.iter().flatten() {
                    groups.push((group.clone(), resource.clone()));
                }
                for name in &names {
                    for verb in &rule.verbs {
                        grants.insert((resource.clone(), name.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    (grants, groups)
}

/// docs/security.md's RBAC table says what deploy/ grants, cell by cell.
#[test]
fn the_rbac_table_in_security_md_is_the_manifests() {
    for (account, file) in [("os-operator", "operator.yaml"), ("os-proxy", "proxy.yaml")] {
        let row = security_md_row(account);
        let kinds = [
            ("ClusterRole", None),
            ("Role", Some("os-upgrade-system")),
            ("Role", Some("default")),
        ];
        for ((table, table_groups), (kind, ns)) in row.into_iter().zip(kinds) {
            let (manifest, manifest_groups) = manifest_grants(file, kind, ns);
            assert_eq!(
                table, manifest,
                "docs/security.md's {kind} {ns:?} cell for {account} is not deploy/{file}'s"
            );
            for g in table_groups {
                assert!(manifest_groups.contains(&g), "{account} {kind}: {g:?}");
            }
        }
    }
}

/// Every key of `original` is in `parsed` with the same value: no KubeOS field was renamed,
/// dropped or rewritten by the Rust types (defaults for absent fields may be added).
fn assert_subset(original: &Value, parsed: &Value, path: &str) {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (k, v) in o {
                let got = p.get(k).unwrap_or_else(|| panic!("{path}.{k} was dropped"));
                assert_subset(v, got, &format!("{path}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(p)) if o.len() == p.len() => {
            for (i, (a, b)) in o.iter().zip(p).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(original, parsed, "{path} changed"),
    }
}

fn parse_os(yaml: &str) -> Os {
    let doc = documents(yaml).remove(0);
    let os: Os = serde_json::from_value(doc.clone()).expect("parses into Os");
    assert_subset(&doc, &serde_json::to_value(&os).unwrap(), "");
    os
}

#[test]
fn the_sample_os_parses_unchanged_and_is_actionable() {
    let os = parse_os(&deploy("samples/sample-os.yaml"));
    assert_eq!(os.spec.opstype, OpsType::Upgrade);
    assert_eq!(os.spec.imagetype, ImageType::Disk);
    assert!(!os.spec.flag_safe && os.spec.mtls);
    let sysconfigs = os
        .spec
        .sysconfigs
        .as_ref()
        .unwrap()
        .configs
        .as_ref()
        .unwrap();
    let first = &sysconfigs[0].contents.as_ref().unwrap()[0];
    assert_eq!(first.value_text(), "16384");
    let bare_key = sysconfigs[2].contents.as_ref().unwrap().last().unwrap();
    assert_eq!(
        (bare_key.key.as_deref(), bare_key.value_text().as_str()),
        (Some("crash_kexec_post_notifiers"), "")
    );
    let plan = Plan::from_spec(&os.spec).expect("the sample is a valid rollout");
    assert_eq!(plan.target, "KubeOS 1.0.1");
}

#[test]
fn the_registry_sample_is_a_valid_rollout_without_a_checksum() {
    let os = parse_os(&deploy("samples/sample-os-registry.yaml"));
    assert_eq!(os.spec.imagetype, ImageType::Docker);
    assert!(os.spec.checksum.is_empty());
    assert!(os.spec.containerimage.contains("@sha256:"));
    let plan = Plan::from_spec(&os.spec).expect("a pinned containerimage needs no checksum");
    assert_eq!(plan.target, "2");
}

/// KubeOS's documented manifests as its docs write them (placeholders replaced by values),
/// including the forms its own CRD was strict about: `imagetype: ""`, no imageurl/flagSafe/mtls
/// for config, `mtls: true` with a container image.
const KUBEOS_MANIFESTS: [&str; 4] = [
    r#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OS
metadata:
  name: os-sample
spec:
  imagetype: containerd
  opstype: upgrade
  osversion: KubeOS 1.0.1
  maxunavailable: 2
  containerimage: registry.local/kubeos:1.0.1
  evictpodforce: true
  imageurl: ""
  checksum: sha256:6b2c1a5e
  flagSafe: false
  mtls: true
  nodeselector: kubeos-v1
"#,
    r#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OS
metadata:
  name: os-sample
spec:
  imagetype: ""
  opstype: config
  osversion: KubeOS 1.0.1
  maxunavailable: 3
  containerimage: ""
  evictpodforce: false
  checksum: ""
  sysconfigs:
    version: v2
    configs:
      - model: kernel.sysctl
        contents:
          - key: user.max_user_namespaces
            value: 16384
          - key: net.ipv4.tcp_tw_recycle
            value: 0
            operation: delete
      - model: grub.cmdline.current
        contents:
          - key: selinux
            value: "0"
          - key: root
            value: UUID=e4f1b0a0-590e-4c5f-9d8a-3a2c7b8e2d94
          - key: crash_kexec_post_notifiers
"#,
    r#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OS
metadata:
  name: os-sample
spec:
  imagetype: ""
  opstype: rollback
  osversion: KubeOS 1.0.0
  maxunavailable: 2
  containerimage: ""
  evictpodforce: true
  imageurl: ""
  checksum: ""
  flagSafe: false
  mtls: true
"#,
    r#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OS
metadata:
  name: os-sample
spec:
  imagetype: disk
  opstype: upgrade
  osversion: KubeOS 1.0.1
  maxunavailable: 1
  containerimage: ""
  evictpodforce: false
  imageurl: http://10.0.0.5/update.img
  checksum: 9e7a2ef6
  flagSafe: true
  mtls: false
  nodeselector: all-label
  timewindow:
    starttime: "2024-05-01 22:00:00"
    endtime: "2024-05-02 04:00:00"
  timeinterval: 60
  executionmode: serial
"#,
];

#[test]
fn kubeos_documented_manifests_parse_unchanged_and_are_actionable() {
    for yaml in KUBEOS_MANIFESTS {
        let os = parse_os(yaml);
        Plan::from_spec(&os.spec).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    }
}

#[test]
fn absent_kubeos_defaults_are_kubeos_defaults() {
    let os = parse_os(
        "apiVersion: upgrade.openeuler.org/v1alpha1\nkind: OS\nmetadata: {name: x}\n\
         spec: {osversion: v1, opstype: rollback, maxunavailable: 1}\n",
    );
    assert_eq!(os.spec.nodeselector, "no-label");
    assert_eq!(os.spec.timeinterval, 15);
    assert_eq!(
        os.spec.executionmode,
        operator::crd::ExecutionMode::Parallel
    );
    assert_eq!(
        (os.spec.failure_budget, os.spec.node_timeout_seconds),
        (1, 3600)
    );
    assert!(!os.spec.paused && !os.spec.include_control_plane);
}

#[test]
fn a_kubeos_osinstance_parses_unchanged() {
    let yaml = r#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OSInstance
metadata:
  name: kubeos-node1
  namespace: default
  labels:
    upgrade.openeuler.org/osinstance-node: kubeos-node1
spec:
  nodestatus: config
  namespacedname: {name: os-sample, namespace: default}
  sysconfigs:
    version: v2
    configs:
      - model: grub.cmdline.next
        contents:
          - {key: selinux, value: "0"}
  upgradeconfigs: {version: v1}
status:
  sysconfigs: {version: v1}
  upgradeconfigs: {version: v1}
"#;
    let doc = documents(yaml).remove(0);
    let osi: OsInstance = serde_json::from_value(doc.clone()).expect("parses into OsInstance");
    assert_subset(&doc, &serde_json::to_value(&osi).unwrap(), "");
    assert_eq!(osi.spec.nodestatus, NodeStatus::Config);
    let view = operator::rollout::InstanceView::from_instance(&osi);
    assert_eq!(view.phase, Some(NodePhase::Assigned));
    assert_eq!(view.applied_config_version.as_deref(), Some("v1"));
}

/// `kubectl kustomize deploy/` (the real kubectl): every object of the four
/// files comes out, the images are the kustomization's (one registry and tag
/// setting, `make deploy-config`), and the namespace allows the proxy's
/// privileged pod under Pod Security admission.
#[test]
fn kustomize_renders_every_object_with_the_configured_images() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (Debian package kubernetes-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let files: usize = ["crds.yaml", "operator.yaml", "admission.yaml", "proxy.yaml"]
        .iter()
        .map(|f| documents(&deploy(f)).len())
        .sum();
    assert_eq!(docs.len(), files, "objects lost or added by kustomize");
    let kustomization: Value = serde_yaml::from_str(&deploy("kustomization.yaml")).unwrap();
    let image_of = |name: &str| {
        let i = kustomization["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in kustomization.yaml"));
        format!(
            "{}:{}",
            i["newName"].as_str().unwrap(),
            i["newTag"].as_str().unwrap()
        )
    };
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    assert_eq!(
        container(find("Deployment", "os-operator"))["image"],
        image_of("os-operator")
    );
    assert_eq!(
        container(find("DaemonSet", "os-proxy"))["image"],
        image_of("os-proxy")
    );
    let ns = find("Namespace", "os-upgrade-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}
