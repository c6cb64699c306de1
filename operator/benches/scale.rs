//! Scale figures for the operator at 10,000 nodes (`SCALE_NODES` overrides, `SCALE_QUICK=1`
//! runs 500): the pure decision and observation on realistic rollout mixes, then a whole
//! rollout with the real `os-operator` binary against fakekube and a fast node simulator, on
//! Nodes the size of real ones (`fakekube::sample::node`, about 20 KB with images and managed
//! fields). Meanwhile real proxies (the `proxy` library) on nodes the OS does not select sit
//! idle, and their API requests per minute are counted.
//!
//! It prints figures and asserts no timings; the one assertion is the unavailability budget,
//! which is a correctness property.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakekube::{FakeApiServer, LogEntry, RequestCounts};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use operator::crd::{
    NodePhase, NodeStatus as AskedOp, OpsType, Os, OsInstance, OsInstanceSpec, OsInstanceStatus,
    OsSpec, RolloutState,
};
use operator::rollout::{decide, InstanceView, NodeView, Observed};
use serde_json::{json, Value};

const NS: &str = "default";
const OLD: &str = "KubeOS v1";
const NEW: &str = "KubeOS v2";
const MAX_UNAVAILABLE: usize = 500;
const DECIDE_RUNS: usize = 50;
/// Node writes in flight at once during setup and in the simulator.
const CONCURRENCY: usize = 64;
/// The `upgrade.openeuler.org/node-selector` value of the nodes the OS upgrades.
const FLEET: &str = "fleet";
/// Nodes with a real proxy on them that the OS does not select.
const IDLE_PROXIES: usize = 20;

fn main() {
    let nodes = node_count();
    println!("scale bench: {nodes} nodes, maxunavailable {MAX_UNAVAILABLE}");
    decision_figures(nodes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    runtime.block_on(end_to_end(nodes));
}

fn node_count() -> usize {
    if let Some(n) = std::env::var("SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    match std::env::var("SCALE_QUICK").as_deref() {
        Ok("1") => 500,
        _ => 10_000,
    }
}

fn upgrade_spec() -> Value {
    json!({
        "osversion": NEW, "opstype": "upgrade", "imagetype": "disk",
        "imageurl": "http://127.0.0.1:1/update.img", "flagSafe": true,
        "checksum": format!("blake3:{}", "ab".repeat(32)),
        "maxunavailable": MAX_UNAVAILABLE, "nodeselector": FLEET,
        "timeinterval": 0, "failureBudget": 1,
    })
}

// ---------------------------------------------------------------------------------------
// Part 1: the pure core.

/// Where a synthetic node stands in a rollout mix.
#[derive(Clone, Copy)]
enum Stand {
    Pending,
    Updated,
    InProgress,
    /// Pending but NotReady and cordoned by someone else.
    Down,
}

struct Mix {
    name: &'static str,
    updated: usize,
    in_progress: usize,
    down: usize,
}

fn mixes(n: usize) -> [Mix; 3] {
    let busy = MAX_UNAVAILABLE.min(n / 10);
    [
        Mix {
            name: "rollout start (all pending)",
            updated: 0,
            in_progress: 0,
            down: 0,
        },
        Mix {
            name: "mid-rollout (1/3 updated, maxunavailable in progress, 5 down)",
            updated: n / 3,
            in_progress: busy,
            down: 5,
        },
        Mix {
            name: "near the end (10 pending)",
            updated: n - busy - 10,
            in_progress: busy,
            down: 0,
        },
    ]
}

/// The stands of a mix scattered over the node names, as a cache's hash order would.
fn stands(n: usize, mix: &Mix) -> Vec<Stand> {
    let mut out: Vec<Stand> = (0..n)
        .map(|i| match i {
            i if i < mix.updated => Stand::Updated,
            i if i < mix.updated + mix.in_progress => Stand::InProgress,
            i if i < mix.updated + mix.in_progress + mix.down => Stand::Down,
            _ => Stand::Pending,
        })
        .collect();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..out.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    out
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn node_view(i: usize, stand: Stand, started: Timestamp) -> NodeView {
    let name = node_name(i);
    let labels = [("kubernetes.io/hostname".to_string(), name.clone())].into();
    let instance = |phase, current: &str| InstanceView {
        phase: Some(phase),
        operation: Some(OpsType::Upgrade),
        target_version: Some(NEW.into()),
        current_version: Some(current.into()),
        applied_config_version: None,
        started_at: Some(started),
    };
    let (ready, cordoned, os_version, instance) = match stand {
        Stand::Pending => (true, false, OLD, InstanceView::default()),
        Stand::Down => (false, true, OLD, InstanceView::default()),
        Stand::Updated => (true, false, NEW, instance(NodePhase::Succeeded, NEW)),
        Stand::InProgress => (false, true, OLD, instance(NodePhase::Rebooting, OLD)),
    };
    NodeView {
        name,
        labels,
        ready,
        cordoned,
        control_plane: false,
        os_version: os_version.into(),
        skip: false,
        instance: Some(instance),
    }
}

fn observed(stands: &[Stand], started: Timestamp) -> Observed {
    let nodes = stands
        .iter()
        .enumerate()
        .map(|(i, s)| node_view(i, *s, started))
        .collect();
    Observed {
        nodes,
        ..Observed::default()
    }
}

struct Stats {
    min: Duration,
    median: Duration,
    p99: Duration,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:>9.3?}  median {:>9.3?}  p99 {:>9.3?}",
            self.min, self.median, self.p99
        )
    }
}

fn time_runs(runs: usize, mut run: impl FnMut()) -> Stats {
    run();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed()
        })
        .collect();
    times.sort();
    Stats {
        min: times[0],
        median: times[runs / 2],
        p99: times[(runs * 99).div_ceil(100) - 1],
    }
}

fn decision_figures(n: usize) {
    let spec: OsSpec = serde_json::from_value(upgrade_spec()).expect("the bench's OS spec");
    let now = Timestamp::now();
    let started = now - jiff::SignedDuration::from_secs(60);
    println!("\n== pure decision, {n} nodes, {DECIDE_RUNS} runs each ==");
    for mix in mixes(n) {
        let observed = observed(&stands(n, &mix), started);
        let decision = decide(&spec, &observed, now);
        let stats = time_runs(DECIDE_RUNS, || {
            std::hint::black_box(decide(&spec, std::hint::black_box(&observed), now));
        });
        println!(
            "decide  {:<62} {stats}  (starts {}, unavailable {})",
            mix.name,
            decision.start.len(),
            decision.counts.unavailable
        );
    }
    let mid = &mixes(n)[1];
    let views = observed(&stands(n, mid), started).nodes;
    let nodes: Vec<Node> = views.iter().map(to_node).collect();
    let instances: Vec<OsInstance> = views.iter().map(to_instance).collect();
    let stats = time_runs(DECIDE_RUNS, || {
        std::hint::black_box(Observed::from_cluster(&nodes, &instances));
    });
    println!("Observed::from_cluster {n} Nodes + {n} OSInstances (mid-rollout) {stats}");
}

fn to_node(view: &NodeView) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(view.name.clone()),
            labels: Some(view.labels.clone()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: Some(view.cordoned),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if view.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            node_info: Some(NodeSystemInfo {
                os_image: view.os_version.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn to_instance(view: &NodeView) -> OsInstance {
    let iv = view.instance.clone().unwrap_or_default();
    let mut osi = OsInstance::new(&view.name, OsInstanceSpec::default());
    osi.metadata.namespace = Some(NS.into());
    if iv.is_active() {
        osi.spec.nodestatus = AskedOp::Upgrade;
    }
    osi.status = Some(OsInstanceStatus {
        phase: iv.phase,
        operation: iv.operation,
        target_version: iv.target_version,
        current_version: iv.current_version,
        started_at: iv.started_at.map(Time),
        ..Default::default()
    });
    osi
}

// ---------------------------------------------------------------------------------------
// Part 2: a whole rollout with the real binary.

/// Requests a bench-side client made, by the verbs fakekube counts.
#[derive(Default)]
struct ClientCounts {
    get: AtomicU64,
    list: AtomicU64,
    watch: AtomicU64,
    create: AtomicU64,
    patch: AtomicU64,
    other: AtomicU64,
}

impl ClientCounts {
    fn record(&self, method: &http::Method, uri: &http::Uri) {
        let query = uri.query().unwrap_or("");
        let counter = match *method {
            http::Method::GET if query.contains("watch=true") || query.contains("watch=1") => {
                &self.watch
            }
            http::Method::GET if is_collection(uri.path()) => &self.list,
            http::Method::GET => &self.get,
            http::Method::POST => &self.create,
            http::Method::PATCH => &self.patch,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestCounts {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts {
            get: n(&self.get),
            list: n(&self.list),
            watch: n(&self.watch),
            create: n(&self.create),
            patch: n(&self.patch),
            other: n(&self.other),
            ..RequestCounts::default()
        }
    }
}

fn counting_client(server: &FakeApiServer, counts: Arc<ClientCounts>) -> Client {
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counts.record(req.method(), req.uri());
        req
    });
    kube::client::ClientBuilder::try_from(server.config())
        .expect("building a kube client for the fake server")
        .with_layer(&layer)
        .build()
}

/// Whether an API path names a collection (`/api/v1/nodes`,
/// `/apis/G/V/namespaces/NS/osinstances`) rather than one object or its subresource.
fn is_collection(path: &str) -> bool {
    let rest = match path.strip_prefix("/api/v1/") {
        Some(rest) => rest,
        None => path
            .strip_prefix("/apis/")
            .and_then(|r| r.splitn(3, '/').nth(2))
            .unwrap_or(""),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["namespaces", _, resource] => !resource.is_empty(),
        [resource] => !resource.is_empty(),
        _ => false,
    }
}

fn sum(a: RequestCounts, b: RequestCounts) -> RequestCounts {
    RequestCounts {
        get: a.get + b.get,
        list: a.list + b.list,
        watch: a.watch + b.watch,
        create: a.create + b.create,
        update: a.update + b.update,
        patch: a.patch + b.patch,
        delete: a.delete + b.delete,
        evict: a.evict + b.evict,
        other: a.other + b.other,
    }
}

fn minus(a: RequestCounts, b: RequestCounts) -> RequestCounts {
    RequestCounts {
        get: a.get - b.get,
        list: a.list - b.list,
        watch: a.watch - b.watch,
        create: a.create - b.create,
        update: a.update - b.update,
        patch: a.patch - b.patch,
        delete: a.delete - b.delete,
        evict: a.evict - b.evict,
        other: a.other - b.other,
    }
}

/// How long the idle proxies are counted: long enough in a full run to include an idle
/// proxy's resync (`proxy::run::IDLE_RESYNC`) and the renewal of its watches (290 s).
fn idle_window() -> Duration {
    if let Some(s) = std::env::var("SCALE_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_secs(s);
    }
    match std::env::var("SCALE_QUICK").as_deref() {
        Ok("1") => Duration::from_secs(30),
        _ => proxy::run::IDLE_RESYNC + Duration::from_secs(30),
    }
}

/// Real proxies on `IDLE_PROXIES` nodes the OS does not select, each with its own client
/// counting into `counts`. They find no agent (nothing to do needs one).
async fn start_idle_proxies(
    server: &FakeApiServer,
    counts: &Arc<ClientCounts>,
    sockets: &Path,
) -> Vec<tokio::task::JoinHandle<()>> {
    let nodes: Api<Node> = Api::all(server.client());
    let mut tasks = vec![];
    for i in 0..IDLE_PROXIES {
        let name = format!("idle-{i:03}");
        let node: Node = serde_json::from_value(fakekube::sample::node(&name, OLD, true))
            .expect("a Node manifest");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("creating an idle Node");
        let mut config = server.config();
        // As os-proxy's main configures its client.
        config.default_retry = false;
        let counts = Arc::clone(counts);
        let layer =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                counts.record(req.method(), req.uri());
                req
            });
        let client = kube::client::ClientBuilder::try_from(config)
            .expect("building a kube client for the fake server")
            .with_layer(&layer)
            .build();
        let cfg = proxy::Config {
            node_name: name.clone(),
            namespace: NS.into(),
            agent_socket: sockets.join(format!("{name}.sock")),
            drain_timeout: Duration::from_secs(600),
            pod_grace_seconds: None,
            poll_interval: Duration::from_secs(1),
        };
        tasks.push(tokio::spawn(proxy::run(client, cfg)));
    }
    tasks
}

fn print_idle(counts: RequestCounts, window: Duration) {
    let minutes = window.as_secs_f64() / 60.0;
    let per = |v: u64| v as f64 / IDLE_PROXIES as f64 / minutes;
    println!(
        "idle proxy API requests: {:.2} per proxy per minute ({IDLE_PROXIES} real proxies on \
         nodes the OS does not select, counted over {:.0} s after a 5 s start-up): \
         get {:.2}, list {:.2}, watch {:.2}, other verbs {:.2}",
        per(counts.total()),
        window.as_secs_f64(),
        per(counts.get),
        per(counts.list),
        per(counts.watch),
        per(counts.total() - counts.get - counts.list - counts.watch),
    );
}

async fn end_to_end(n: usize) {
    println!("\n== end to end, {n} nodes, real os-operator against fakekube ==");
    let server = FakeApiServer::start().await;
    // The log keeps what the unavailability replay reads; 10,000 real Nodes times every
    // version of each would be gigabytes (a 20 KB Node is about 110 KB as a JSON value).
    server.project_log(replayed_fields);
    let setup = Instant::now();
    populate(&server.client(), n).await;
    create_os(&server.client()).await;
    let setup_counts = server.request_counts();
    let setup_rv = server.resource_version();
    println!(
        "setup: {n} Nodes + {n} OSInstances + OS in {:.1?} ({} requests)",
        setup.elapsed(),
        setup_counts.total()
    );
    let served = Api::<Node>::all(server.client())
        .get(&node_name(0))
        .await
        .expect("reading a Node back");
    let node_bytes = serde_json::to_vec(&served).map_or(0, |b| b.len());
    println!(
        "node object: {node_bytes} bytes of JSON ({} images, {} managedFields entries)",
        served
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .map_or(0, Vec::len),
        served.metadata.managed_fields.as_ref().map_or(0, Vec::len),
    );
    let idle_counts = Arc::new(ClientCounts::default());
    let sockets = tempfile::tempdir().expect("a directory for the idle proxies' sockets");
    let idle = start_idle_proxies(&server, &idle_counts, sockets.path()).await;
    let bench_counts = Arc::new(ClientCounts::default());
    let client = counting_client(&server, Arc::clone(&bench_counts));
    let simulator = tokio::spawn(simulate(client.clone()));
    let kubeconfig = kubeconfig(&server);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_from = (Instant::now(), idle_counts.snapshot());
    let run = Instant::now();
    let mut op = spawn_operator(kubeconfig.path());
    let rss = spawn_rss_sampler(op.child.id());
    let done = wait_complete(&client, n, Duration::from_secs(20 * 60)).await;
    let wall = run.elapsed();
    let metrics = http_get(op.port, "/metrics").unwrap_or_default();
    let hwm = proc_status_kb(op.child.id(), "VmHWM:");
    let rollout = Rollout {
        n,
        done,
        wall,
        hwm_kb: hwm,
        rss_peak_kb: RSS_PEAK_KB.load(Ordering::Relaxed),
        setup: setup_counts,
        server: server.request_counts(),
        bench: sum(bench_counts.snapshot(), idle_counts.snapshot()),
        mutations: server.resource_version() - setup_rv,
    };
    op.kill();
    simulator.abort();
    rss.abort();
    rollout.print(&metrics);
    report_budget(&server.log());
    println!(
        "bench process (fakekube and the simulator) peak memory: VmHWM {:.0} MiB",
        proc_status_kb(std::process::id(), "VmHWM:") as f64 / 1024.0
    );
    let window = idle_window();
    tokio::time::sleep(window.saturating_sub(idle_from.0.elapsed())).await;
    let idle_counts = minus(idle_counts.snapshot(), idle_from.1);
    print_idle(idle_counts, idle_from.0.elapsed());
    idle.iter().for_each(|t| t.abort());
}

async fn populate(client: &Client, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| add_node(client.clone(), node_name(i)))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

async fn add_node(client: Client, name: String) {
    let nodes: Api<Node> = Api::all(client.clone());
    let instances: Api<OsInstance> = Api::namespaced(client, NS);
    let mut body = fakekube::sample::node(&name, OLD, true);
    body["metadata"]["labels"][operator::rollout::NODE_SELECTOR_LABEL] = json!(FLEET);
    let node: Node = serde_json::from_value(body).expect("a Node manifest");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("creating a Node");
    let osi = OsInstance::new(&name, OsInstanceSpec::default());
    instances
        .create(&PostParams::default(), &osi)
        .await
        .expect("creating an OSInstance");
}

async fn create_os(client: &Client) {
    let os: Os = serde_json::from_value(json!({
        "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS",
        "metadata": { "name": "os", "namespace": NS },
        "spec": upgrade_spec(),
    }))
    .expect("an OS manifest");
    let api: Api<Os> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &os)
        .await
        .expect("creating the OS");
}

async fn set_node(nodes: &Api<Node>, name: &str, ready: bool, os_image: &str) {
    // As a kubelet reports it: every condition again, the new image in nodeInfo.
    let status = json!({ "status": {
        "conditions": fakekube::sample::conditions(ready),
        "nodeInfo": { "osImage": os_image },
    }});
    patch(nodes, name, status, true).await;
}

async fn patch<K>(api: &Api<K>, name: &str, body: Value, status: bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::default();
    let result = if status {
        api.patch_status(name, &params, &Patch::Merge(&body)).await
    } else {
        api.patch(name, &params, &Patch::Merge(&body)).await
    };
    if let Err(e) = result {
        panic!("patching {name} with {body}: {e}");
    }
}

/// Plays the proxy on every node: watches the OSInstances and upgrades each node the operator
/// assigns, `CONCURRENCY` at a time.
async fn simulate(client: Client) {
    let instances: Api<OsInstance> = Api::namespaced(client.clone(), NS);
    let assigned = watcher(instances, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .try_filter_map(|osi| async move {
            Ok(is_assigned(&osi).then(|| kube::ResourceExt::name_any(&osi)))
        });
    let mut seen = std::collections::HashSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut assigned = std::pin::pin!(assigned);
    while let Some(item) = assigned.next().await {
        let Ok(name) = item else { continue };
        if !seen.insert(name.clone()) {
            continue;
        }
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .expect("the gate stays open");
        let client = client.clone();
        tokio::spawn(async move {
            upgrade_node(client, &name).await;
            drop(permit);
        });
    }
}

fn is_assigned(osi: &OsInstance) -> bool {
    let phase = osi.status.as_ref().and_then(|s| s.phase);
    osi.spec.nodestatus == AskedOp::Upgrade && phase == Some(NodePhase::Assigned)
}

/// The proxy's minimal writes, in the order that keeps the node unavailable throughout.
async fn upgrade_node(client: Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let instances: Api<OsInstance> = Api::namespaced(client, NS);
    let cordon = |on: bool| json!({ "spec": { "unschedulable": on } });
    patch(&nodes, name, cordon(true), false).await;
    patch(
        &instances,
        name,
        json!({ "status": { "phase": "Rebooting" } }),
        true,
    )
    .await;
    set_node(&nodes, name, false, OLD).await;
    set_node(&nodes, name, true, NEW).await;
    patch(&nodes, name, cordon(false), false).await;
    let done = json!({ "status": {
        "phase": "Succeeded", "currentVersion": NEW, "progress": 100,
        "finishedAt": Timestamp::now().to_string(),
    }});
    patch(&instances, name, done, true).await;
    patch(
        &instances,
        name,
        json!({ "spec": { "nodestatus": "idle" } }),
        false,
    )
    .await;
}

struct Operator {
    child: Child,
    port: u16,
}

impl Operator {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn logs_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale");
    std::fs::create_dir_all(&dir).expect("creating the bench's log directory");
    dir
}

fn kubeconfig(server: &FakeApiServer) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("creating a kubeconfig file");
    std::io::Write::write_all(&mut file, server.kubeconfig(NS).as_bytes())
        .expect("writing the kubeconfig");
    file
}

fn spawn_operator(kubeconfig: &Path) -> Operator {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free loopback port")
        .port();
    let log_path = logs_dir().join("operator.log");
    let log = std::fs::File::create(&log_path).expect("creating the operator's log file");
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_os-operator"))
        .args(["controller", "--namespace", NS, "--lease-namespace", NS])
        .args([
            "--identity",
            "scale",
            "--debounce-ms",
            "100",
            "--listen",
            &listen,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting os-operator");
    println!("operator pid {}, log {}", child.id(), log_path.display());
    Operator { child, port }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A `kB` field of /proc/<pid>/status, 0 when it cannot be read.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

static RSS_PEAK_KB: AtomicU64 = AtomicU64::new(0);

fn spawn_rss_sampler(pid: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            RSS_PEAK_KB.fetch_max(proc_status_kb(pid, "VmRSS:"), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Polls the OS status every second until Complete, printing progress every 10 s. Returns
/// whether it completed before `timeout`.
async fn wait_complete(client: &Client, n: usize, timeout: Duration) -> bool {
    let api: Api<Os> = Api::namespaced(client.clone(), NS);
    let start = Instant::now();
    let mut next_print = Duration::from_secs(10);
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(os) = api.get("os").await else {
            continue;
        };
        let status = os.status.unwrap_or_default();
        if status.state == Some(RolloutState::Complete) {
            return true;
        }
        if start.elapsed() >= next_print {
            next_print += Duration::from_secs(10);
            println!(
                "  {:>4}s: {:?} updated {}/{n}, in progress {}, failed {}, pending {}",
                start.elapsed().as_secs(),
                status.state,
                status.updated,
                status.in_progress,
                status.failed,
                status.pending
            );
        }
    }
    false
}

/// One verb's count in a `RequestCounts`.
type Field = fn(&RequestCounts) -> u64;

struct Rollout {
    n: usize,
    done: bool,
    wall: Duration,
    hwm_kb: u64,
    rss_peak_kb: u64,
    setup: RequestCounts,
    server: RequestCounts,
    bench: RequestCounts,
    /// Mutations the server applied from the operator's start to the end.
    mutations: u64,
}

impl Rollout {
    fn print(&self, metrics: &str) {
        let secs = self.wall.as_secs_f64();
        let outcome = if self.done {
            "Complete"
        } else {
            "NOT complete (timed out)"
        };
        println!(
            "rollout: {outcome} in {:.1?}, {:.1} nodes/s",
            self.wall,
            self.n as f64 / secs
        );
        println!(
            "operator memory: VmHWM {:.1} MiB, peak VmRSS sampled every 1 s {:.1} MiB",
            self.hwm_kb as f64 / 1024.0,
            self.rss_peak_kb as f64 / 1024.0
        );
        print_reconciles(metrics);
        let during = |f: fn(&RequestCounts) -> u64| f(&self.server) - f(&self.setup);
        let operator = |f: fn(&RequestCounts) -> u64| during(f).saturating_sub(f(&self.bench));
        let verbs: [(&str, Field); 9] = [
            ("get", |c| c.get),
            ("list", |c| c.list),
            ("watch", |c| c.watch),
            ("create", |c| c.create),
            ("update", |c| c.update),
            ("patch", |c| c.patch),
            ("delete", |c| c.delete),
            ("evict", |c| c.evict),
            ("other", |c| c.other),
        ];
        let total = operator(RequestCounts::total);
        println!(
            "operator API requests: {total} = {:.2} per upgraded node",
            total as f64 / self.n as f64
        );
        for (verb, field) in verbs.iter().filter(|(_, f)| during(*f) > 0) {
            let (op, sim) = (operator(*field), field(&self.bench));
            let per_node = op as f64 / self.n as f64;
            println!(
                "  {verb:<7} operator {op:>8} ({per_node:>6.2}/node)   simulator+poller {sim:>8}"
            );
        }
        let served = during(RequestCounts::total);
        println!(
            "fakekube: {served} requests in {secs:.1}s = {:.0} req/s; {} mutations = {:.0}/s",
            served as f64 / secs,
            self.mutations,
            self.mutations as f64 / secs
        );
    }
}

/// Mean and largest reconcile duration from the operator's histogram; the largest is only
/// known to the bucket's upper bound.
fn print_reconciles(metrics: &str) {
    let name = "os_operator_reconcile_duration_seconds";
    let value = |line: &str| -> f64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let find = |suffix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}{{")))
            .map_or(0.0, value)
    };
    let (sum, count) = (find("sum"), find("count"));
    let max_bucket = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .find(|l| value(l) >= count)
        .and_then(|l| l.split("le=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
        .to_string();
    let mean_ms = if count > 0.0 {
        sum / count * 1000.0
    } else {
        0.0
    };
    println!(
        "reconcile passes: {count}, mean {mean_ms:.1} ms, max <= {max_bucket} s (histogram bucket), \
         total {sum:.1} s"
    );
}

fn report_budget(log: &[LogEntry]) {
    let (max, seq) = max_unavailable(log);
    println!(
        "max nodes unavailable at once (replayed from {} logged mutations): {max} (at entry {seq}), \
         budget {MAX_UNAVAILABLE}",
        log.len()
    );
    assert!(
        max <= MAX_UNAVAILABLE,
        "{max} nodes unavailable at log entry {seq}"
    );
}

/// Replays the server's log and returns the most nodes unavailable at once: NotReady,
/// cordoned, or with an operation in flight (an OSInstance whose phase is active or whose spec
/// asks for work). Incremental, so 10,000 nodes replay in linear time.
fn max_unavailable(log: &[LogEntry]) -> (usize, u64) {
    // node -> (down, busy)
    let mut state: HashMap<&str, (bool, bool)> = HashMap::new();
    let (mut now, mut max, mut at) = (0usize, 0, 0);
    for e in log {
        let before = state.get(e.name.as_str()).copied().unwrap_or_default();
        let mut after = before;
        match e.resource.as_str() {
            "nodes" => after.0 = e.verb != "delete" && node_down(&e.object),
            "osinstances" => after.1 = e.verb != "delete" && instance_busy(&e.object),
            _ => continue,
        }
        state.insert(e.name.as_str(), after);
        let was = before.0 || before.1;
        let is = after.0 || after.1;
        now = now + usize::from(is) - usize::from(was);
        if now > max {
            (max, at) = (now, e.seq);
        }
    }
    (max, at)
}

/// The fields of a logged object that [`max_unavailable`] reads.
fn replayed_fields(resource: &str, object: &Value) -> Value {
    match resource {
        "nodes" => json!({
            "spec": { "unschedulable": object["spec"]["unschedulable"] },
            "status": { "conditions": object["status"]["conditions"] },
        }),
        "osinstances" => json!({
            "spec": { "nodestatus": object["spec"]["nodestatus"] },
            "status": { "phase": object["status"]["phase"] },
        }),
        _ => Value::Null,
    }
}

fn node_down(node: &Value) -> bool {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    !ready || node["spec"]["unschedulable"] == true
}

fn instance_busy(osi: &Value) -> bool {
    let phase = osi["status"]["phase"].as_str().unwrap_or("Idle");
    let active = !["Idle", "Succeeded", "Failed"].contains(&phase);
    active || osi["spec"]["nodestatus"].as_str().unwrap_or("idle") != "idle"
}
