//! `kube::runtime::events::Recorder` publishing `events.k8s.io/v1` Events.

use fakekube::FakeApiServer;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use operator::crd::{OsInstance, OsInstanceSpec};

#[tokio::test]
async fn recorder_creates_then_patches_an_event_series() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let osis: Api<OsInstance> = Api::default_namespaced(client.clone());
    let osi = osis
        .create(
            &PostParams::default(),
            &OsInstance::new("node-1", OsInstanceSpec::default()),
        )
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "os-operator".into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "Started".into(),
        note: Some("upgrade started".into()),
        action: "Upgrade".into(),
        secondary: None,
    };
    let reference = osi.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let events: Api<K8sEvent> = Api::default_namespaced(client);
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        listed.len(),
        1,
        "the repeat became a series on the same Event"
    );
    let ev = &listed[0];
    assert_eq!(ev.reason.as_deref(), Some("Started"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("os-operator"));
    assert_eq!(
        ev.regarding.as_ref().unwrap().name.as_deref(),
        Some("node-1")
    );
    assert_eq!(ev.series.as_ref().map(|s| s.count), Some(2));
    let verbs: Vec<_> = server
        .log()
        .iter()
        .filter(|e| e.resource == "events")
        .map(|e| e.verb)
        .collect();
    assert_eq!(verbs, ["create", "patch"]);
}
