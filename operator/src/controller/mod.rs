//! The controller shell: caches of OS, OSInstance and Node fed by watches, leader election,
//! and a loop that reconciles every OS resource after a change or when a decision asked to be
//! looked at again. The decisions themselves are `rollout::decide`.

mod gc;
pub mod lease;
pub mod metrics;
mod reconcile;
pub mod slim;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::crd::{Os, OsInstance};
use lease::{LeaderElector, LeaseConfig};
use metrics::{Health, Metrics};
use reconcile::{reconcile_os, Shared};
/// What a start writes into an OSInstance's status (operators only: the admission policy keeps
/// the proxy from changing its operation, target and start).
pub use writes::start_status;
pub use writes::REPORTED_ANNOTATION;

/// How `os-operator controller` runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the OS and OSInstance resources; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Where the leader-election Lease lives (the operator's own namespace).
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Reconcile every OS at least this often, even with no change.
    pub resync: Duration,
    /// Changes arriving within this long are handled by one pass.
    pub debounce: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} for /metrics and /healthz: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lost the leader Lease {0}; exiting so a fresh process waits for it again")]
    LostLease(String),
    #[error("the watch of {0} ended")]
    WatchEnded(&'static str),
}

/// Runs until SIGTERM/SIGINT (Ok) or until leadership is lost (Err: the process must exit so
/// no write of a former leader can race the new one).
pub async fn run(client: Client, config: Config) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    info!(addr = %listener.local_addr().map_or(config.listen, |a| a), "serving /metrics, /healthz and /readyz");
    tokio::spawn(metrics::serve(listener, metrics.clone(), health.clone()));

    let lease_key = format!("{}/{}", config.lease_namespace, config.lease_name);
    let lease = LeaseConfig {
        namespace: config.lease_namespace.clone(),
        name: config.lease_name.clone(),
        identity: config.identity.clone(),
        lease_duration: config.lease_duration,
        renew_every: config.renew_every,
        retry_every: config.retry_every,
    };
    let elector = LeaderElector::new(client.clone(), lease);
    let (mut leader, elector_task) = elector.clone().spawn();
    health.set_ready(true);
    info!(lease = %lease_key, identity = %config.identity, "waiting to lead");
    tokio::select! {
        held = wait_for(&mut leader, true) => if !held { return Err(RunError::LostLease(lease_key)) },
        _ = shutdown_signal() => return Ok(()),
    }
    info!(lease = %lease_key, identity = %config.identity, "leading");
    metrics.set_leader(true);

    let result = tokio::select! {
        r = lead(client, &config, metrics.clone()) => r,
        _ = wait_for(&mut leader, false) => Err(RunError::LostLease(lease_key)),
        _ = shutdown_signal() => {
            info!("shutting down; giving up the lease");
            // The elector loop must not take the lease back after the release.
            elector_task.abort();
            if let Err(e) = elector.release().await {
                warn!(error = %e, "cannot release the lease; the next leader waits for it to expire");
            }
            Ok(())
        }
    };
    metrics.set_leader(false);
    result
}

/// Resolves with `want` once the leadership flag equals it; with the opposite when the
/// elector is gone.
async fn wait_for(leader: &mut watch::Receiver<bool>, want: bool) -> bool {
    loop {
        if *leader.borrow_and_update() == want {
            return want;
        }
        if leader.changed().await.is_err() {
            return !want;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The Node cache: every Node, cut down to what the rollout reads ([`slim::node`]) as the
/// watch delivers it.
pub fn node_cache(
    client: Client,
    changes: mpsc::Sender<()>,
) -> (Store<Node>, impl std::future::Future<Output = RunError>) {
    cache(Api::all(client), "Node", slim::node, changes)
}

/// A cache fed by a watch, each object passed through `slim` before it is stored, and a
/// future that wakes `changes` on every change (it ends only with the watch).
///
/// Lists come in pages of 500 (the watcher's page size): with a `limit`, kube asks for a
/// quorum read rather than `resourceVersion=0`, which the API server's watch cache answers
/// whole, ignoring the limit (10,000 real Nodes in one answer are some 200 MB of JSON).
fn cache<K>(
    api: Api<K>,
    name: &'static str,
    slim: fn(&mut K),
    changes: mpsc::Sender<()>,
) -> (Store<K>, impl std::future::Future<Output = RunError>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().any_semantic();
    let stream = reflector::reflector(writer, watcher(api, config).modify(slim))
        .default_backoff()
        .touched_objects();
    let pump = drive(stream, name, changes);
    (store, pump)
}

async fn drive<S, K>(stream: S, name: &'static str, changes: mpsc::Sender<()>) -> RunError
where
    S: Stream<Item = Result<K, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            // A full channel already holds a wake-up.
            Ok(_) => {
                let _ = changes.try_send(());
            }
            Err(e) => warn!(watch = name, error = %e, "watch error; retrying"),
        }
    }
    RunError::WatchEnded(name)
}

async fn lead(client: Client, config: &Config, metrics: Arc<Metrics>) -> Result<(), RunError> {
    let (tx, mut changes) = mpsc::channel(1);
    let (os_api, osi_api): (Api<Os>, Api<OsInstance>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (oses, os_pump) = cache(os_api, "OS", slim::managed_fields, tx.clone());
    let (instances, osi_pump) = cache(osi_api, "OSInstance", slim::managed_fields, tx.clone());
    let (nodes, node_pump) = node_cache(client.clone(), tx);
    let shared = Shared {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "os-operator".into(),
                instance: Some(config.identity.clone()),
            },
        ),
        identity: config.identity.clone(),
        client,
        nodes,
        instances,
        metrics,
        overlay: Default::default(),
    };
    tokio::select! {
        e = os_pump => Err(e),
        e = osi_pump => Err(e),
        e = node_pump => Err(e),
        r = reconcile_loop(&shared, &oses, &mut changes, config) => r,
    }
}

async fn reconcile_loop(
    shared: &Shared,
    oses: &Store<Os>,
    changes: &mut mpsc::Receiver<()>,
    config: &Config,
) -> Result<(), RunError> {
    for (name, ready) in [
        ("OS", oses.wait_until_ready().await.is_ok()),
        (
            "OSInstance",
            shared.instances.wait_until_ready().await.is_ok(),
        ),
        ("Node", shared.nodes.wait_until_ready().await.is_ok()),
    ] {
        if !ready {
            return Err(RunError::WatchEnded(name));
        }
    }
    info!(
        os = oses.len(),
        nodes = shared.nodes.len(),
        instances = shared.instances.len(),
        "caches synced"
    );
    loop {
        let wake = reconcile_all(shared, oses, config).await;
        let sleep = tokio::time::sleep(wake);
        tokio::select! {
            _ = sleep => {},
            got = changes.recv() => if got.is_none() { return Err(RunError::WatchEnded("changes")) },
        }
        tokio::time::sleep(config.debounce).await;
    }
}

/// One pass over every OS; returns how long to sleep without an event.
async fn reconcile_all(shared: &Shared, oses: &Store<Os>, config: &Config) -> Duration {
    gc::remove_orphaned_instances(shared).await;
    let mut wake = config.resync;
    let all = oses.state();
    for os in &all {
        let key = format!("{}/{}", os.namespace().unwrap_or_default(), os.name_any());
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let result = reconcile_os(shared, os, &all, now).await;
        let seconds = started.elapsed().as_secs_f64();
        shared
            .metrics
            .observe_reconcile(&key, seconds, result.is_ok());
        match result {
            Ok(outcome) => {
                if outcome.conflict {
                    wake = wake.min(Duration::from_millis(200));
                }
                if let Some(at) = outcome.next_check {
                    let until = at.duration_since(now).as_secs_f64().max(0.0);
                    wake = wake.min(Duration::from_secs_f64(until) + Duration::from_millis(10));
                }
            }
            Err(e) => {
                error!(os = %key, error = %e, "reconcile failed; retrying");
                wake = wake.min(Duration::from_secs(2));
            }
        }
    }
    wake
}
