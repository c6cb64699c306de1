//! The proxy's loop: observe the node's OSInstance, the Node, the OS it names and the agent;
//! decide with [`lifecycle::next_step`]; carry out that one step; repeat.
//!
//! Every step starts from a fresh observation (GETs, and the agent's `status`), so a restart,
//! an agent that comes and goes across "reboots", and an API server hiccup are all one path and
//! nothing remembered can go stale. Between steps, a proxy that has nothing to do or waits for
//! something outside it does not ask again and again: it waits on watches of its OSInstance
//! and Node ([`crate::watches`]), and, while an operation is in flight, reads the agent's
//! status over its socket (the agent has no watch) and looks again only when that changes the
//! step. So the API requests of a proxy grow with the steps it takes, not with time; a bounded
//! resync ([`IDLE_RESYNC`], [`BUSY_RESYNC`]) covers a lost watch event.

use crate::agent_client::{AgentClient, AgentStatus};
use crate::lifecycle::{self, NodeState, Step};
use crate::report::Reporter;
use crate::watches::Wakeups;
use crate::{cordon, execute};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter as EventReporter};
use kube::Client;
use operator::crd::{
    node_owner, owner_uids, ownership, NodeStatus, Os, OsInstance, OsInstanceSpec, Ownership,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep, sleep_until, Instant};

/// How long a `status` call may take before the agent counts as unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an idle proxy goes without looking, watch or not.
pub const IDLE_RESYNC: Duration = Duration::from_secs(300);
/// Longest a proxy waiting in an operation goes without looking at the API server.
pub const BUSY_RESYNC: Duration = Duration::from_secs(30);
/// Longest pause after failed steps (the pause doubles from `poll_interval`).
const ERROR_BACKOFF_CAP: Duration = Duration::from_secs(30);

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
        self.step().await.map(|(_, step)| step)
    }

    /// [`tick`](Self::tick), also returning what the step was decided on.
    async fn step(&self) -> Result<(Option<NodeState>, Step), Error> {
        let Some(state) = self.observe().await? else {
            return Ok((None, Step::Idle));
        };
        let step = self.act(&state).await?;
        Ok((Some(state), step))
    }

    /// Decides on `state` (one [`observe`](Self::observe)) and carries out that step;
    /// returns the step. What `state` saw may be out of date by now: writes decided on an
    /// `Assigned` instance only land if it is unchanged (see [`NodeState::resource_version`]).
    pub async fn act(&self, state: &NodeState) -> Result<Step, Error> {
        let step = lifecycle::next_step(state);
        tracing::debug!(node = %self.cfg.node_name, ?step, "decided");
        execute::execute(self, state, &step).await?;
        Ok(step)
    }

    /// Steps forever; errors are logged and the next step starts from a fresh observation.
    /// After a step that did something the next follows at once; after one that waits (or
    /// found nothing to do) the proxy waits for a change ([`Proxy::wait_for_change`]).
    pub async fn run(&self) {
        let wakeups = Wakeups::start(
            self.nodes.clone(),
            self.instances.clone(),
            &self.cfg.node_name,
        );
        let mut pause = self.cfg.poll_interval;
        loop {
            match self.step().await {
                Ok((state, step @ (Step::Idle | Step::Wait(_)))) => {
                    pause = self.cfg.poll_interval;
                    self.wait_for_change(&wakeups, state, &step).await;
                }
                Ok(_) => pause = self.cfg.poll_interval,
                Err(e) => {
                    tracing::warn!(node = %self.cfg.node_name, error = %e, "step failed; retrying");
                    tokio::select! {
                        () = sleep(pause) => {}
                        () = wakeups.changed() => {}
                    }
                    pause = (pause * 2).min(ERROR_BACKOFF_CAP);
                }
            }
        }
    }

    /// Returns when the step decided on `state` may have changed: the OSInstance or the Node
    /// changed (a watch says so), or, in an operation, the agent's status changed so that
    /// [`lifecycle::next_step`] now decides otherwise (the agent is read every
    /// `poll_interval`; that costs the API server nothing). At the latest after
    /// [`IDLE_RESYNC`] (idle) or [`BUSY_RESYNC`] (in an operation).
    async fn wait_for_change(&self, wakeups: &Wakeups, state: Option<NodeState>, step: &Step) {
        let waiting = matches!(step, Step::Wait(_));
        let until = Instant::now() + if waiting { BUSY_RESYNC } else { IDLE_RESYNC };
        let Some(mut state) = state.filter(|_| waiting) else {
            tokio::select! {
                () = wakeups.changed() => {}
                () = sleep_until(until) => {}
            }
            return;
        };
        loop {
            tokio::select! {
                () = wakeups.changed() => return,
                () = sleep_until(until) => return,
                () = sleep(self.cfg.poll_interval) => {}
            }
            let agent = self.agent_status().await;
            if agent != state.agent {
                state.agent = agent;
                if lifecycle::next_step(&state) != *step {
                    return;
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
            resource_version: instance.metadata.resource_version,
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

/// Builds the proxy and runs it until the process ends.
pub async fn run(client: Client, cfg: Config) {
    tracing::info!(node = %cfg.node_name, namespace = %cfg.namespace, socket = %cfg.agent_socket.display(), "os-proxy starting");
    Proxy::new(client, cfg).run().await
}
