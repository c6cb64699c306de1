//! Bearer tokens and RBAC through real `kube::Client`s: the admin (no token) may do anything,
//! a service account only what the stored roles bound to it allow, 403 with the real message
//! otherwise, 401 for a token the server never issued; every decision is recorded with the
//! rule that allowed it.

use fakekube::{FakeApiServer, Grant};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test]
async fn a_service_account_may_do_what_its_roles_allow_and_no_more() {
    let server = FakeApiServer::start().await;
    let admin = server.client();
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "node-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "node-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "ops"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();

    let token = server.service_account_token("ops", "reader");
    let reader = kube::Client::try_from(server.config_with_token(&token)).unwrap();
    let nodes: Api<Node> = Api::all(reader.clone());
    assert_eq!(
        nodes.get("n1").await.unwrap().metadata.name.as_deref(),
        Some("n1")
    );
    assert_eq!(
        nodes.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    let err = nodes.delete("n1", &Default::default()).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "nodes \"n1\" is forbidden: User \"system:serviceaccount:ops:reader\" cannot delete \
         resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let pods: Api<Pod> = Api::namespaced(reader, "default");
    assert!(pods.list(&Default::default()).await.is_err());

    let decisions = server.authorizations();
    let summary: Vec<(&str, &str, bool)> = decisions
        .iter()
        .map(|d| (d.verb.as_str(), d.resource.as_str(), d.allowed()))
        .collect();
    assert_eq!(
        summary,
        [
            ("get", "nodes", true),
            ("list", "nodes", true),
            ("delete", "nodes", false),
            ("list", "pods", false),
        ]
    );
    assert_eq!(
        decisions[0].granted_by,
        [Grant {
            role_kind: "ClusterRole".into(),
            role_namespace: None,
            role: "node-reader".into(),
            rule: 0
        }]
    );
    assert!(
        decisions
            .iter()
            .all(|d| d.user == "system:serviceaccount:ops:reader"),
        "the admin's requests are not recorded"
    );

    let stranger = kube::Client::try_from(server.config_with_token("made-up")).unwrap();
    let err = Api::<Node>::all(stranger).get("n1").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );
}
