//! A whole upgrade and a rollback through the proxy's loop, with a scripted agent whose node
//! the test "reboots", and a proxy restarted between every step.

mod common;

use common::*;
use fakekube::FakeApiServer;
use operator::crd::NodeStatus;
use proxy::agent_client::{LastFailure, Slot, SlotState};
use proxy::Proxy;
use std::time::Duration;

fn phase_is(want: &'static str) -> impl Fn(&operator::crd::OsInstance) -> bool {
    move |o| phase(o).as_deref() == Some(want)
}

#[tokio::test]
async fn upgrade_runs_through_every_phase_and_survives_restarts() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    web_pod(&client, "web-0").await;
    start_operation(&client, "upgrade", "Assigned", NEW).await;
    let agent = FakeAgent::start("empty", "");
    // A new proxy for every stretch: nothing is remembered between them.
    let proxy = || {
        Proxy::new(
            client.clone(),
            proxy_config(&agent.socket, Duration::from_secs(10)),
        )
    };

    tick_until(&proxy(), &client, 5, phase_is("Draining")).await;
    assert_eq!(agent.calls(), ["prepare_upgrade"]);
    tick_until(&proxy(), &client, 5, phase_is("Rebooting")).await;
    assert_eq!(agent.calls(), ["prepare_upgrade", "upgrade"]);
    let n = node(&client, NODE).await;
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));
    assert!(
        Api::<k8s_openapi::api::core::v1::Pod>::default_namespaced(client.clone())
            .get_opt("web-0")
            .await
            .unwrap()
            .is_none()
    );

    // Waiting for the reboot: nothing more is asked of the agent.
    for _ in 0..3 {
        proxy().tick().await.unwrap();
    }
    assert_eq!(
        instance(&client).await.status.unwrap().step.as_deref(),
        Some("waiting for the reboot into slot B")
    );

    agent.set(|s| {
        s.booted = Slot::B;
        s.on_trial = true;
    });
    tick_until(&proxy(), &client, 5, phase_is("Confirming")).await;
    agent.set(|s| {
        s.active = Slot::B;
        s.trial = None;
        s.on_trial = false;
        s.slots.b.state = SlotState::Good;
    });
    tick_until(&proxy(), &client, 5, phase_is("Succeeded")).await;
    assert_succeeded(&client).await;
    assert_eq!(
        agent.calls(),
        ["prepare_upgrade", "upgrade"],
        "nothing done twice"
    );
}

async fn assert_succeeded(client: &kube::Client) {
    let osi = instance(client).await;
    let status = osi.status.unwrap();
    assert_eq!(status.current_version.as_deref(), Some(NEW));
    assert_eq!(status.progress, Some(100));
    assert_eq!(status.last_error, None);
    assert_eq!(osi.spec.nodestatus, NodeStatus::Idle);
    let n = node(client, NODE).await;
    assert_ne!(n.spec.unwrap().unschedulable, Some(true), "uncordoned");
}

#[tokio::test]
async fn a_fallback_fails_with_the_version_and_uncordons() {
    let Rig {
        server: _server,
        client,
        agent,
        proxy: p,
    } = upgrade_rig("empty", "").await;
    tick_until(&p, &client, 10, phase_is("Rebooting")).await;
    // GRUB used up the tries and booted A; the agent marked B failed.
    agent.set(|s| {
        s.trial = None;
        s.fail = Some(Slot::B);
        s.slots.b.state = SlotState::Failed;
        s.last_failure = Some(LastFailure {
            slot: Slot::B,
            version: Some(NEW.into()),
            reason: "kernel panic".into(),
        });
    });
    tick_until(&p, &client, 5, phase_is("Failed")).await;
    let status = instance(&client).await.status.unwrap();
    assert_eq!(
        status.last_error.as_deref(),
        Some("trial boot of v2 failed: kernel panic; the node runs slot A (v1)")
    );
    assert_eq!(status.current_version.as_deref(), Some("v1"));
    assert_ne!(
        node(&client, NODE).await.spec.unwrap().unschedulable,
        Some(true)
    );
}

#[tokio::test]
async fn config_reports_the_agents_refusal_honestly() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "config", "Assigned", "v1").await;
    // The settings are the OS's (the proxy never takes them from the OSInstance).
    let api = Api::<operator::crd::Os>::default_namespaced(client.clone());
    let sys = serde_json::json!({"spec": {"sysconfigs": {"version": "s1", "configs": [
        {"model": "kernel.sysctl", "contents": [{"key": "vm.swappiness", "value": 10}]}]}}});
    api.patch(
        "os",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(sys),
    )
    .await
    .unwrap();
    let agent = FakeAgent::start("empty", "");
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    let steps = tick_until(&p, &client, 5, phase_is("Failed")).await;
    assert!(!steps.iter().any(|s| s == "Cordon"), "{steps:?}");
    let error = instance(&client).await.status.unwrap().last_error.unwrap();
    assert!(error.contains("not supported"), "{error}");
    assert_eq!(agent.calls(), ["configure"]);
}

#[tokio::test]
async fn operator_timeout_mid_operation_makes_the_proxy_stand_down() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Draining", NEW).await;
    let agent = FakeAgent::start("written", NEW);
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    assert_eq!(p.tick().await.unwrap(), proxy::lifecycle::Step::Cordon);
    assert_eq!(
        node(&client, NODE).await.spec.unwrap().unschedulable,
        Some(true)
    );
    // The operator gives up on the node.
    let api = Api::<operator::crd::OsInstance>::default_namespaced(client.clone());
    let pp = kube::api::PatchParams::default();
    api.patch_status(
        NODE,
        &pp,
        &kube::api::Patch::Merge(
            serde_json::json!({"status": {"phase": "Failed", "lastError": "timed out"}}),
        ),
    )
    .await
    .unwrap();
    api.patch(
        NODE,
        &pp,
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"nodestatus": "idle"}})),
    )
    .await
    .unwrap();
    assert_eq!(p.tick().await.unwrap(), proxy::lifecycle::Step::Uncordon);
    assert_ne!(
        node(&client, NODE).await.spec.unwrap().unschedulable,
        Some(true)
    );
    assert_eq!(p.tick().await.unwrap(), proxy::lifecycle::Step::Idle);
    assert!(agent.calls().is_empty());
    assert_eq!(
        instance(&client)
            .await
            .status
            .unwrap()
            .last_error
            .as_deref(),
        Some("timed out"),
        "the operator's verdict stands"
    );
}

/// `spec.abort` withdraws an operation the proxy has not taken up (phase `Assigned`). A proxy
/// that read it Assigned just before the withdrawal acts on what it read: its first write (the
/// claim) carries the resourceVersion it read, is refused, and nothing is asked of the agent.
#[tokio::test]
async fn an_operation_withdrawn_after_the_proxy_read_it_is_not_taken_up() {
    use operator::crd::NodePhase;
    use proxy::lifecycle::Step;
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Assigned", NEW).await;
    let agent = FakeAgent::start("empty", "");
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    let seen = p.observe().await.unwrap().expect("an observation");
    assert_eq!(seen.status.phase, Some(NodePhase::Assigned));

    // The operator withdraws it, as its abort does: the spec, then the status.
    let api = Api::<operator::crd::OsInstance>::default_namespaced(client.clone());
    let pp = kube::api::PatchParams::default();
    let idle = serde_json::json!({"spec": {"nodestatus": "idle"}});
    api.patch(NODE, &pp, &kube::api::Patch::Merge(idle))
        .await
        .unwrap();
    let withdrawn = serde_json::json!({"status": {"phase": "Idle", "step": "withdrawn"}});
    api.patch_status(NODE, &pp, &kube::api::Patch::Merge(withdrawn))
        .await
        .unwrap();

    let step = p.act(&seen).await.unwrap();
    assert!(
        matches!(
            step,
            Step::Enter {
                phase: NodePhase::Preparing,
                ..
            }
        ),
        "{step:?}"
    );
    let osi = instance(&client).await;
    assert_eq!(phase(&osi).as_deref(), Some("Idle"), "{:?}", osi.status);
    assert_eq!(osi.spec.nodestatus, NodeStatus::Idle);
    assert_eq!(p.tick().await.unwrap(), Step::Idle);
    assert!(agent.calls().is_empty(), "{:?}", agent.calls());

    // An operation assigned again and not changed since is taken up from the same kind of
    // observation.
    start_operation_again(&client).await;
    let seen = p.observe().await.unwrap().expect("an observation");
    p.act(&seen).await.unwrap();
    assert_eq!(
        phase(&instance(&client).await).as_deref(),
        Some("Preparing")
    );
}

async fn start_operation_again(client: &kube::Client) {
    let api = Api::<operator::crd::OsInstance>::default_namespaced(client.clone());
    let pp = kube::api::PatchParams::default();
    let status = serde_json::json!({"status": {"phase": "Assigned", "step": null}});
    api.patch_status(NODE, &pp, &kube::api::Patch::Merge(status))
        .await
        .unwrap();
    let spec = serde_json::json!({"spec": {"nodestatus": "upgrade"}});
    api.patch(NODE, &pp, &kube::api::Patch::Merge(spec))
        .await
        .unwrap();
}

/// The admin moves the OS to v3 while this node's upgrade to v2 is still before its
/// download: the proxy stops the operation (the OS's image is v3's now, and writing it as
/// "v2" would mislabel the slot) without asking the agent for anything.
#[tokio::test]
async fn an_upgrade_superseded_by_a_new_target_stops_before_writing_anything() {
    let Rig {
        server: _server,
        client,
        agent,
        proxy: p,
    } = upgrade_rig("empty", "").await;
    assert!(matches!(
        p.tick().await.unwrap(),
        proxy::lifecycle::Step::Enter { .. }
    ));
    assert_eq!(
        phase(&instance(&client).await).as_deref(),
        Some("Preparing")
    );
    let os = serde_json::json!({"spec": {"osversion": "v3",
        "checksum": format!("blake3:{}", "c".repeat(64)),
        "imageurl": "file:///srv/os-v3.img.zst"}});
    Api::<operator::crd::Os>::default_namespaced(client.clone())
        .patch(
            "os",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(os),
        )
        .await
        .unwrap();
    tick_until(&p, &client, 3, phase_is("Failed")).await;
    let status = instance(&client).await.status.unwrap();
    assert_eq!(
        status.last_error.as_deref(),
        Some(
            "the OS now targets v3: the upgrade to v2 stopped before its reboot; the node \
             runs slot A (v1)"
        )
    );
    assert!(agent.calls().is_empty(), "{:?}", agent.calls());
}

#[tokio::test]
async fn a_missing_osinstance_is_created_idle() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let agent = FakeAgent::start("empty", "");
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    p.tick().await.unwrap();
    assert_eq!(instance(&client).await.spec.nodestatus, NodeStatus::Idle);
    assert_eq!(p.tick().await.unwrap(), proxy::lifecycle::Step::Idle);
}

#[tokio::test]
async fn an_idle_proxy_wakes_when_its_osinstance_changes() {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    let agent = FakeAgent::start("written", NEW);
    let p = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    let running = tokio::spawn(async move { p.run().await });
    let api = Api::<operator::crd::OsInstance>::default_namespaced(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while api.get_opt(NODE).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "OSInstance not created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Idle now: without the watch the next look would be 30 s away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    start_operation(&client, "upgrade", "Assigned", NEW).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while phase(&instance(&client).await).as_deref() != Some("Rebooting") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            instance(&client).await.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    assert_eq!(
        agent.calls(),
        ["upgrade"],
        "the verified slot was not written again"
    );
}

use kube::api::Api;

/// The proxy decides from the error's kind, not its text: a retryable one
/// leaves the node preparing and asks again; a refusal or a failure ends the
/// operation with the agent's message.
#[tokio::test]
async fn prepare_errors_are_retried_or_fail_by_their_kind() {
    use wire::rpc::{ErrorKind, Reason};
    for reason in [
        Reason::Busy,
        Reason::Network,
        Reason::ServerError,
        Reason::TrialArmed,
        Reason::BadRequest,
        Reason::DigestMismatch,
        Reason::VerifyFailed,
    ] {
        let Rig {
            server: _server,
            client,
            agent,
            proxy: p,
        } = upgrade_rig("empty", "").await;
        *agent.prepare_error.lock().unwrap() = Some(reason);
        tick_until(&p, &client, 5, phase_is("Preparing")).await;
        for _ in 0..4 {
            p.tick().await.unwrap();
        }
        let asked = agent
            .calls()
            .iter()
            .filter(|c| *c == "prepare_upgrade")
            .count();
        let status = instance(&client).await.status.unwrap();
        match reason.kind() {
            ErrorKind::Retryable => {
                assert_eq!(
                    phase(&instance(&client).await).as_deref(),
                    Some("Preparing"),
                    "{reason}"
                );
                assert!(asked >= 2, "{reason}: asked {asked} times");
                assert_eq!(status.last_error, None, "{reason}");
            }
            ErrorKind::Refused | ErrorKind::Failed => {
                assert_eq!(
                    phase(&instance(&client).await).as_deref(),
                    Some("Failed"),
                    "{reason}"
                );
                assert_eq!(asked, 1, "{reason}: a refusal or failure is not retried");
                let err = status.last_error.unwrap_or_default();
                assert!(
                    err.contains(&format!("scripted {reason}")),
                    "{reason}: {err}"
                );
            }
        }
    }
}
