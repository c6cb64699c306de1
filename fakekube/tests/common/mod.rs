//! Helpers shared by the integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use serde_json::json;

/// A pod in namespace `default` with labels.
pub fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: serde_json::Map<_, _> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "node-1"},
    }))
    .unwrap()
}

/// The `Status` of a failed call; panics on success or on a non-API error.
pub fn api_status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Awaits `fut` for at most five seconds.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
