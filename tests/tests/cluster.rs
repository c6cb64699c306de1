//! Issue 7 acceptance: the cluster simulation. The fake API server, the real os-operator, and
//! per node the real os-proxy and os-agent on file-backed slots; a node reboots when its agent
//! asks to, into the slot GRUB's model picks (see `e2e::cluster`). Bundles are real os-image
//! bundles served over HTTP on loopback.

use std::sync::OnceLock;
use std::time::Duration;

use e2e::cluster::{mutations, Binaries, SimCluster, SimNode};
use e2e::demo::{build_bundle, Bundle};
use e2e::http::FileServer;
use e2e::registry::{Auth, Registry, RegistryOptions};
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::audit::{events, max_unavailable, starts};
use operator::crd::OsInstance;
use operator::crd::{NodePhase, RolloutState};
use serde_json::json;

struct Fixture {
    v1: Bundle,
    v2: Bundle,
    dir: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = e2e::fixture_dir().join("cluster");
        let out = dir.join("bundles");
        let _ = std::fs::remove_dir_all(&out);
        let v1 = build_bundle(&dir, &out, "1", false);
        let v2 = build_bundle(&dir, &out, "2", false);
        Fixture { v1, v2, dir: out }
    })
}

fn binaries() -> Binaries {
    Binaries {
        agent: e2e::musl_binary("agent", "os-agent"),
        operator: env!("CARGO_BIN_EXE_sim-os-operator").into(),
        proxy: env!("CARGO_BIN_EXE_sim-os-proxy").into(),
    }
}

/// An upgrade to v2, served by `server` (each test has its own, to count its downloads).
fn upgrade_spec(server: &FileServer, max: i64, budget: u32) -> serde_json::Value {
    let f = fixture();
    let url = format!(
        "http://127.0.0.1:{}/{}",
        server.port,
        f.v2.image.file_name().unwrap().to_str().unwrap()
    );
    json!({
        "osversion": f.v2.version, "opstype": "upgrade", "imagetype": "disk",
        "imageurl": url, "flagSafe": true, "checksum": f.v2.digest,
        "maxunavailable": max, "nodeselector": "all-label", "timeinterval": 0,
        "failureBudget": budget, "nodeTimeoutSeconds": 600,
    })
}

async fn cluster(test: &str, nodes: usize, setup: impl Fn(&SimNode)) -> (SimCluster, FileServer) {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let bins = tokio::task::spawn_blocking(binaries).await.unwrap();
    let slot_size = f.v1.size.max(f.v2.size);
    let mut c = SimCluster::start(test, bins).await;
    c.add_nodes(nodes, &f.v1, slot_size, setup).await;
    (c, FileServer::start(&f.dir).unwrap())
}

fn state(os: &operator::crd::Os) -> Option<RolloutState> {
    os.status.as_ref().and_then(|s| s.state)
}

async fn cordoned(c: &SimCluster, node: &str) -> bool {
    let n = c.node_object(node).await;
    n.spec.and_then(|s| s.unschedulable).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_nodes_reach_the_new_version_two_at_a_time() {
    let (mut c, files) = cluster("cluster_six_nodes", 6, |_| {}).await;
    // An admin cordoned node-5 before the rollout: it is upgraded and stays cordoned.
    c.cordon("node-5").await;
    c.create_os(upgrade_spec(&files, 2, 1)).await;
    c.start_operator();
    let os = c
        .wait_os(Duration::from_secs(300), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    assert_eq!(os.status.unwrap().updated, 6);
    let v2 = &fixture().v2.version;
    for node in &c.nodes {
        assert_eq!(
            &node.running_version(),
            v2,
            "{} runs the old version",
            node.name
        );
        let osi = c.instance(&node.name).await;
        let status = osi.status.unwrap();
        assert_eq!(status.phase, Some(NodePhase::Succeeded), "{}", node.name);
        assert_eq!(status.current_version.as_ref(), Some(v2));
        let want_cordoned = node.name == "node-5";
        assert_eq!(
            cordoned(&c, &node.name).await,
            want_cordoned,
            "{}",
            node.name
        );
    }
    let log = c.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 2, "{max} nodes unavailable at log entry {seq}");
    assert_eq!(starts(mutations(&log)).len(), 6, "each node started once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_image_falls_back_reports_the_version_and_halts_the_rollout() {
    // node-0's new slot fails its health gate: the agent ends the trial, GRUB boots slot A.
    let (mut c, files) = cluster("cluster_bad_image", 4, |n| {
        if n.name == "node-0" {
            n.add_check("app", "echo 'demo service does not answer' >&2; exit 1");
        }
    })
    .await;
    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();
    c.wait_os(Duration::from_secs(240), "Halted", |os| {
        state(os) == Some(RolloutState::Halted)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let bad = c.node("node-0");
    assert_eq!(
        bad.running_version(),
        fixture().v1.version,
        "node-0 runs the old slot"
    );
    assert_eq!(bad.booted(), bootctl::Slot::A);
    let status = c.instance("node-0").await.status.unwrap();
    assert_eq!(status.phase, Some(NodePhase::Failed));
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains(&fixture().v2.version),
        "the failed version is named: {error}"
    );
    assert!(
        !cordoned(&c, "node-0").await,
        "the failed node is uncordoned"
    );
    let log = c.log();
    let started = starts(mutations(&log));
    assert_eq!(
        started.len(),
        1,
        "nothing starts after the halt: {started:?}"
    );
    for other in &c.nodes[1..] {
        assert_eq!(other.boots(), 0, "{} was rebooted", other.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdb_that_never_allows_eviction_times_out_the_drain_without_a_reboot() {
    let (mut c, files) = cluster("cluster_pdb", 2, |_| {}).await;
    c.add_pod("node-0", "db-0", "db").await;
    c.add_blocking_pdb("db").await;
    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();
    c.wait_os(Duration::from_secs(180), "Halted", |os| {
        state(os) == Some(RolloutState::Halted)
    })
    .await;

    let node = c.node("node-0");
    assert_eq!(node.boots(), 0, "the node was rebooted");
    assert_eq!(node.running_version(), fixture().v1.version);
    assert!(
        !cordoned(&c, "node-0").await,
        "the proxy uncordons after a failed drain"
    );
    let status = c.instance("node-0").await.status.unwrap();
    assert_eq!(status.phase, Some(NodePhase::Failed));
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("db-0"), "the blocking pod is named: {error}");
    let log = c.log();
    let named = events(mutations(&log))
        .into_iter()
        .any(|e| e.note.contains("db-0"));
    assert!(named, "an Event names the blocking pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_proxy_at_every_step_repeats_nothing() {
    // Downloads and health gates take ~2 s each, so every node is seen (and its
    // proxy killed) at least while it prepares and while it confirms, however
    // slow the machine running the test.
    let (mut c, files) = cluster("cluster_proxy_kills", 3, |n| {
        n.add_check("slow", "sleep 2");
    })
    .await;
    let image = std::fs::metadata(&fixture().v2.image).unwrap().len();
    files.set_rate(image / 2);
    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();

    // Kill each node's proxy once in every phase it is seen in, and start it again.
    let mut seen: Vec<(String, NodePhase)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if state(&c.os().await) == Some(RolloutState::Complete) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not complete"
        );
        for node in &c.nodes {
            let Some(osi) = c.try_instance(&node.name).await else {
                continue;
            };
            let phase = osi.status.and_then(|s| s.phase);
            let Some(phase) = phase.filter(|p| p.is_active()) else {
                continue;
            };
            if !seen.contains(&(node.name.clone(), phase)) && node.kill_proxy() {
                seen.push((node.name.clone(), phase));
                tokio::time::sleep(Duration::from_millis(300)).await;
                node.start_proxy();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in &c.nodes {
        for phase in [NodePhase::Preparing, NodePhase::Confirming] {
            assert!(
                seen.contains(&(node.name.clone(), phase)),
                "{}'s proxy was not killed while {phase:?}: {seen:?}",
                node.name
            );
        }
    }
    let (_, bytes) = files.served();
    let manifest = std::fs::metadata(fixture().dir.join("os-2.manifest.json"))
        .unwrap()
        .len();
    assert_eq!(
        bytes,
        3 * (image + manifest),
        "each node downloaded the bundle exactly once"
    );
    for node in &c.nodes {
        assert_eq!(
            node.boots(),
            1,
            "{} rebooted {} times",
            node.name,
            node.boots()
        );
        assert_eq!(node.running_version(), fixture().v2.version);
    }
    let log = c.log();
    assert_eq!(starts(mutations(&log)).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reaches_every_node_and_each_reports_the_applied_version() {
    let (mut c, _files) = cluster("cluster_config", 3, |_| {}).await;
    c.create_os(json!({
        "osversion": fixture().v1.version, "opstype": "config", "imagetype": "",
        "maxunavailable": 3, "nodeselector": "all-label", "timeinterval": 0,
        "sysconfigs": { "version": "c1", "configs": [{
            "model": "kernel.sysctl.persist",
            "contents": [{ "key": "vm.swappiness", "value": 10 }],
        }]},
    }))
    .await;
    c.start_operator();
    c.wait_os(Duration::from_secs(120), "Complete", |os| {
        state(os) == Some(RolloutState::Complete)
    })
    .await;
    for node in &c.nodes {
        let status = c.instance(&node.name).await.status.unwrap();
        let applied = status.sysconfigs.and_then(|s| s.version);
        assert_eq!(applied.as_deref(), Some("c1"), "{}", node.name);
        let conf = std::fs::read_to_string(node.dir.join("root/etc/sysctl.conf")).unwrap();
        assert!(conf.contains("vm.swappiness"), "{}: {conf}", node.name);
        assert!(conf.contains("10"), "{}: {conf}", node.name);
        assert_eq!(node.boots(), 0, "{} was rebooted for a config", node.name);
        assert!(!cordoned(&c, &node.name).await, "{}", node.name);
    }
}

/// A KubeOS manifest with `imagetype: docker`: every node's own os-agent pulls the bundle
/// from the registry (Debian's docker-registry on loopback, v2 pushed by `os-image oci
/// --push`), pinned by the manifest digest in `checksum`; no container runtime anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeos_docker_imagetype_upgrades_every_node_from_a_registry() {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let dir = e2e::fixture_dir().join("cluster-registry");
    let _ = std::fs::remove_dir_all(&dir);
    let registry = Registry::start(
        &dir,
        RegistryOptions {
            tls: false,
            auth: Auth::None,
        },
    );
    let host = registry.host();
    let os_image = e2e::host_binary("image-builder", "os-image");
    let out = e2e::run(
        std::process::Command::new(os_image)
            .arg("oci")
            .arg("--manifest")
            .arg(f.dir.join(format!("os-{}.manifest.json", f.v2.version)))
            .arg("--layout")
            .arg(dir.join("layout"))
            .args([
                "--push",
                &format!("{host}/os:{}", f.v2.version),
                "--plain-http",
            ]),
    );
    let digest = out.lines().last().unwrap().trim().to_owned();
    // Plain HTTP to this registry is a node setting (the CR's flagSafe stays false).
    let plain = format!("registry-plain-http = {host}\n");
    let (mut c, _files) = cluster("cluster_registry", 2, |n| n.add_agent_settings(&plain)).await;
    c.create_os(json!({
        "osversion": f.v2.version, "opstype": "upgrade", "imagetype": "docker",
        "containerimage": format!("{host}/os:{}", f.v2.version), "checksum": digest,
        "flagSafe": false, "imageurl": "",
        "maxunavailable": 2, "nodeselector": "all-label", "timeinterval": 0,
    }))
    .await;
    c.start_operator();
    c.wait_os(Duration::from_secs(240), "Complete", |os| {
        state(os) == Some(RolloutState::Complete)
    })
    .await;
    for node in &c.nodes {
        assert_eq!(node.running_version(), f.v2.version, "{}", node.name);
        assert_eq!(node.boots(), 1, "{}", node.name);
    }
    let layer_gets = registry
        .blob_gets()
        .iter()
        .filter(|g| g.repo == "os" && g.status == 200)
        .count();
    // Each node fetched the config blob and the layer blob.
    assert_eq!(layer_gets, 4, "registry log:\n{}", registry.log());
}

/// Issue 13 point 8: what a node's own credentials can write into its OSInstance (the
/// operator's start, with settings of its choosing) does not reach its agent. The proxy
/// applies the settings of the OS the instance names, and reports that OS's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_written_into_an_osinstance_are_not_applied() {
    let (c, _files) = cluster("cluster_hostile_osinstance", 1, |_| {}).await;
    c.create_os(json!({
        "osversion": fixture().v1.version, "opstype": "config", "imagetype": "",
        "maxunavailable": 1, "nodeselector": "all-label", "timeinterval": 0,
        "sysconfigs": { "version": "c1", "configs": [{
            "model": "kernel.sysctl.persist",
            "contents": [{ "key": "vm.swappiness", "value": 10 }],
        }]},
    }))
    .await;
    let name = c.nodes[0].name.clone();
    let start = std::time::Instant::now();
    while c.try_instance(&name).await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no OSInstance");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No operator runs: this is the token's own start, with its own settings.
    let api = Api::<OsInstance>::namespaced(c.client.clone(), e2e::cluster::NS);
    let status = json!({ "status": {
        "phase": "Assigned", "operation": "config", "targetVersion": "c1", "progress": 0,
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let spec = json!({ "spec": {
        "nodestatus": "config",
        "namespacedname": { "name": "os", "namespace": e2e::cluster::NS },
        "sysconfigs": { "version": "c1", "configs": [{
            "model": "kernel.sysctl.persist",
            "contents": [{ "key": "kernel.core_pattern", "value": "|/tmp/x" }],
        }]},
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(spec))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        let s = c.instance(&name).await.status.unwrap_or_default();
        if s.phase == Some(NodePhase::Succeeded) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        status.sysconfigs.and_then(|s| s.version).as_deref(),
        Some("c1")
    );
    let conf = std::fs::read_to_string(c.nodes[0].dir.join("root/etc/sysctl.conf")).unwrap();
    assert!(conf.contains("vm.swappiness"), "the OS's setting: {conf}");
    assert!(
        !conf.contains("core_pattern"),
        "the OSInstance's setting: {conf}"
    );
}

/// Pods labelled `app: APP` Ready and not terminating after each entry of the server's log.
fn ready_pods_over_time(log: &[fakekube::LogEntry], app: &str) -> Vec<(u64, usize)> {
    let mut pods = std::collections::BTreeMap::new();
    let mut counts = Vec::new();
    for e in log.iter().filter(|e| e.resource == "pods") {
        match e.verb {
            "delete" => {
                pods.remove(&e.name);
            }
            "evict" => {}
            _ => {
                pods.insert(e.name.clone(), e.object.clone());
            }
        }
        let ready = pods
            .values()
            .filter(|p| p["metadata"]["labels"]["app"] == app)
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        counts.push((e.seq, ready));
    }
    counts
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 17: a proxy killed while its drain waits for an evicted pod's grace period comes back
/// to find the pod terminating; it waits for the pod to be gone before the node reboots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_terminating_across_a_proxy_restart_is_gone_before_the_reboot() {
    let (mut c, files) = cluster("cluster_terminating_pod", 1, |_| {}).await;
    c.add_pod("node-0", "web-0", "web").await;
    // Its containers ignore SIGTERM: it stays for its 30 s grace period unless let go.
    c.server.hold_termination(e2e::cluster::NS, "web-0");
    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(c.client.clone(), e2e::cluster::NS);
    wait_until("web-0 evicted", Duration::from_secs(120), async || {
        pods.get("web-0")
            .await
            .is_ok_and(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    let node = c.node("node-0");
    assert!(node.kill_proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.start_proxy();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.boots(), 0, "rebooted while web-0 was terminating");
    assert!(
        !node.wants_reboot(),
        "the agent was asked to reboot while web-0 was terminating"
    );
    c.server.release_termination(e2e::cluster::NS, "web-0");
    c.wait_os(Duration::from_secs(120), "Complete", |os| {
        state(os) == Some(RolloutState::Complete)
    })
    .await;
    assert_eq!(node.boots(), 1);
    let log = c.log();
    let gone = log
        .iter()
        .find(|e| e.verb == "delete" && e.name == "web-0")
        .unwrap()
        .seq;
    let rebooting = log
        .iter()
        .find(|e| e.resource == "osinstances" && e.object["status"]["phase"] == "Rebooting")
        .unwrap()
        .seq;
    assert!(
        gone < rebooting,
        "Rebooting (log {rebooting}) before web-0 was gone (log {gone})"
    );
}

/// Issue 17: three replicas behind `minAvailable: 2` on two nodes that drain at once. The
/// budget allows one eviction until a replacement (on the third node) is Ready; both drains
/// retry and finish, and two replicas are Ready throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_over_replicas_on_two_nodes_draining_at_once_keeps_two_ready() {
    let (mut c, files) = cluster("cluster_pdb_two_nodes", 3, |_| {}).await;
    c.server.set_pod_startup(Duration::from_millis(300));
    c.server.set_pod_shutdown(Duration::from_millis(300));
    // The replicas land on node-0 and node-1 (node-2 is cordoned meanwhile), and only those
    // two are upgraded, both at once.
    c.cordon("node-2").await;
    c.add_replica_set("db", 3).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(c.client.clone(), e2e::cluster::NS);
    wait_until(
        "three replicas Ready",
        Duration::from_secs(30),
        async || {
            let listed = pods.list(&Default::default()).await.unwrap().items;
            listed
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
                == 3
        },
    )
    .await;
    c.uncordon("node-2").await;
    c.add_min_available_pdb("db", 2).await;
    for n in ["node-0", "node-1"] {
        c.label_node(n, "pool").await;
    }
    let mut spec = upgrade_spec(&files, 2, 1);
    spec["nodeselector"] = "pool".into();
    c.create_os(spec).await;
    c.start_operator();
    c.wait_os(Duration::from_secs(240), "Complete", |os| {
        state(os) == Some(RolloutState::Complete)
    })
    .await;
    let log = c.log();
    let (max, _) = max_unavailable(mutations(&log));
    assert_eq!(max, 2, "the two nodes drained at once");
    let counts = ready_pods_over_time(&log, "db");
    let from = counts.iter().position(|(_, n)| *n == 3).unwrap();
    let low = counts[from..].iter().find(|(_, n)| *n < 2);
    assert!(
        low.is_none(),
        "fewer than two replicas Ready at log entry {low:?}"
    );
    assert_eq!(log.iter().filter(|e| e.verb == "evict").count(), 3);
    for n in ["node-0", "node-1"] {
        assert_eq!(c.node(n).running_version(), fixture().v2.version, "{n}");
    }
}

/// Issue 17: a Node deleted from the cluster takes its OSInstance with it, and the machine
/// joining again under the same name (a new Node uid) starts fresh and is upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_loses_its_osinstance_and_starts_fresh_when_it_returns() {
    let (mut c, files) = cluster("cluster_deleted_node", 2, |_| {}).await;
    let instances: Api<OsInstance> = Api::namespaced(c.client.clone(), e2e::cluster::NS);
    wait_until("node-1's OSInstance", Duration::from_secs(60), async || {
        instances.get_opt("node-1").await.unwrap().is_some()
    })
    .await;
    // Its last operation failed: a fresh Node must not inherit that.
    let failed = json!({ "status": { "phase": "Failed", "operation": "upgrade",
        "targetVersion": fixture().v2.version, "lastError": "an old failure" } });
    instances
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(failed))
        .await
        .unwrap();
    c.delete_node("node-1").await;
    wait_until(
        "node-1's OSInstance to go",
        Duration::from_secs(30),
        async || instances.get_opt("node-1").await.unwrap().is_none(),
    )
    .await;
    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();
    let os = c
        .wait_os(Duration::from_secs(180), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    assert_eq!(
        os.status.unwrap().target,
        1,
        "the deleted node is not part of it"
    );

    c.register_node_again("node-1").await;
    c.wait_os(Duration::from_secs(180), "Complete with node-1", |os| {
        state(os) == Some(RolloutState::Complete)
            && os.status.as_ref().is_some_and(|s| s.updated == 2)
    })
    .await;
    assert_eq!(c.node("node-1").running_version(), fixture().v2.version);
    let status = c.instance("node-1").await.status.unwrap();
    assert_eq!(status.phase, Some(NodePhase::Succeeded));
    assert_eq!(status.last_error, None, "inherited the old node's failure");
}

/// Issue 17: a node relabelled out of the rollout mid-operation keeps counting against
/// `maxunavailable` until it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deselected_mid_flight_still_holds_its_slot_until_it_finishes() {
    let (mut c, files) = cluster("cluster_deselected", 2, |n| {
        n.add_check("slow", "sleep 2");
    })
    .await;
    for n in ["node-0", "node-1"] {
        c.label_node(n, "pool").await;
    }
    let mut spec = upgrade_spec(&files, 1, 1);
    spec["nodeselector"] = "pool".into();
    c.create_os(spec).await;
    c.start_operator();
    wait_until("node-0 in flight", Duration::from_secs(60), async || {
        c.try_instance("node-0")
            .await
            .and_then(|o| o.status)
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_active() && p != NodePhase::Assigned)
    })
    .await;
    c.label_node("node-0", "elsewhere").await;
    let os = c
        .wait_os(Duration::from_secs(180), "Complete", |os| {
            state(os) == Some(RolloutState::Complete)
        })
        .await;
    assert_eq!(os.status.unwrap().target, 1);
    let log = c.log();
    let (max, seq) = max_unavailable(mutations(&log));
    assert!(max <= 1, "{max} nodes unavailable at log entry {seq}");
    for node in &c.nodes {
        assert_eq!(
            node.running_version(),
            fixture().v2.version,
            "{}",
            node.name
        );
    }
}

/// Waits for the OS at generation `generation` to be Complete with every one of `nodes`
/// updated.
async fn wait_complete(c: &SimCluster, generation: i64, nodes: u32, what: &str) {
    c.wait_os(Duration::from_secs(240), what, |os| {
        let s = os.status.as_ref();
        s.and_then(|s| s.observed_generation) == Some(generation)
            && state(os) == Some(RolloutState::Complete)
            && s.is_some_and(|s| s.updated == nodes)
    })
    .await;
}

async fn change_os(c: &SimCluster, spec: serde_json::Value) -> i64 {
    let api: Api<operator::crd::Os> = Api::namespaced(c.client.clone(), e2e::cluster::NS);
    let os = api
        .patch(
            "os",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    os.metadata.generation.unwrap()
}

/// Issue 17: deploy/'s RBAC is what os-operator and os-proxy need, and no more. Both run as
/// their service accounts (each proxy's token bound to its node), authorized by the Roles and
/// ClusterRoles of deploy/operator.yaml and deploy/proxy.yaml and judged by the admission
/// policy of deploy/admission.yaml as shipped, through an upgrade with drains (evictions
/// under a budget, events, the leader Lease), a config, a rollback, two failed drains and a
/// deleted node: no request is forbidden, every verb every rule grants was used by a request
/// it allowed, and a proxy's token can neither cordon another node nor restamp its own
/// node's operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_allows_every_request_and_every_grant_is_used() {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let bins = tokio::task::spawn_blocking(binaries).await.unwrap();
    let mut c = SimCluster::start_as_service_accounts("cluster_rbac", bins).await;
    c.add_nodes(3, &f.v1, f.v1.size.max(f.v2.size), |_| {})
        .await;
    let files = FileServer::start(&f.dir).unwrap();
    c.add_replica_set("web", 2).await;
    c.add_min_available_pdb("web", 1).await;

    c.create_os(upgrade_spec(&files, 1, 1)).await;
    c.start_operator();
    wait_complete(&c, 1, 3, "the upgrade").await;
    let generation = change_os(
        &c,
        json!({ "opstype": "config", "imagetype": "", "imageurl": "", "checksum": "",
            "sysconfigs": { "version": "c1", "configs": [{ "model": "kernel.sysctl.persist",
                "contents": [{ "key": "vm.swappiness", "value": 10 }] }] } }),
    )
    .await;
    wait_complete(&c, generation, 3, "the config").await;
    let generation = change_os(
        &c,
        json!({ "opstype": "rollback", "osversion": f.v1.version, "sysconfigs": null }),
    )
    .await;
    wait_complete(&c, generation, 3, "the rollback").await;
    for node in &c.nodes {
        assert_eq!(node.running_version(), f.v1.version, "{}", node.name);
    }
    // A drain that fails twice on node-0 (its pod's budget allows no eviction) under one
    // proxy process, for two targets: a DrainFailed Event, then the same Event again (a
    // patch of its series).
    c.add_pod("node-0", "db-0", "db").await;
    c.add_blocking_pdb("db").await;
    let base = f.dir.parent().unwrap().to_path_buf();
    let (bundles, v3) = (f.dir.clone(), "rbac-3".to_string());
    let v3 = tokio::task::spawn_blocking(move || build_bundle(&base, &bundles, &v3, false))
        .await
        .unwrap();
    let instances: Api<OsInstance> = Api::namespaced(c.client.clone(), e2e::cluster::NS);
    for bundle in [&f.v2, &v3] {
        let url = format!(
            "http://127.0.0.1:{}/{}",
            files.port,
            bundle.image.file_name().unwrap().to_str().unwrap()
        );
        change_os(
            &c,
            json!({ "opstype": "upgrade", "osversion": bundle.version,
            "imagetype": "disk", "imageurl": url, "checksum": bundle.digest }),
        )
        .await;
        wait_until(
            &format!("node-0 to fail {}", bundle.version),
            Duration::from_secs(120),
            async || {
                let status = instances
                    .get("node-0")
                    .await
                    .unwrap()
                    .status
                    .unwrap_or_default();
                status.phase == Some(NodePhase::Failed)
                    && status.target_version.as_ref() == Some(&bundle.version)
            },
        )
        .await;
    }
    // The garbage collector is slow: the operator removes the deleted node's OSInstance.
    c.server.pause(fakekube::Controller::GarbageCollector);
    c.delete_node("node-2").await;
    wait_until(
        "node-2's OSInstance to go",
        Duration::from_secs(30),
        async || instances.get_opt("node-2").await.unwrap().is_none(),
    )
    .await;

    // The admission policy keeps a proxy's token to its own node.
    let token = e2e::cluster::identity::proxy_token(&c.server, "node-1");
    let node_1: Api<k8s_openapi::api::core::v1::Node> =
        Api::all(kube::Client::try_from(c.server.config_with_token(&token)).unwrap());
    let cordon = json!({ "spec": { "unschedulable": true } });
    let err = node_1
        .patch("node-0", &PatchParams::default(), &Patch::Merge(&cordon))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("os-proxy on node node-1 may not write nodes node-0"),
        "{err}"
    );
    assert!(!cordoned(&c, "node-0").await);
    // Nor change the operator's stamp of an operation on its own OSInstance.
    let own: Api<OsInstance> = Api::namespaced(
        kube::Client::try_from(c.server.config_with_token(&token)).unwrap(),
        e2e::cluster::NS,
    );
    let forged = json!({ "status": { "startedAt": "2100-01-01T00:00:00Z" } });
    let err = own
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the operator starts operations"),
        "{err}"
    );

    let decisions = c.server.authorizations();
    let denied: Vec<String> = decisions
        .iter()
        .filter(|d| !d.allowed())
        .map(|d| {
            format!(
                "{} {} {} {:?}/{:?}",
                d.user, d.verb, d.resource, d.namespace, d.name
            )
        })
        .collect();
    assert!(denied.is_empty(), "forbidden: {denied:#?}");
    let unused = unused_grants(&decisions);
    assert!(
        unused.is_empty(),
        "granted in deploy/ but never used: {unused:#?}"
    );

    // The proxy's Events go to `default` (about its Node), and only there may its token
    // write them: not an Event beside the operator's about the OS resource.
    use k8s_openapi::api::events::v1::Event;
    let forged = |namespace: &str| -> Event {
        serde_json::from_value(json!({
            "metadata": { "name": "forged", "namespace": namespace },
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "os-operator", "reportingInstance": "os-operator",
            "action": "Upgrade", "reason": "Succeeded", "type": "Normal",
            "note": "every node upgraded",
            "regarding": { "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS",
                "namespace": namespace, "name": "os" },
        }))
        .unwrap()
    };
    let proxy_client = kube::Client::try_from(c.server.config_with_token(&token)).unwrap();
    for namespace in [e2e::cluster::NS, "kube-system"] {
        let events: Api<Event> = Api::namespaced(proxy_client.clone(), namespace);
        let err = events
            .create(&PostParams::default(), &forged(namespace))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(e) if e.code == 403),
            "the proxy wrote an Event in {namespace}: {err}"
        );
    }
}

/// Every (role, rule, resource, verb) of deploy/operator.yaml and deploy/proxy.yaml that no
/// recorded request was allowed by.
fn unused_grants(decisions: &[fakekube::Authorization]) -> Vec<String> {
    use serde::Deserialize;
    let mut unused = Vec::new();
    for file in ["operator.yaml", "proxy.yaml"] {
        let text = std::fs::read_to_string(e2e::repo_root().join("deploy").join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let role = serde_json::Value::deserialize(doc).unwrap();
            let kind = role["kind"].as_str().unwrap_or_default();
            if kind != "Role" && kind != "ClusterRole" {
                continue;
            }
            let name = role["metadata"]["name"].as_str().unwrap().to_string();
            let namespace = (kind == "Role")
                .then(|| role["metadata"]["namespace"].as_str().unwrap().to_string());
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            for (i, rule) in role["rules"].as_array().unwrap().iter().enumerate() {
                let grant = fakekube::Grant {
                    role_kind: kind.to_string(),
                    role_namespace: namespace.clone(),
                    role: name.clone(),
                    rule: i,
                };
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        let used = decisions.iter().any(|d| {
                            d.verb == verb
                                && d.resource == resource
                                && d.granted_by.contains(&grant)
                        });
                        if !used {
                            unused.push(format!("{kind} {name} rule {i}: {verb} {resource}"));
                        }
                    }
                }
            }
        }
    }
    unused
}
