//! The proxy's loop: observe the node's OSInstance, the Node, the OS it names and the agent;
//! decide with [`lifecycle::next_step`]; carry out that one step; repeat.
//!
//! Polling (every `poll_interval`) rather than watching keeps a restart, an agent that comes
//! and goes across "reboots", and an API server hiccup all on one path: every tick starts from
//! a fresh observation, so nothing is remembered that could go stale.

use crate::agent_client::{AgentClient, AgentStatus};
use crate::lifecycle::{self, NodeState, Step};
use crate::report::Reporter;
use crate::{cordon, execute};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter as EventReporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use operator::crd::{
    node_owner, owner_uids, ownership, NodeStatus, Os, OsInstance, OsInstanceSpec, Ownership,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a `status` call may take before the agent counts as unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an idle proxy goes without looking, watch or not.
pub const IDLE_RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// Namespace of the node's OSInstance (the OS's namespace).
    pub namespace: String,
    pub agent_socket: PathBuf,
    pub drain_timeout: Duration,
    pub pod_grace_seconds: Option<u32>,
    pub poll_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading OSInstance {namespace}/{name}: {source}")]
    ReadInstance {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating OSInstance {namespace}/{name}: {source}")]
    CreateInstance {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading node {name}: {source}")]
    ReadNode { name: String, source: kube::Error },
    #[error("reading OS {namespace}/{name}: {source}")]
    ReadOs {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing OSInstance {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error(transparent)]
    Cordon(#[from] cordon::CordonError),
}

/// Everything one proxy talks to.
pub struct Proxy {
    pub(crate) client: Client,
    pub(crate) cfg: Config,
    pub(crate) agent: AgentClient,
    pub(crate) nodes: Api<Node>,
    pub(crate) instances: Api<OsInstance>,
    pub(crate) reporter: Reporter,
    pub(crate) recorder: Recorder,
}

impl Proxy {
    pub fn new(client: Client, cfg: Config) -> Proxy {
        let instances: Api<OsInstance> = Api::namespaced(client.clone(), &cfg.namespace);
        let recorder = Recorder::new(
            client.clone(),
            EventReporter {
                controller: "os-proxy".into(),
                instance: Some(cfg.node_name.clone()),
            },
        );
        Proxy {
            agent: AgentClient::new(&cfg.agent_socket),
            nodes: Api::all(client.clone()),
            reporter: Reporter::new(instances.clone(), &cfg.node_name),
            instances,
            recorder,
            client,
            cfg,
        }
    }

    /// Observes, decides and carries out one step; returns the step.
    pub async fn tick(&self) -> Result<Step, Error> {
        let Some(state) = self.observe().await? else {
            return Ok(Step::Idle);
        };
        let step = lifecycle::next_step(&state);
        tracing::debug!(node = %self.cfg.node_name, ?step, "decided");
        execute::execute(self, &state, &step).await?;
        Ok(step)
    }

    /// Ticks forever; errors are logged and the next tick starts from a fresh observation.
    /// While an operation runs, ticks come every `poll_interval` (the agent has no watch);
    /// an idle node waits for a change of its OSInstance, or [`IDLE_RESYNC`] at most, so a
    /// fleet of idle proxies costs the API server one watch each, not a poll a second.
    pub async fn run(&self) {
        let changed = Arc::new(Notify::new());
        let _watch = AbortOnDrop(tokio::spawn(notify_on_change(
            self.instances.clone(),
            self.cfg.node_name.clone(),
            changed.clone(),
        )));
        loop {
            match self.tick().await {
                Ok(Step::Idle) => {
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep(IDLE_RESYNC) => {}
                    }
                }
                Ok(Step::Wait(_)) => tokio::time::sleep(self.cfg.poll_interval).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %self.cfg.node_name, error = %e, "step failed; retrying");
                    tokio::time::sleep(self.cfg.poll_interval).await;
                }
            }
        }
    }

    /// The current state, or `None` when there is nothing to act on yet: right after creating
    /// a missing OSInstance or claiming an unclaimed one, and while the OSInstance is one a
    /// deleted Node of the same name left behind (the garbage collector removes it).
    pub async fn observe(&self) -> Result<Option<NodeState>, Error> {
        let name = &self.cfg.node_name;
        let node = self
            .nodes
            .get(name)
            .await
            .map_err(|source| Error::ReadNode {
                name: name.clone(),
                source,
            })?;
        let Some(instance) = self.read_instance().await? else {
            self.create_instance(&node).await?;
            return Ok(None);
        };
        match ownership(&instance, node.metadata.uid.as_deref().unwrap_or_default()) {
            Ownership::Owned => {}
            Ownership::Unclaimed => {
                self.claim_instance(&instance, &node).await?;
                return Ok(None);
            }
            Ownership::Stale => {
                tracing::warn!(
                    node = %name,
                    owners = ?owner_uids(&instance),
                    "the OSInstance belongs to a deleted node of this name; waiting for its removal"
                );
                return Ok(None);
            }
        }
        let os = self.read_os(&instance.spec).await?;
        let agent = self.agent_status().await;
        Ok(Some(NodeState {
            spec: instance.spec,
            status: instance.status.unwrap_or_default(),
            os,
            namespace: self.cfg.namespace.clone(),
            node: cordon::facts(&node),
            agent,
        }))
    }

    pub(crate) async fn read_instance(&self) -> Result<Option<OsInstance>, Error> {
        self.instances
            .get_opt(&self.cfg.node_name)
            .await
            .map_err(|source| Error::ReadInstance {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.node_name.clone(),
                source,
            })
    }

    /// KubeOS's proxy creates its node's OSInstance, idle, when it is missing; here owned by
    /// the Node (its uid), so it goes with the Node.
    async fn create_instance(&self, node: &Node) -> Result<(), Error> {
        let instance = OsInstance {
            metadata: ObjectMeta {
                name: Some(self.cfg.node_name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                owner_references: node_owner(node).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: OsInstanceSpec::default(),
            status: None,
        };
        match self
            .instances
            .create(&PostParams::default(), &instance)
            .await
        {
            Ok(_) => {
                tracing::info!(node = %self.cfg.node_name, namespace = %self.cfg.namespace, "created OSInstance");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::CreateInstance {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.node_name.clone(),
                source,
            }),
        }
    }

    /// Adds the Node's owner reference to an OSInstance created without one (by an older
    /// proxy, or by hand), keeping its other owners. A 409 means it changed: the next tick
    /// looks again.
    async fn claim_instance(&self, instance: &OsInstance, node: &Node) -> Result<(), Error> {
        let Some(owner) = node_owner(node) else {
            return Ok(());
        };
        let mut owners = instance
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        owners.push(owner);
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": owners,
            "resourceVersion": instance.metadata.resource_version,
        }});
        match self
            .instances
            .patch(
                &self.cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(node = %self.cfg.node_name, "claimed the OSInstance for this node");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::Write {
                name: self.cfg.node_name.clone(),
                source,
            }),
        }
    }

    async fn read_os(&self, spec: &OsInstanceSpec) -> Result<Option<operator::crd::OsSpec>, Error> {
        let Some(nn) = spec
            .namespacedname
            .as_ref()
            .filter(|_| spec.nodestatus != NodeStatus::Idle)
        else {
            return Ok(None);
        };
        // Only the operator's namespace: an OSInstance (which a node can write) naming
        // another one is refused by the lifecycle, never read.
        let namespace = &self.cfg.namespace;
        if !nn.namespace.is_empty() && nn.namespace != *namespace {
            return Ok(None);
        }
        let api: Api<Os> = Api::namespaced(self.client.clone(), namespace);
        let os = api
            .get_opt(&nn.name)
            .await
            .map_err(|source| Error::ReadOs {
                namespace: namespace.clone(),
                name: nn.name.clone(),
                source,
            })?;
        Ok(os.map(|o| o.spec))
    }

    /// The agent's report; `None` while it does not answer (expected during a reboot).
    pub(crate) async fn agent_status(&self) -> Option<AgentStatus> {
        match tokio::time::timeout(STATUS_TIMEOUT, self.agent.status()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "agent status");
                None
            }
            Err(_) => {
                tracing::debug!("agent status timed out");
                None
            }
        }
    }
}

/// Ends the watch with the loop that uses it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the loop on every change of the node's OSInstance. The watcher re-lists and
/// re-watches by itself after errors (410 Expired, a dropped connection), with backoff.
async fn notify_on_change(api: Api<OsInstance>, name: String, changed: Arc<Notify>) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, cfg).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(error = %e, "OSInstance watch"),
        }
    }
}

/// Builds the proxy and runs it until the process ends.
pub async fn run(client: Client, cfg: Config) {
    tracing::info!(node = %cfg.node_name, namespace = %cfg.namespace, socket = %cfg.agent_socket.display(), "os-proxy starting");
    Proxy::new(client, cfg).run().await
}
