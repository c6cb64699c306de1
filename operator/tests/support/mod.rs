//! A simulated cluster for the operator's acceptance tests: the fake API server, Node objects,
//! one OSInstance per node, and a node simulator that plays the proxy and the agent (cordon,
//! reboot as NotReady, come back at the new version, report). The operator runs as its real
//! binary, so it can be killed and restarted.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fakekube::{FakeApiServer, LogEntry};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use operator::audit::Mutation;
use operator::crd::{Os, OsInstance, OsInstanceSpec};
use serde_json::{json, Value};

pub const NS: &str = "default";
pub const OLD: &str = "KubeOS v1";
pub const NEW: &str = "KubeOS v2";

pub struct Cluster {
    pub server: FakeApiServer,
    pub client: Client,
    kubeconfig: tempfile::NamedTempFile,
    logs: PathBuf,
}

impl Cluster {
    pub async fn start(test: &str) -> Cluster {
        let server = FakeApiServer::start().await;
        let client = server.client();
        let mut kubeconfig = tempfile::NamedTempFile::new().unwrap();
        let yaml = server.kubeconfig(NS);
        std::io::Write::write_all(&mut kubeconfig, yaml.as_bytes()).unwrap();
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        Cluster {
            server,
            client,
            kubeconfig,
            logs,
        }
    }

    /// Nodes `node-00`.. running `OLD`, Ready, each with an idle OSInstance.
    pub async fn add_nodes(&self, count: usize) -> Vec<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let instances: Api<OsInstance> = Api::namespaced(self.client.clone(), NS);
        let mut names = Vec::new();
        for i in 0..count {
            let name = format!("node-{i:02}");
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
                "spec": {},
            }))
            .unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
            set_node(&nodes, &name, true, OLD).await;
            let osi = OsInstance::new(&name, OsInstanceSpec::default());
            instances
                .create(&PostParams::default(), &osi)
                .await
                .unwrap();
            names.push(name);
        }
        names
    }

    pub async fn create_os(&self, spec: Value) -> Os {
        let os: Os = serde_json::from_value(json!({
            "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS",
            "metadata": { "name": "os", "namespace": NS },
            "spec": spec,
        }))
        .unwrap();
        let api: Api<Os> = Api::namespaced(self.client.clone(), NS);
        api.create(&PostParams::default(), &os).await.unwrap()
    }

    /// An OS resource named `name` (the others are named `os`).
    pub async fn create_named_os(&self, name: &str, spec: Value) -> Os {
        let os: Os = serde_json::from_value(json!({
            "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS",
            "metadata": { "name": name, "namespace": NS },
            "spec": spec,
        }))
        .unwrap();
        let api: Api<Os> = Api::namespaced(self.client.clone(), NS);
        api.create(&PostParams::default(), &os).await.unwrap()
    }

    /// Sets the node's `upgrade.openeuler.org/node-selector` label (`nodeselector` values).
    pub async fn label_node(&self, name: &str, value: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": {
            operator::rollout::NODE_SELECTOR_LABEL: value}}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    pub async fn os(&self) -> Os {
        let api: Api<Os> = Api::namespaced(self.client.clone(), NS);
        api.get("os").await.unwrap()
    }

    /// Starts `os-operator controller` against the fake server.
    pub fn operator(&self, identity: &str) -> Operator {
        let port = free_port();
        let log = std::fs::File::create(self.logs.join(format!("{identity}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_os-operator"))
            .args([
                "controller",
                "--namespace",
                NS,
                "--lease-namespace",
                NS,
                "--identity",
                identity,
                "--lease-duration",
                "3",
                "--renew-every",
                "1",
                "--retry-every",
                "1",
                "--debounce-ms",
                "20",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", self.kubeconfig.path())
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Operator {
            child,
            port,
            identity: identity.to_string(),
        }
    }

    /// Plays proxy and agent on every node until the returned handle is dropped: nodes in
    /// `bad` fall back to the old version and report a failure.
    pub fn simulate_nodes(&self, names: &[String], bad: &[&str], step: Duration) -> Simulation {
        self.simulate_nodes_failing_with(names, bad, step, None)
    }

    /// As [`simulate_nodes`](Self::simulate_nodes), the bad nodes reporting `error` as their
    /// `lastError` (a default message when `None`).
    pub fn simulate_nodes_failing_with(
        &self,
        names: &[String],
        bad: &[&str],
        step: Duration,
        error: Option<String>,
    ) -> Simulation {
        let mut tasks = Vec::new();
        for name in names {
            let client = self.client.clone();
            let name = name.clone();
            let bad = bad.contains(&name.as_str());
            let error = error.clone();
            tasks.push(tokio::spawn(node_loop(client, name, bad, step, error)));
        }
        Simulation { tasks }
    }

    /// Waits until `done` holds for the OS, or panics after `timeout` with the last status.
    pub async fn wait_os(&self, timeout: Duration, what: &str, done: impl Fn(&Os) -> bool) -> Os {
        let deadline = Instant::now() + timeout;
        loop {
            let os = self.os().await;
            if done(&os) {
                return os;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; OS status: {:#?}", os.status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.server.log()
    }
}

pub struct Operator {
    child: Child,
    pub port: u16,
    pub identity: String,
}

impl Operator {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the operator gives up its lease and exits.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub fn metrics(&self) -> String {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("GET /metrics from {}: {e}", self.identity))
    }

    pub fn try_metrics(&self) -> std::io::Result<String> {
        http_get(self.port, "/metrics")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Simulation {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The kubelet's report: Ready, running `os_image`.
pub async fn set_node_ready(nodes: &Api<Node>, name: &str, os_image: &str) {
    set_node(nodes, name, true, os_image).await;
}

async fn set_node(nodes: &Api<Node>, name: &str, ready: bool, os_image: &str) {
    let status = json!({ "status": {
        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        "nodeInfo": node_info(os_image),
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn node_info(os_image: &str) -> Value {
    json!({
        "osImage": os_image, "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
        "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
        "operatingSystem": "linux", "systemUUID": "",
    })
}

async fn cordon(nodes: &Api<Node>, name: &str, on: bool) {
    let body = json!({ "spec": { "unschedulable": on } });
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap();
}

async fn set_phase(api: &Api<OsInstance>, name: &str, status: Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
}

/// One node: waits for its OSInstance to ask for an upgrade, then walks the steps a real proxy
/// and agent take, in the order that keeps the node counted unavailable throughout.
async fn node_loop(client: Client, name: String, bad: bool, step: Duration, error: Option<String>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let instances: Api<OsInstance> = Api::namespaced(client, NS);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(osi) = instances.get(&name).await else {
            continue;
        };
        let status = osi.status.clone().unwrap_or_default();
        let asked = serde_json::to_value(osi.spec.nodestatus).unwrap();
        if asked != "upgrade" || status.phase != Some(operator::crd::NodePhase::Assigned) {
            continue;
        }
        let target = status.target_version.clone().unwrap_or_default();
        // As os-proxy takes an operation up: conditional on the version it read, so an
        // operation the operator withdrew in between (spec.abort) is not taken up.
        let claim = json!({
            "metadata": { "resourceVersion": osi.metadata.resource_version },
            "status": { "phase": "Draining" },
        });
        let claimed = instances
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&claim))
            .await;
        match claimed {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("claiming {name}: {e}"),
        }
        cordon(&nodes, &name, true).await;
        tokio::time::sleep(step).await;
        set_phase(
            &instances,
            &name,
            json!({ "phase": "Preparing", "progress": 50 }),
        )
        .await;
        tokio::time::sleep(step).await;
        set_phase(&instances, &name, json!({ "phase": "Rebooting" })).await;
        set_node(&nodes, &name, false, OLD).await;
        tokio::time::sleep(step).await;
        let now = jiff::Timestamp::now().to_string();
        let running = if bad { OLD } else { target.as_str() };
        set_node(&nodes, &name, true, running).await;
        cordon(&nodes, &name, false).await;
        let result = if bad {
            let error = error
                .clone()
                .unwrap_or_else(|| format!("trial boot of {target} failed; fell back to {OLD}"));
            json!({ "phase": "Failed", "currentVersion": OLD, "finishedAt": now,
                    "lastError": error })
        } else {
            json!({ "phase": "Succeeded", "currentVersion": target, "progress": 100, "finishedAt": now })
        };
        set_phase(&instances, &name, result).await;
        let idle = json!({ "spec": { "nodestatus": "idle" } });
        instances
            .patch(&name, &PatchParams::default(), &Patch::Merge(&idle))
            .await
            .unwrap();
    }
}

/// The server's log as the audit functions read it.
pub fn mutations(log: &[LogEntry]) -> impl Iterator<Item = Mutation<'_>> {
    log.iter().map(|e| Mutation {
        seq: e.seq,
        resource: &e.resource,
        name: &e.name,
        verb: e.verb,
        object: &e.object,
    })
}

pub fn upgrade_spec(maxunavailable: i64, failure_budget: u32) -> Value {
    json!({
        "osversion": NEW, "opstype": "upgrade", "imagetype": "disk",
        "imageurl": "http://127.0.0.1:1/update.img", "flagSafe": true,
        "checksum": format!("blake3:{}", "ab".repeat(32)),
        "maxunavailable": maxunavailable, "nodeselector": "all-label",
        "timeinterval": 0, "failureBudget": failure_budget,
    })
}
