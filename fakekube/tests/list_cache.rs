//! A list at `resourceVersion=0` is served as the real server's watch cache serves it: whole,
//! whatever the `limit`. Clients that list big collections must page with a quorum read.

mod common;

use common::pod;
use fakekube::FakeApiServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};

#[tokio::test]
async fn a_list_at_any_resource_version_ignores_the_limit() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    for name in ["a", "b", "c"] {
        pods.create(&PostParams::default(), &pod(name, &[]))
            .await
            .unwrap();
    }
    let cached = pods
        .list(&ListParams::default().limit(2).match_any())
        .await
        .unwrap();
    assert_eq!(cached.items.len(), 3);
    assert_eq!(cached.metadata.continue_, None);
    let quorum = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(quorum.items.len(), 2);
    assert!(quorum.metadata.continue_.is_some());
}
