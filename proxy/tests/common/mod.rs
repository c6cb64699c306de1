//! A cluster in a fake API server and a scripted stand-in for os-agent's socket.
#![allow(dead_code)] // each test binary uses a different part

use fakekube::FakeApiServer;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::crd::{Os, OsInstance};
use proxy::agent_client::{AgentStatus, Slot, SlotRecord, SlotState, Slots, UpgradeRequest};
use proxy::Proxy;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use wire::rpc as msg;

pub const NODE: &str = "n1";
pub const NEW: &str = "v2";

pub fn digest() -> String {
    format!("blake3:{}", "b".repeat(64))
}

/// A client that sees 429 at once (as os-proxy's main configures it).
pub fn client(server: &FakeApiServer) -> kube::Client {
    let mut config = server.config();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

/// The requests a client made, as `METHOD path?query`.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<String>>>);

impl Requests {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// How many requests start with `prefix` (`"GET /api/v1/namespaces/default/pods"`).
    pub fn count(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

/// [`client`], recording every request it makes.
pub fn counting_client(server: &FakeApiServer) -> (kube::Client, Requests) {
    let requests = Requests::default();
    let log = requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let uri = req.uri();
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let line = format!("{} {}{query}", req.method(), uri.path());
        log.0.lock().unwrap().push(line);
        req
    });
    let mut config = server.config();
    config.default_retry = false;
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, requests)
}

pub async fn create_node(client: &kube::Client, name: &str, unschedulable: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name}, "spec": {"unschedulable": unschedulable}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
}

pub async fn node(client: &kube::Client, name: &str) -> Node {
    Api::<Node>::all(client.clone()).get(name).await.unwrap()
}

/// The OS `os` asking for version v2, and node n1's OSInstance started by the "operator" at
/// `phase` with `nodestatus`.
pub async fn start_operation(client: &kube::Client, nodestatus: &str, phase: &str, version: &str) {
    let os: Os = serde_json::from_value(json!({
        "metadata": {"name": "os", "namespace": "default"},
        "spec": {"osversion": version, "maxunavailable": 1, "opstype": nodestatus,
                 "imageurl": "file:///srv/os-v2.img.zst", "checksum": digest(),
                 "imagetype": "disk", "flagSafe": true}
    }))
    .unwrap();
    Api::<Os>::default_namespaced(client.clone())
        .create(&PostParams::default(), &os)
        .await
        .unwrap();
    // As the proxy creates it: owned by its Node.
    let uid = node(client, NODE).await.metadata.uid;
    let osi: OsInstance = serde_json::from_value(json!({
        "metadata": {"name": NODE, "namespace": "default", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": uid}]},
        "spec": {"nodestatus": nodestatus, "namespacedname": {"name": "os", "namespace": "default"}}
    }))
    .unwrap();
    let api = Api::<OsInstance>::default_namespaced(client.clone());
    if api.create(&PostParams::default(), &osi).await.is_err() {
        // The proxy created it, idle: the operator starts it like any other.
        let spec = serde_json::to_value(&osi).unwrap()["spec"].clone();
        api.patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    }
    let status = json!({"status": {"phase": phase, "operation": nodestatus,
                                   "targetVersion": version, "progress": 0}});
    api.patch_status(NODE, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

pub async fn instance(client: &kube::Client) -> OsInstance {
    Api::<OsInstance>::default_namespaced(client.clone())
        .get(NODE)
        .await
        .unwrap()
}

/// A running pod on n1 owned by a ReplicaSet, labelled `app=web`, Ready.
pub async fn web_pod(client: &kube::Client, name: &str) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                 "uid": "rs-1", "controller": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
        .await
        .unwrap();
}

/// A budget over `app=web` that never allows an eviction of its only pod.
pub async fn strict_budget(client: &kube::Client) {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::default_namespaced(client.clone())
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
}

pub fn proxy_config(socket: &Path, drain_timeout: Duration) -> proxy::Config {
    proxy::Config {
        node_name: NODE.into(),
        namespace: "default".into(),
        agent_socket: socket.to_path_buf(),
        drain_timeout,
        pod_grace_seconds: Some(5),
        poll_interval: Duration::from_millis(50),
    }
}

/// A node with an upgrade to [`NEW`] assigned, a scripted agent whose slot B says
/// `b_state`/`b_version`, and the proxy that drives them.
pub struct Rig {
    pub server: FakeApiServer,
    pub client: kube::Client,
    pub agent: FakeAgent,
    pub proxy: Proxy,
}

pub async fn upgrade_rig(b_state: &str, b_version: &str) -> Rig {
    let server = FakeApiServer::start().await;
    let client = client(&server);
    create_node(&client, NODE, false).await;
    start_operation(&client, "upgrade", "Assigned", NEW).await;
    let agent = FakeAgent::start(b_state, b_version);
    let proxy = Proxy::new(
        client.clone(),
        proxy_config(&agent.socket, Duration::from_secs(10)),
    );
    Rig {
        server,
        client,
        agent,
        proxy,
    }
}

/// Ticks until `done` holds for the OSInstance, at most `limit` ticks; returns the steps.
pub async fn tick_until(
    p: &Proxy,
    client: &kube::Client,
    limit: usize,
    done: impl Fn(&OsInstance) -> bool,
) -> Vec<String> {
    let mut steps = vec![];
    for _ in 0..limit {
        if done(&instance(client).await) {
            return steps;
        }
        let step = p.tick().await.unwrap();
        steps.push(format!("{step:?}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "not done after {limit} ticks: {steps:#?}\n{:#?}",
        instance(client).await
    );
}

pub fn phase(osi: &OsInstance) -> Option<String> {
    osi.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
}

/// Answers os-agent's methods from a scripted node: A runs v1; `prepare_upgrade` writes B,
/// `upgrade` arms B, `rollback` commits the other slot, `configure` is not supported. Every
/// method called is recorded.
pub struct FakeAgent {
    pub socket: PathBuf,
    pub calls: Arc<Mutex<Vec<String>>>,
    pub status: Arc<Mutex<AgentStatus>>,
    /// When set, `prepare_upgrade` answers this error reason (and changes nothing).
    pub prepare_error: Arc<Mutex<Option<msg::Reason>>>,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    /// Slot B's record says `b_state` (`empty`, `written`, …) and `b_version`.
    pub fn start(b_state: &str, b_version: &str) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let rec = |slot, state: &str, version: &str, digest: String, written_at| SlotRecord {
            slot,
            state: SlotState::parse(state).unwrap(),
            version: version.into(),
            digest,
            size: 1,
            written_at,
            confirm: None,
            source: String::new(),
            verity: None,
        };
        let status = AgentStatus {
            booted: Slot::A,
            active: Slot::A,
            trial: None,
            tries: 0,
            fail: None,
            on_trial: false,
            source: "1".into(),
            slots: Slots {
                a: rec(
                    Slot::A,
                    "good",
                    "v1",
                    format!("blake3:{}", "a".repeat(64)),
                    1,
                ),
                b: rec(Slot::B, b_state, b_version, digest(), 2),
            },
            last_failure: None,
            rescue: None,
            job: None,
            other_job: None,
            trust: None,
            verity: None,
        };
        let agent = FakeAgent {
            socket: socket.clone(),
            calls: Arc::default(),
            status: Arc::new(Mutex::new(status)),
            prepare_error: Arc::default(),
            _dir: dir,
        };
        let listener = UnixListener::bind(&socket).unwrap();
        let (calls, status) = (agent.calls.clone(), agent.status.clone());
        let prepare_error = agent.prepare_error.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    continue;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                let method = req["method"].as_str().unwrap().to_owned();
                let error = *prepare_error.lock().unwrap();
                let answer = match error {
                    Some(reason) if method == msg::PREPARE_UPGRADE => error_answer(reason),
                    _ => answer(&method, &req["params"], &status),
                };
                if method != "status" {
                    calls.lock().unwrap().push(method);
                }
                let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            }
        });
        agent
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Changes the scripted node (a "reboot", a health-gate verdict).
    pub fn set(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.status.lock().unwrap());
    }
}

/// An error answer as the agent sends it for `reason`.
pub fn error_answer(reason: msg::Reason) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": reason.code(),
        "message": format!("scripted {reason}"), "data": msg::ErrorData::of(reason)}, "id": 1})
}

/// Answers with the wire types the real agent encodes.
fn answer(method: &str, params: &Value, status: &Mutex<AgentStatus>) -> Value {
    let ok = |result: Value| json!({"jsonrpc": "2.0", "result": result, "id": 1});
    let op = |status: &str| {
        serde_json::to_value(msg::OpStatus {
            status: status.into(),
        })
        .unwrap()
    };
    let mut s = status.lock().unwrap();
    match method {
        msg::STATUS => ok(serde_json::to_value(&*s).unwrap()),
        msg::PREPARE_UPGRADE => {
            let req: UpgradeRequest = serde_json::from_value(params[0].clone()).unwrap();
            s.slots.b.state = SlotState::Written;
            s.slots.b.version = req.version;
            s.slots.b.digest = req.check_sum;
            s.slots.b.written_at = 3;
            ok(op(msg::UPGRADE_READY))
        }
        msg::UPGRADE => {
            s.trial = Some(Slot::B);
            s.tries = 3;
            ok(op(msg::UPGRADED))
        }
        msg::ROLLBACK => {
            s.active = Slot::B;
            ok(op(msg::ROLLBACKED))
        }
        _ => json!({"jsonrpc": "2.0", "error": {"code": -32001, "message":
            format!("{method} is not supported by this os-agent yet; nothing was changed"),
            "data": msg::ErrorData::of(msg::Reason::NotSupported)}, "id": 1}),
    }
}
