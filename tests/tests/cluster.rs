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
use kube::api::{Api, Patch, PatchParams};
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
