//! CustomResourceDefinitions through real `kube::Client`s: a CRD applied to a server without
//! one becomes a served, discoverable resource whose objects are pruned, defaulted and
//! validated against its schema; deleting the CRD stops serving it.

use fakekube::FakeApiServer;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::json;

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1.0},
                        "color": {"type": "string", "default": "blue",
                            "enum": ["blue", "red"]}}}}}}}]}
    }))
    .unwrap()
}

fn widget(spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": spec}))
    .unwrap()
}

#[tokio::test]
async fn an_applied_crd_serves_a_schema_checked_resource_until_deleted() {
    let server = FakeApiServer::start_without_crds().await;
    let client = server.client();
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    assert!(kube::discovery::pinned_kind(&client, &gvk).await.is_err());

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    let (resource, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(resource.plural, "widgets");
    let established = crds.get("widgets.example.com").await.unwrap();
    let conditions = established.status.unwrap().conditions.unwrap();
    assert!(conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True"));

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let created = widgets
        .create(
            &PostParams::default(),
            &widget(json!({"size": 2, "typo": true})),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"], json!({"size": 2, "color": "blue"}));

    let err = widgets
        .create(
            &PostParams::default(),
            &widget(json!({"size": 0, "color": "green"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Widget.example.com \"w1\" is invalid: [spec.color: Unsupported value: \"green\": \
         supported values: \"blue\", \"red\", spec.size: Invalid value: 0: spec.size in body \
         should be greater than or equal to 1]"
    );

    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    let gone = widgets.get("w1").await.unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 404),
        "{gone}"
    );
}
