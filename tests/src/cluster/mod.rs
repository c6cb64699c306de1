//! The cluster simulation (issue 7): the fake API server, the real `os-operator`, and per node
//! the real `os-proxy` and `os-agent` on file-backed slots. A node "reboots" when its agent asks
//! to: its processes die, GRUB's choice is applied to its env copies, and the agent starts
//! again on the chosen slot ([`node`]). A kubelet stand-in keeps each Node object's Ready
//! condition and `osImage` true to the node: NotReady from the reboot until the agent is back,
//! `osImage` the version recorded for the running slot.

pub mod identity;
pub mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakekube::FakeApiServer;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use operator::audit::Mutation;
use operator::crd::{Os, OsInstance};
use serde_json::{json, Value};

use crate::demo::Bundle;
pub use node::{Programs, SimNode};

pub const NS: &str = "os-upgrade-system";

/// The programs: the agent static (as on a node), the cluster side for the host. Tests take
/// the cluster side from this crate's `sim-*` binaries, one-line wrappers of
/// `operator::cli::main` and `proxy::cli::main`, so they build with the tests.
pub struct Binaries {
    pub agent: PathBuf,
    pub operator: PathBuf,
    pub proxy: PathBuf,
}

pub struct SimCluster {
    pub server: FakeApiServer,
    pub client: Client,
    pub dir: PathBuf,
    pub nodes: Vec<Arc<SimNode>>,
    kubeconfig: PathBuf,
    /// With [`start_as_service_accounts`](Self::start_as_service_accounts): the operator's
    /// and proxies' kubeconfigs name their service accounts instead of the admin.
    service_accounts: bool,
    binaries: Binaries,
    operator: Option<Child>,
    /// One per node, in the order of `nodes`.
    kubelets: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl SimCluster {
    pub async fn start(test: &str, binaries: Binaries) -> SimCluster {
        let server = FakeApiServer::start().await;
        let client = server.client();
        let dir = crate::repo_root().join("target/e2e-logs").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig(NS)).unwrap();
        SimCluster {
            server,
            client,
            dir,
            nodes: Vec::new(),
            kubeconfig,
            service_accounts: false,
            binaries,
            operator: None,
            kubelets: Default::default(),
        }
    }

    /// As [`start`](Self::start), with deploy/'s namespace, service accounts and RBAC applied,
    /// and the operator and every proxy authenticating as their service accounts.
    pub async fn start_as_service_accounts(test: &str, binaries: Binaries) -> SimCluster {
        let mut cluster = Self::start(test, binaries).await;
        identity::apply_deploy_manifests(&cluster.client).await;
        cluster.service_accounts = true;
        cluster
    }

    fn operator_kubeconfig(&self) -> PathBuf {
        if self.service_accounts {
            identity::operator_kubeconfig(&self.server, &self.dir)
        } else {
            self.kubeconfig.clone()
        }
    }

    fn proxy_kubeconfig(&self, node: &str) -> PathBuf {
        if self.service_accounts {
            identity::proxy_kubeconfig(&self.server, &self.dir, node)
        } else {
            self.kubeconfig.clone()
        }
    }

    /// `count` nodes `node-0`.. running `v1` from slot A; each gets its Node object, its agent,
    /// its proxy and its kubelet stand-in. `setup` runs on each node before anything starts.
    pub async fn add_nodes(
        &mut self,
        count: usize,
        v1: &Bundle,
        slot_size: u64,
        setup: impl Fn(&SimNode),
    ) {
        for i in 0..count {
            let name = format!("node-{i}");
            let programs = Programs {
                agent: self.binaries.agent.clone(),
                proxy: self.binaries.proxy.clone(),
                kubeconfig: self.proxy_kubeconfig(&name),
                namespace: NS.into(),
            };
            let node = SimNode::create(
                &self.dir,
                &name,
                slot_size,
                &v1.version,
                &v1.digest,
                programs,
            );
            setup(&node);
            self.create_node_object(&name).await;
            let node = Arc::new(node);
            boot(&self.client, &node).await;
            self.kubelets
                .lock()
                .unwrap()
                .push(tokio::spawn(kubelet(self.client.clone(), node.clone())));
            self.nodes.push(node);
        }
    }

    async fn create_node_object(&self, name: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "spec": {},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }

    pub fn node(&self, name: &str) -> &Arc<SimNode> {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn start_operator(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("operator.log"))
            .unwrap();
        let child = Command::new(&self.binaries.operator)
            .args(["controller", "--namespace", NS, "--lease-namespace", NS])
            .args(["--identity", "sim-operator", "--lease-duration", "3"])
            .args([
                "--renew-every",
                "1",
                "--retry-every",
                "1",
                "--debounce-ms",
                "50",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .env("KUBECONFIG", self.operator_kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.operator = Some(child);
    }

    pub async fn create_os(&self, spec: Value) {
        let os: Os = serde_json::from_value(json!({
            "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS",
            "metadata": { "name": "os", "namespace": NS },
            "spec": spec,
        }))
        .unwrap();
        let api: Api<Os> = Api::namespaced(self.client.clone(), NS);
        api.create(&PostParams::default(), &os).await.unwrap();
    }

    pub async fn os(&self) -> Os {
        Api::<Os>::namespaced(self.client.clone(), NS)
            .get("os")
            .await
            .unwrap()
    }

    pub async fn instance(&self, node: &str) -> OsInstance {
        Api::<OsInstance>::namespaced(self.client.clone(), NS)
            .get(node)
            .await
            .unwrap()
    }

    /// The node's OSInstance, once its proxy created it.
    pub async fn try_instance(&self, node: &str) -> Option<OsInstance> {
        Api::<OsInstance>::namespaced(self.client.clone(), NS)
            .get_opt(node)
            .await
            .unwrap()
    }

    pub async fn node_object(&self, node: &str) -> Node {
        Api::<Node>::all(self.client.clone())
            .get(node)
            .await
            .unwrap()
    }

    /// Waits until `done` holds for the OS, or panics after `timeout` with its status and
    /// where the logs are.
    pub async fn wait_os(&self, timeout: Duration, what: &str, done: impl Fn(&Os) -> bool) -> Os {
        let deadline = Instant::now() + timeout;
        loop {
            let os = self.os().await;
            if done(&os) {
                return os;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; OS status: {:#?}; logs in {}",
                os.status,
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A pod on `node` owned by a ReplicaSet, labelled `app: APP`, Ready.
    pub async fn add_pod(&self, node: &str, name: &str, app: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": NS, "labels": { "app": app },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{app}-rs"), "uid": format!("uid-{app}-rs"), "controller": true }] },
            "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = json!({ "status": { "phase": "Running",
            "conditions": [{ "type": "Ready", "status": "True" }] } });
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// A PodDisruptionBudget over `app: APP` with `maxUnavailable: 0`: never allows an eviction.
    pub async fn add_blocking_pdb(&self, app: &str) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), NS);
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": { "name": format!("{app}-pdb"), "namespace": NS },
            "spec": { "maxUnavailable": 0, "selector": { "matchLabels": { "app": app } } },
        }))
        .unwrap();
        api.create(&PostParams::default(), &pdb).await.unwrap();
    }

    /// A PodDisruptionBudget over `app: APP` with `minAvailable: MIN`.
    pub async fn add_min_available_pdb(&self, app: &str, min: i32) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), NS);
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": { "name": format!("{app}-pdb"), "namespace": NS },
            "spec": { "minAvailable": min, "selector": { "matchLabels": { "app": app } } },
        }))
        .unwrap();
        api.create(&PostParams::default(), &pdb).await.unwrap();
    }

    /// A ReplicaSet of `replicas` pods labelled `app: APP`: the fake API server's controllers
    /// schedule them on Ready, schedulable nodes, start them and replace evicted ones.
    pub async fn add_replica_set(&self, app: &str, replicas: i32) {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), NS);
        let set: ReplicaSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": { "name": app, "namespace": NS },
            "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": app } },
                "template": { "metadata": { "labels": { "app": app } },
                    "spec": { "containers": [{ "name": "c", "image": "busybox" }] } } },
        }))
        .unwrap();
        api.create(&PostParams::default(), &set).await.unwrap();
    }

    pub async fn cordon(&self, node: &str) {
        self.set_unschedulable(node, true).await;
    }

    pub async fn uncordon(&self, node: &str) {
        self.set_unschedulable(node, false).await;
    }

    async fn set_unschedulable(&self, node: &str, on: bool) {
        let body = json!({ "spec": { "unschedulable": on } });
        Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .unwrap();
    }

    /// Sets the node's `upgrade.openeuler.org/node-selector` label.
    pub async fn label_node(&self, node: &str, value: &str) {
        let body = json!({ "metadata": { "labels": {
            operator::rollout::NODE_SELECTOR_LABEL: value } } });
        Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .unwrap();
    }

    /// The machine is switched off and its Node object deleted (the node left the cluster).
    pub async fn delete_node(&self, name: &str) {
        let i = self.index(name);
        self.kubelets.lock().unwrap()[i].abort();
        self.nodes[i].kill_all();
        Api::<Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// The machine joins again under its old name: a new Node object (a new uid), then it
    /// boots as before (agent, kubelet, proxy).
    pub async fn register_node_again(&self, name: &str) {
        let i = self.index(name);
        self.create_node_object(name).await;
        let node = self.nodes[i].clone();
        boot(&self.client, &node).await;
        self.kubelets.lock().unwrap()[i] = tokio::spawn(kubelet(self.client.clone(), node));
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    pub fn log(&self) -> Vec<fakekube::LogEntry> {
        self.server.log()
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        for k in self.kubelets.lock().unwrap().iter() {
            k.abort();
        }
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill();
            let _ = op.wait();
        }
        for n in &self.nodes {
            n.kill_all();
        }
    }
}

/// The node comes up: the agent on the running slot (it runs its health gate on a trial
/// boot), then the kubelet reports Ready with the running version, then the proxy pod starts.
async fn boot(client: &Client, node: &Arc<SimNode>) {
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.start_agent())
        .await
        .unwrap();
    set_node_status(client, &node.name, true, &node.running_version()).await;
    node.start_proxy();
}

/// The kubelet stand-in and the machine's power button: reboots the node when its agent
/// asks to (NotReady from the moment the machine goes down until it is back).
async fn kubelet(client: Client, node: Arc<SimNode>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !node.wants_reboot() {
            continue;
        }
        set_node_status(&client, &node.name, false, &node.running_version()).await;
        let n = node.clone();
        tokio::task::spawn_blocking(move || n.power_cycle())
            .await
            .unwrap();
        boot(&client, &node).await;
    }
}

async fn set_node_status(client: &Client, name: &str, ready: bool, version: &str) {
    let status = json!({ "status": {
        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" },
                         "reason": if ready { "KubeletReady" } else { "NodeRebooting" } }],
        "nodeInfo": {
            "osImage": version, "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
            "operatingSystem": "linux", "systemUUID": "",
        },
    }});
    let nodes: Api<Node> = Api::all(client.clone());
    // The API server may be gone when a test ends; a kubelet just retries.
    let _ = nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
}

pub fn log_path(dir: &Path, node: &str, file: &str) -> PathBuf {
    dir.join(node).join(file)
}

/// The server's log as `operator::audit` reads it.
pub fn mutations(log: &[fakekube::LogEntry]) -> impl Iterator<Item = Mutation<'_>> {
    log.iter().map(|e| Mutation {
        seq: e.seq,
        resource: &e.resource,
        name: &e.name,
        verb: e.verb,
        object: &e.object,
    })
}
