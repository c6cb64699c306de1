//! A fake Kubernetes API server on loopback for tests of kube-rs clients.
//!
//! Real `kube::Client`s talk to it over plain HTTP, so the code under test runs unchanged:
//! GET/LIST/WATCH with selectors, pagination, bookmarks and 410 Expired, optimistic
//! concurrency, status subresources, the four patch types, and pod eviction against
//! PodDisruptionBudgets. See README.md for what is faithful and what is approximated.
//!
//! ```no_run
//! # async fn demo() {
//! let server = fakekube::FakeApiServer::start().await;
//! let client = server.client();
//! // ... run the code under test with `client` ...
//! assert!(server.log().iter().any(|e| e.verb == "create"));
//! # }
//! ```

mod admission;
mod controllers;
mod crd;
mod discovery;
mod eviction;
mod field;
mod graceful;
mod list;
mod openapi;
mod patch;
mod rbac;
mod registry;
mod route;
pub mod sample;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod table;
#[cfg(test)]
mod testing;
mod validate;
mod watch;

pub use controllers::Controller;
pub use rbac::{Authorization, Grant, UserInfo};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use route::Target;
use status::ApiError;
use store::Store;

/// One successful mutation, in the order the server applied them.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// 1, 2, 3, ... in log order.
    pub seq: u64,
    /// The resourceVersion the mutation produced (an eviction shares its deletion's).
    pub resource_version: u64,
    pub at: Instant,
    /// `create`, `update`, `patch` or `delete`; an eviction logs `delete` then `evict`. A
    /// delete that only marks an object with finalizers logs `update`.
    pub verb: &'static str,
    /// The plural resource name, e.g. `nodes`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The object after the change; for `delete` and `evict`, the object before it.
    pub object: serde_json::Value,
}

/// What [`FakeApiServer::project_log`] keeps of a logged object: called with the plural
/// resource name and the whole object.
pub type LogProjection = fn(&str, &serde_json::Value) -> serde_json::Value;

/// HTTP requests served, by verb, including failed and fault-injected ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: u64,
    pub list: u64,
    pub watch: u64,
    pub create: u64,
    pub update: u64,
    pub patch: u64,
    pub delete: u64,
    pub evict: u64,
    /// Requests to unknown paths or with unsupported methods.
    pub other: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get
            + self.list
            + self.watch
            + self.create
            + self.update
            + self.patch
            + self.delete
            + self.evict
            + self.other
    }
}

#[derive(Debug)]
struct Fault {
    verb: String,
    resource: String,
    status: u16,
    remaining: u32,
}

/// State shared by the request handlers and the test's handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion; watches wake on it.
    rv_tx: tokio::sync::watch::Sender<u64>,
    counts: Mutex<RequestCounts>,
    faults: Mutex<Vec<Fault>>,
    auth: Mutex<rbac::Auth>,
}

impl Shared {
    pub(crate) fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panicking handler cannot leave the store half-written: writes are single inserts.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a write, lets the simulated controllers react to it, and wakes the watches.
    pub(crate) fn mutate<T>(
        &self,
        write: impl FnOnce(&mut Store) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut store = self.lock_store();
        let result = write(&mut store);
        controllers::settle(&mut store, Instant::now());
        crd::establish(&mut store);
        let rv = store.resource_version();
        self.rv_tx
            .send_if_modified(|latest| std::mem::replace(latest, rv) != rv);
        result
    }

    fn lock_auth(&self) -> MutexGuard<'_, rbac::Auth> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user of a request's `Authorization` header; `None` for none (the admin).
    fn authenticate(&self, header: Option<&str>) -> Result<Option<UserInfo>, ApiError> {
        self.lock_auth().authenticate(header)
    }

    /// RBAC for a token's request, recorded either way; 403 when no rule allows it.
    fn authorize(&self, user: &UserInfo, verb: &str, target: &Target) -> Result<(), ApiError> {
        let attrs = rbac::Attributes {
            verb: rbac::rbac_verb(verb),
            rt: target.rt,
            subresource: target.subresource.as_deref(),
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref(),
        };
        let granted_by = rbac::grants(&self.lock_store(), user, &attrs);
        let allowed = !granted_by.is_empty();
        self.lock_auth().decisions.push(Authorization {
            user: user.username.clone(),
            verb: attrs.verb.to_string(),
            api_group: target.rt.group.to_string(),
            resource: match attrs.subresource {
                Some(sub) => format!("{}/{sub}", target.rt.plural),
                None => target.rt.plural.to_string(),
            },
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            granted_by,
        });
        if allowed {
            Ok(())
        } else {
            Err(rbac::forbidden(user, &attrs))
        }
    }

    fn count(&self, verb: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let counter = match verb {
            "get" => &mut counts.get,
            "list" => &mut counts.list,
            "watch" => &mut counts.watch,
            "create" => &mut counts.create,
            "update" => &mut counts.update,
            "patch" => &mut counts.patch,
            "delete" => &mut counts.delete,
            "evict" => &mut counts.evict,
            _ => &mut counts.other,
        };
        *counter += 1;
    }

    /// The status of the first armed fault matching the request, consuming one use of it.
    fn take_fault(&self, verb: &str, target: &Target) -> Option<u16> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let plural = target.rt.plural;
        let sub = target
            .subresource
            .as_deref()
            .map(|s| format!("{plural}/{s}"));
        let index = faults.iter().position(|f| {
            f.verb == verb
                && (f.resource == "*" || f.resource == plural || Some(&f.resource) == sub.as_ref())
        })?;
        let fault = &mut faults[index];
        fault.remaining -= 1;
        let status = fault.status;
        if fault.remaining == 0 {
            faults.remove(index);
        }
        Some(status)
    }
}

/// The fake API server. Dropping it stops serving and ends open watches.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Runs the controllers for what waits on time (grace periods, pods starting).
    ticker: JoinHandle<()>,
}

/// How often the simulated controllers look at the clock.
const TICK: Duration = Duration::from_millis(20);

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and serves in a background task, with this project's
    /// CustomResourceDefinitions (deploy/crds.yaml) already applied and established, as on a
    /// cluster where the operator is installed. The log starts empty.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or when no loopback port can be bound.
    pub async fn start() -> FakeApiServer {
        let server = Self::start_without_crds().await;
        server
            .shared
            .mutate(|store| {
                crd::install(store, crd::PROJECT_CRDS)?;
                store.clear_log();
                Ok(())
            })
            .expect("deploy/crds.yaml is accepted by the fake server");
        server
    }

    /// As [`start`](Self::start), with no CustomResourceDefinition: a fresh cluster, where
    /// custom resources are served once their CRDs are applied.
    pub async fn start_without_crds() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the fake API server");
        let addr = listener
            .local_addr()
            .expect("reading the bound loopback address");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(seed)),
            rv_tx: tokio::sync::watch::channel(1).0,
            counts: Mutex::new(RequestCounts::default()),
            faults: Mutex::new(Vec::new()),
            auth: Mutex::new(rbac::Auth::default()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let ticker = tokio::spawn(tick_loop(Arc::clone(&shared)));
        tracing::debug!(%addr, "fakekube serving");
        FakeApiServer {
            shared,
            addr,
            task,
            ticker,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The client configuration for [`url`](Self::url), default namespace `default`, with
    /// kube's default retry of 429/503/504 responses left on as in production.
    pub fn config(&self) -> kube::Config {
        let url = self.url().parse().expect("a loopback URL is a valid URI");
        kube::Config::new(url)
    }

    /// A `kube::Client` built from [`config`](Self::config).
    ///
    /// # Panics
    ///
    /// If kube cannot build a client for a plain-HTTP URL (it can: checked by the tests).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("building a kube client for the fake server")
    }

    /// A kubeconfig file's text that points a separate process (`KUBECONFIG=...`) at this
    /// server, with `namespace` as its default namespace.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        self.kubeconfig_for("{}", namespace)
    }

    /// `user` is the kubeconfig's user entry, as YAML flow.
    fn kubeconfig_for(&self, user: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {user}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// A bearer token that authenticates as `user`. Requests with it are authorized by the
    /// RBAC objects stored in this server (see `rbac.rs`); requests without a token stay the
    /// all-powerful admin.
    pub fn issue_token(&self, user: UserInfo) -> String {
        self.shared.lock_auth().issue(user)
    }

    /// A token for the service account `namespace/name`, as a pod running under it holds.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.issue_token(UserInfo::service_account(namespace, name))
    }

    /// As [`kubeconfig`](Self::kubeconfig), authenticating with `token`.
    pub fn kubeconfig_with_token(&self, namespace: &str, token: &str) -> String {
        self.kubeconfig_for(&format!("{{token: {token}}}"), namespace)
    }

    /// As [`config`](Self::config), authenticating with `token`.
    pub fn config_with_token(&self, token: &str) -> kube::Config {
        let mut config = self.config();
        let value = format!("Bearer {token}")
            .parse()
            .expect("a token issued by this server is a valid header value");
        config.headers.push((hyper::header::AUTHORIZATION, value));
        config
    }

    /// Every authorization decision made for a token's request, in order.
    pub fn authorizations(&self) -> Vec<Authorization> {
        self.shared.lock_auth().decisions.clone()
    }

    /// Every successful mutation, in order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.lock_store().log().to_vec()
    }

    /// From now on the log keeps `project(resource, object)` instead of each whole object:
    /// a benchmark with thousands of big objects replays only the fields it checks, without
    /// holding a copy of every version of every object.
    pub fn project_log(&self, project: LogProjection) {
        self.shared.lock_store().log_projection = Some(project);
    }

    /// Requests served so far, by verb.
    pub fn request_counts(&self) -> RequestCounts {
        *self.shared.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `times` requests with this verb (`get`, `list`, `watch`, `create`,
    /// `update`, `patch`, `delete`, `evict`) on this resource fail with `status`. `resource` is
    /// a plural (`pods`, matching its subresources too), a subresource (`pods/status`) or `*`.
    pub fn fail_next(&self, verb: &str, resource: &str, status: u16, times: u32) {
        if times == 0 {
            return;
        }
        let mut faults = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.push(Fault {
            verb: verb.to_string(),
            resource: resource.to_string(),
            status,
            remaining: times,
        });
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().resource_version()
    }

    /// Forgets the watch history, like an etcd compaction: watches and continue tokens from
    /// before now get 410 Expired.
    pub fn compact(&self) {
        self.shared.lock_store().compact();
    }

    /// Stops a simulated controller (the kubelet, the disruption controller, ...) until
    /// [`resume`](Self::resume): what it would do waits.
    pub fn pause(&self, controller: Controller) {
        self.shared.lock_store().sim.paused.insert(controller);
    }

    pub fn resume(&self, controller: Controller) {
        self.shared
            .mutate(|s| {
                s.sim.paused.remove(&controller);
                Ok(())
            })
            .ok();
    }

    /// The pod's containers ignore the stop signal: once deleted, it stays terminating until
    /// its grace period ends or [`release_termination`](Self::release_termination).
    pub fn hold_termination(&self, namespace: &str, pod: &str) {
        let key = (namespace.to_string(), pod.to_string());
        self.shared.lock_store().sim.held.insert(key);
    }

    /// The held pod's containers stop now: a terminating pod is removed.
    pub fn release_termination(&self, namespace: &str, pod: &str) {
        let key = (namespace.to_string(), pod.to_string());
        self.shared
            .mutate(|s| {
                s.sim.held.remove(&key);
                Ok(())
            })
            .ok();
    }

    /// How long a deleted pod's containers take to stop (default: at once); its grace period
    /// bounds it.
    pub fn set_pod_shutdown(&self, after: Duration) {
        self.shared.lock_store().sim.pod_shutdown = after;
    }

    /// How long a pod the ReplicaSet controller created takes from being scheduled to Ready
    /// (default 1 s).
    pub fn set_pod_startup(&self, after: Duration) {
        self.shared.lock_store().sim.pod_startup = after;
    }

    /// Stops serving; the same as dropping the server.
    pub fn shutdown(self) {}
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection and so
        // ends every open watch.
        self.task.abort();
        self.ticker.abort();
    }
}

async fn tick_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(TICK).await;
        // `mutate` runs the controllers; the closure itself changes nothing.
        let _ = shared.mutate(|_| Ok(()));
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    connections.spawn(serve_connection(stream, shared));
                }
                Err(err) => tracing::warn!(%err, "fakekube accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| server::handle(Arc::clone(&shared), req));
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "fakekube connection ended");
    }
}
