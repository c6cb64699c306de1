//! The operator and the proxies as they run in a cluster: each under its service account
//! (os-operator; os-proxy with a token bound to its node), authorized by the RBAC objects of
//! deploy/operator.yaml and deploy/proxy.yaml and judged by the admission policy of
//! deploy/admission.yaml, applied to the fake API server as shipped.

use std::path::{Path, PathBuf};

use fakekube::{FakeApiServer, UserInfo};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::Client;
use serde::Deserialize;
use serde_json::Value;

use super::NS;

/// The claim Kubernetes 1.30+ puts in a pod-bound token's user info (deploy/admission.yaml).
const NODE_CLAIM: &str = "authentication.kubernetes.io/node-name";

/// Creates every object of deploy/operator.yaml, admission.yaml and proxy.yaml, as `kubectl
/// apply` would, through discovery and the admin client.
pub async fn apply_deploy_manifests(client: &Client) {
    for file in ["operator.yaml", "admission.yaml", "proxy.yaml"] {
        let path = crate::repo_root().join("deploy").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                create(client, value).await;
            }
        }
    }
}

async fn create(client: &Client, value: Value) {
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    let types = obj.types.clone().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(&types).unwrap();
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discovery of {gvk:?}: {e}"));
    let api: Api<DynamicObject> = match (&caps.scope, obj.metadata.namespace.as_deref()) {
        (kube::discovery::Scope::Namespaced, ns) => {
            Api::namespaced_with(client.clone(), ns.unwrap_or(NS), &resource)
        }
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {gvk:?} {:?}: {e}", obj.metadata.name));
}

/// A kubeconfig under `dir` that authenticates as the os-operator service account.
pub fn operator_kubeconfig(server: &FakeApiServer, dir: &Path) -> PathBuf {
    let token = server.service_account_token(NS, "os-operator");
    write(
        dir,
        "kubeconfig-os-operator",
        &server.kubeconfig_with_token(NS, &token),
    )
}

/// A token of the os-proxy pod on `node`: the os-proxy service account with the node-name
/// claim of a token bound to that pod.
pub fn proxy_token(server: &FakeApiServer, node: &str) -> String {
    let mut user = UserInfo::service_account(NS, "os-proxy");
    user.extra.insert(NODE_CLAIM.into(), vec![node.to_string()]);
    server.issue_token(user)
}

/// A kubeconfig under `dir` with [`proxy_token`].
pub fn proxy_kubeconfig(server: &FakeApiServer, dir: &Path, node: &str) -> PathBuf {
    let token = proxy_token(server, node);
    let name = format!("kubeconfig-os-proxy-{node}");
    write(dir, &name, &server.kubeconfig_with_token(NS, &token))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
