//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only the holder reconciles.
//!
//! The rules are client-go's `leaderelection` package:
//! - The Lease is free when it does not exist, names no holder, or has not changed for its
//!   `leaseDurationSeconds` *as observed locally*. Expiry is measured from the moment this
//!   process last saw the record change, never from `renewTime`, so clock skew between
//!   replicas cannot make a live lease look expired. A fresh replica therefore waits a full
//!   lease duration before it takes over a lease that was abandoned long ago.
//! - Acquire and renew are a GET followed by a PUT carrying the observed `resourceVersion` (or a
//!   POST when the Lease is absent). A 409 means another replica wrote first: we are not the
//!   leader, which is not an error.
//! - A leader that cannot renew within `lease_duration` of its last successful renewal reports
//!   the leadership lost. The deadline counts from the moment the successful PUT was *sent*:
//!   a peer cannot have observed that write earlier, so it cannot take over earlier either.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Where the Lease lives, who we are and how fast we act.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    /// The Lease's name, e.g. `os-operator-leader`.
    pub name: String,
    /// This replica's name in `holderIdentity`; unique per process (pod name + random suffix).
    pub identity: String,
    /// How long a lease stays valid without renewal (client-go's default: 15 s).
    pub lease_duration: Duration,
    /// How often the leader renews (well below `lease_duration`, e.g. 5 s).
    pub renew_every: Duration,
    /// How often a candidate retries, and a leader retries a failed renewal (e.g. 2 s).
    pub retry_every: Duration,
}

/// A failed call to the API server, with the Lease it was about.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot read Lease {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot create Lease {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot update Lease {namespace}/{name}: {source}")]
    Update {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    /// An update without a resourceVersion would overwrite a concurrent winner.
    #[error("Lease {namespace}/{name} came back without a resourceVersion; refusing to overwrite it blindly")]
    NoResourceVersion { namespace: String, name: String },
}

/// What one acquire-or-renew attempt does with the record it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create one naming us.
    Create,
    /// We hold it: renew, keeping `acquireTime` and `leaseTransitions`.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    TakeOver { previous_holder: Option<String> },
    /// Another replica holds a live lease; it expires after `remaining` more without change.
    Wait { holder: String, remaining: Duration },
}

/// Decides from the record just read, how long it has been unchanged as seen from here, and
/// our own lease duration (used when the record does not state one).
pub fn lease_decision(
    record: Option<&LeaseSpec>,
    me: &str,
    observed_unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    let Some(record) = record else {
        return Decision::Create;
    };
    let holder = record.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver {
            previous_holder: None,
        };
    }
    // The holder's own stated duration is the one it promised to renew within.
    let valid_for = match record.lease_duration_seconds {
        Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
        _ => lease_duration,
    };
    if observed_unchanged_for >= valid_for {
        Decision::TakeOver {
            previous_holder: Some(holder.to_owned()),
        }
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
            remaining: valid_for - observed_unchanged_for,
        }
    }
}

/// The record to write for `decision`, or `None` when there is nothing to write. Fields we do
/// not manage (`strategy`, `preferredHolder`) are kept as they were.
pub fn lease_record(
    decision: &Decision,
    old: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Option<LeaseSpec> {
    let mut spec = old.cloned().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    match decision {
        Decision::Wait { .. } => return None,
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::Renew => {
            spec.acquire_time = spec.acquire_time.or(Some(MicroTime(now)));
            spec.lease_transitions = Some(transitions);
        }
        Decision::TakeOver { .. } => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(transitions.saturating_add(1));
        }
    }
    spec.holder_identity = Some(me.to_owned());
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_seconds(lease_duration));
    Some(spec)
}

/// The record that hands the lease back: no holder, and a one-second duration so that a peer
/// that saw our last renewal does not wait out the full lease either (client-go does the same).
pub fn released_record(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(1),
        ..old.clone()
    }
}

/// Whole seconds, rounded up so the lease never claims less than configured; at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The last record we read or wrote and when it last changed, as seen by this process.
struct Observation {
    record: Option<LeaseSpec>,
    changed_at: Instant,
}

/// Acquires, renews and releases one Lease for one identity. Cheap to clone; clones share the
/// observation, so one clone can `spawn` the loop and another `release` at shutdown.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
    observed: Arc<Mutex<Option<Observation>>>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config: Arc::new(config),
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// One attempt to acquire or renew; returns whether we hold the lease now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let lease = self.get().await?;
        let now = Instant::now();
        let record = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let unchanged_for = self.observe(record.as_ref(), now);
        let decision = lease_decision(
            record.as_ref(),
            &self.config.identity,
            unchanged_for,
            self.config.lease_duration,
        );
        let Some(spec) = lease_record(
            &decision,
            record.as_ref(),
            &self.config.identity,
            Timestamp::now(),
            self.config.lease_duration,
        ) else {
            debug!(lease = %self.config.name, ?decision, "lease held by another replica");
            return Ok(false);
        };
        let written = match lease {
            None => self.create(spec).await?,
            Some(old) => self.replace(old, spec).await?,
        };
        let Some(written) = written else {
            debug!(lease = %self.config.name, "another replica wrote the lease first");
            return Ok(false);
        };
        if let Decision::TakeOver { previous_holder } = &decision {
            info!(lease = %self.config.name, identity = %self.config.identity,
                previous_holder = previous_holder.as_deref().unwrap_or(""), "took over the lease");
        }
        self.record_write(written.spec, now);
        Ok(true)
    }

    /// Loops until every receiver is gone: acquires (retrying every `retry_every` while
    /// another holder's lease is live), then renews every `renew_every`. Sends `true` once the
    /// lease is held and `false` once it may no longer be; the caller must then stop acting.
    /// When every receiver is dropped the loop releases the lease and ends.
    pub fn spawn(self) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Some(renewed_at) = self.acquire(&tx).await {
                tx.send_replace(true);
                info!(lease = %self.config.name, identity = %self.config.identity, "leading");
                self.keep_renewing(&tx, renewed_at).await;
                tx.send_replace(false);
                if tx.is_closed() {
                    break;
                }
                warn!(lease = %self.config.name, identity = %self.config.identity,
                    "lost the lease: not renewed within the lease duration");
            }
            if let Err(e) = self.release().await {
                warn!(error = %e, "cannot release the lease; a peer waits for it to expire");
            }
        });
        (rx, task)
    }

    /// Gives up the lease (clears `holderIdentity`) so a peer takes over at once. Does nothing
    /// when we do not hold it. Stop the `spawn`ed loop first, or it may acquire it again.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let lease = self.get().await?;
        let Some(lease) = lease else { return Ok(()) };
        let old = lease.spec.clone().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let spec = released_record(&old, Timestamp::now());
        let now = Instant::now();
        match self.replace(lease, spec).await? {
            Some(written) => {
                info!(lease = %self.config.name, identity = %self.config.identity, "released the lease");
                self.record_write(written.spec, now);
            }
            None => {
                debug!(lease = %self.config.name, "lease changed before release; not ours to release")
            }
        }
        Ok(())
    }

    /// Retries until we hold the lease; returns when the successful attempt started, or `None`
    /// when nobody listens any more.
    async fn acquire(&self, tx: &watch::Sender<bool>) -> Option<Instant> {
        loop {
            let started = Instant::now();
            // A hung call must not stall the loop; a write that lands after the timeout only
            // means we hold the lease without knowing, and the next attempt renews it.
            let attempt =
                tokio::time::timeout(self.config.lease_duration, self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(true)) => return Some(started),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot acquire the lease; retrying"),
                Err(_) => {
                    warn!(lease = %self.config.name, "acquiring the lease timed out; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_every) => {}
                _ = tx.closed() => return None,
            }
        }
    }

    /// Renews every `renew_every` and returns once a renewal did not succeed in time or a peer
    /// holds the lease, or when nobody listens any more.
    async fn keep_renewing(&self, tx: &watch::Sender<bool>, mut renewed_at: Instant) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.renew_every) => {}
                _ = tx.closed() => return,
            }
            let deadline = renewed_at + self.config.lease_duration;
            match self.renew_before(deadline).await {
                Some(started) => renewed_at = started,
                None => return,
            }
        }
    }

    /// Retries one renewal until `deadline`; returns when the successful attempt started.
    async fn renew_before(&self, deadline: Instant) -> Option<Instant> {
        loop {
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return Some(started),
                Ok(Ok(false)) => return None,
                Ok(Err(e)) => warn!(error = %e, "cannot renew the lease; retrying"),
                Err(_) => return None,
            }
            if Instant::now() + self.config.retry_every >= deadline {
                return None;
            }
            tokio::time::sleep(self.config.retry_every).await;
        }
    }

    /// Notes the record just read; returns how long it has been unchanged as seen from here.
    fn observe(&self, record: Option<&LeaseSpec>, now: Instant) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.as_ref() {
            Some(o) if o.record.as_ref() == record => now.saturating_duration_since(o.changed_at),
            _ => {
                *observed = Some(Observation {
                    record: record.cloned(),
                    changed_at: now,
                });
                Duration::ZERO
            }
        }
    }

    fn record_write(&self, record: Option<LeaseSpec>, at: Instant) {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        *observed = Some(Observation {
            record: Some(record.unwrap_or_default()),
            changed_at: at,
        });
    }

    async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| LeaseError::Get {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            })
    }

    /// POSTs a new Lease; `None` when another replica created it first.
    async fn create(&self, spec: LeaseSpec) -> Result<Option<Lease>, LeaseError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(l) => Ok(Some(l)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(source) => Err(LeaseError::Create {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            }),
        }
    }

    /// PUTs `spec` over `old`, conditional on `old`'s resourceVersion; `None` on a conflict.
    async fn replace(&self, old: Lease, spec: LeaseSpec) -> Result<Option<Lease>, LeaseError> {
        if old.metadata.resource_version.is_none() {
            return Err(LeaseError::NoResourceVersion {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
            });
        }
        let lease = Lease {
            metadata: old.metadata,
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => Ok(Some(l)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(source) => Err(LeaseError::Update {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source,
            }),
        }
    }
}

/// 409: a stale resourceVersion on update, or AlreadyExists on create.
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.is_conflict() || s.is_already_exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: secs,
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(
            lease_decision(None, "me", Duration::ZERO, D),
            Decision::Create
        );
        assert_eq!(lease_decision(None, "me", D * 10, D), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_stale() {
        for unchanged in [Duration::ZERO, D, D * 10] {
            let r = held_by("me", Some(15));
            assert_eq!(
                lease_decision(Some(&r), "me", unchanged, D),
                Decision::Renew
            );
        }
    }

    #[test]
    fn lease_without_holder_is_taken_at_once() {
        let none = LeaseSpec::default();
        let empty = held_by("", Some(15));
        for r in [&none, &empty] {
            assert_eq!(
                lease_decision(Some(r), "me", Duration::ZERO, D),
                Decision::TakeOver {
                    previous_holder: None
                }
            );
        }
    }

    #[test]
    fn live_lease_of_another_holder_is_waited_for() {
        let r = held_by("peer", Some(15));
        assert_eq!(
            lease_decision(Some(&r), "me", Duration::from_secs(4), D),
            Decision::Wait {
                holder: "peer".into(),
                remaining: Duration::from_secs(11)
            }
        );
        assert_eq!(
            lease_decision(Some(&r), "me", Duration::from_millis(14_999), D),
            Decision::Wait {
                holder: "peer".into(),
                remaining: Duration::from_millis(1)
            }
        );
    }

    #[test]
    fn lease_unchanged_for_its_duration_is_taken_over() {
        let r = held_by("peer", Some(15));
        for unchanged in [D, D + Duration::from_millis(1), D * 100] {
            assert_eq!(
                lease_decision(Some(&r), "me", unchanged, D),
                Decision::TakeOver {
                    previous_holder: Some("peer".into())
                }
            );
        }
    }

    #[test]
    fn holder_stated_duration_wins_over_ours() {
        let long = held_by("peer", Some(60));
        assert!(matches!(
            lease_decision(Some(&long), "me", Duration::from_secs(30), D),
            Decision::Wait { remaining, .. } if remaining == Duration::from_secs(30)
        ));
        let short = held_by("peer", Some(5));
        assert!(matches!(
            lease_decision(Some(&short), "me", Duration::from_secs(5), D),
            Decision::TakeOver { .. }
        ));
        // Missing or nonsensical durations fall back to ours.
        for secs in [None, Some(0), Some(-3)] {
            let r = held_by("peer", secs);
            assert!(matches!(
                lease_decision(Some(&r), "me", Duration::from_secs(14), D),
                Decision::Wait { remaining, .. } if remaining == Duration::from_secs(1)
            ));
            assert!(matches!(
                lease_decision(Some(&r), "me", D, D),
                Decision::TakeOver { .. }
            ));
        }
    }

    #[test]
    fn records_written_per_decision() {
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T00:00:05Z".parse().unwrap();
        let created = lease_record(&Decision::Create, None, "me", t0, D).unwrap();
        assert_eq!(
            created,
            LeaseSpec {
                holder_identity: Some("me".into()),
                acquire_time: Some(MicroTime(t0)),
                renew_time: Some(MicroTime(t0)),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }
        );

        let renewed = lease_record(&Decision::Renew, Some(&created), "me", t1, D).unwrap();
        assert_eq!(renewed.acquire_time, Some(MicroTime(t0)));
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));

        let peer = LeaseSpec {
            strategy: Some("OldestEmulationVersion".into()),
            ..held_by("peer", Some(15))
        };
        let taken = lease_record(
            &Decision::TakeOver {
                previous_holder: Some("peer".into()),
            },
            Some(&peer),
            "me",
            t1,
            D,
        )
        .unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.strategy.as_deref(), Some("OldestEmulationVersion"));

        let wait = Decision::Wait {
            holder: "peer".into(),
            remaining: D,
        };
        assert_eq!(lease_record(&wait, Some(&peer), "me", t1, D), None);
    }

    #[test]
    fn released_record_names_nobody_and_keeps_the_count() {
        let t: Timestamp = "2025-01-01T00:00:09Z".parse().unwrap();
        let released = released_record(&held_by("me", Some(15)), t);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(released.renew_time, Some(MicroTime(t)));
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(duration_seconds(Duration::from_secs(15)), 15);
        assert_eq!(duration_seconds(Duration::from_millis(15_001)), 16);
        assert_eq!(duration_seconds(Duration::ZERO), 1);
        assert_eq!(duration_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    mod api {
        //! The I/O half against an in-memory Lease endpoint with the API server's
        //! optimistic-concurrency rules, on tokio's paused clock.

        use super::super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use std::convert::Infallible;

        const BASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

        #[derive(Default)]
        struct Server {
            lease: Option<Lease>,
            version: u64,
            /// Every request fails with 500 while set.
            down: bool,
            /// The next PUT fails with 409, as if a peer wrote in between.
            conflict_next_put: bool,
        }

        type Shared = Arc<Mutex<Server>>;

        fn status(code: StatusCode, reason: &str) -> Response<Body> {
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": code.as_u16(), "reason": reason, "message": reason,
            });
            Response::builder()
                .status(code)
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap()
        }

        fn ok(code: StatusCode, lease: &Lease) -> Response<Body> {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(lease).unwrap()))
                .unwrap()
        }

        async fn handle(server: Shared, req: Request<Body>) -> Response<Body> {
            let (parts, body) = req.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let mut s = server.lock().unwrap();
            if s.down {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            }
            let path = parts.uri.path();
            let named = path == format!("{BASE}/leader");
            match (&parts.method, named) {
                (&Method::GET, true) => match &s.lease {
                    Some(l) => ok(StatusCode::OK, l),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                (&Method::POST, false) if path == BASE => {
                    if s.lease.is_some() {
                        return status(StatusCode::CONFLICT, "AlreadyExists");
                    }
                    let mut lease: Lease = serde_json::from_slice(&body).unwrap();
                    s.version += 1;
                    lease.metadata.resource_version = Some(s.version.to_string());
                    s.lease = Some(lease.clone());
                    ok(StatusCode::CREATED, &lease)
                }
                (&Method::PUT, true) => {
                    let mut lease: Lease = serde_json::from_slice(&body).unwrap();
                    let current = s
                        .lease
                        .as_ref()
                        .and_then(|l| l.metadata.resource_version.clone());
                    if std::mem::take(&mut s.conflict_next_put)
                        || lease.metadata.resource_version != current
                    {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                    s.version += 1;
                    lease.metadata.resource_version = Some(s.version.to_string());
                    s.lease = Some(lease.clone());
                    ok(StatusCode::OK, &lease)
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            }
        }

        fn client(server: &Shared) -> Client {
            let server = server.clone();
            let svc = tower::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(server, req).await) }
            });
            Client::new(svc, "ns")
        }

        fn elector(server: &Shared, identity: &str) -> LeaderElector {
            LeaderElector::new(
                client(server),
                LeaseConfig {
                    namespace: "ns".into(),
                    name: "leader".into(),
                    identity: identity.into(),
                    lease_duration: Duration::from_secs(15),
                    renew_every: Duration::from_secs(5),
                    retry_every: Duration::from_secs(2),
                },
            )
        }

        fn spec(server: &Shared) -> LeaseSpec {
            let s = server.lock().unwrap();
            s.lease.as_ref().unwrap().spec.clone().unwrap()
        }

        fn holder(server: &Shared) -> Option<String> {
            spec(server).holder_identity
        }

        #[tokio::test(start_paused = true)]
        async fn first_candidate_creates_then_renews() {
            let server = Shared::default();
            let a = elector(&server, "a");
            assert!(a.try_acquire_or_renew().await.unwrap());
            let first = spec(&server);
            assert_eq!(first.holder_identity.as_deref(), Some("a"));
            assert_eq!(first.lease_transitions, Some(0));
            assert_eq!(first.lease_duration_seconds, Some(15));

            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            let renewed = spec(&server);
            assert_eq!(renewed.acquire_time, first.acquire_time);
            assert_eq!(renewed.lease_transitions, Some(0));
        }

        #[tokio::test(start_paused = true)]
        async fn peer_waits_a_full_lease_duration_after_the_last_change_it_saw() {
            let server = Shared::default();
            let (a, b) = (elector(&server, "a"), elector(&server, "b"));
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_secs(10)).await;
            // a renews: b's clock restarts at the change it sees next.
            assert!(a.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(!b.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_secs(14)).await;
            assert!(!b.try_acquire_or_renew().await.unwrap());
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(b.try_acquire_or_renew().await.unwrap());
            assert_eq!(holder(&server).as_deref(), Some("b"));
            assert_eq!(spec(&server).lease_transitions, Some(1));
            // The old holder now sees a live lease of b's.
            assert!(!a.try_acquire_or_renew().await.unwrap());
        }

        #[tokio::test(start_paused = true)]
        async fn a_lost_write_race_is_not_an_error() {
            let server = Shared::default();
            let (a, b) = (elector(&server, "a"), elector(&server, "b"));
            assert!(a.try_acquire_or_renew().await.unwrap());
            server.lock().unwrap().conflict_next_put = true;
            assert!(!a.try_acquire_or_renew().await.unwrap());
            assert!(a.try_acquire_or_renew().await.unwrap());

            // Creating a Lease that a peer created first.
            assert!(b.create(LeaseSpec::default()).await.unwrap().is_none());
        }

        #[tokio::test(start_paused = true)]
        async fn server_errors_name_the_lease() {
            let server = Shared::default();
            server.lock().unwrap().down = true;
            let err = elector(&server, "a")
                .try_acquire_or_renew()
                .await
                .unwrap_err();
            assert!(
                matches!(&err, LeaseError::Get { namespace, name, .. } if namespace == "ns" && name == "leader")
            );
            assert!(
                err.to_string().starts_with("cannot read Lease ns/leader: "),
                "{err}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn release_hands_over_at_once() {
            let server = Shared::default();
            let (a, b) = (elector(&server, "a"), elector(&server, "b"));
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
            // Releasing someone else's lease does nothing.
            b.release().await.unwrap();
            assert_eq!(holder(&server).as_deref(), Some("a"));

            a.release().await.unwrap();
            assert_eq!(holder(&server), None);
            assert!(b.try_acquire_or_renew().await.unwrap());
            assert_eq!(holder(&server).as_deref(), Some("b"));
            assert_eq!(spec(&server).lease_transitions, Some(1));
        }

        #[tokio::test(start_paused = true)]
        async fn loop_reports_loss_when_renewal_fails_for_a_lease_duration() {
            let server = Shared::default();
            let (mut leader, task) = elector(&server, "a").spawn();
            leader.wait_for(|held| *held).await.unwrap();
            let led_at = Instant::now();

            // Renewals go on while the server answers.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(*leader.borrow_and_update());

            server.lock().unwrap().down = true;
            let down_at = Instant::now();
            leader.wait_for(|held| !*held).await.unwrap();
            // Lost no later than a lease duration after the last renewal (at most renew_every
            // before the outage).
            let lost_after = Instant::now() - down_at;
            assert!(lost_after <= Duration::from_secs(15), "{lost_after:?}");
            assert!(lost_after >= Duration::from_secs(8), "{lost_after:?}");
            assert!(led_at < down_at);

            // Once the server is back, the lease (still naming us) is taken up again.
            server.lock().unwrap().down = false;
            leader.wait_for(|held| *held).await.unwrap();
            assert_eq!(holder(&server).as_deref(), Some("a"));
            drop(leader);
            task.await.unwrap();
            // Nobody listening: the loop gave the lease back on its way out.
            assert_eq!(holder(&server), None);
        }

        #[tokio::test(start_paused = true)]
        async fn candidate_loop_takes_over_an_abandoned_lease() {
            let server = Shared::default();
            let a = elector(&server, "a");
            assert!(a.try_acquire_or_renew().await.unwrap());
            let (mut leader, task) = elector(&server, "b").spawn();
            let start = Instant::now();
            leader.wait_for(|held| *held).await.unwrap();
            let waited = Instant::now() - start;
            assert!(waited >= Duration::from_secs(15), "{waited:?}");
            assert!(waited <= Duration::from_secs(17), "{waited:?}");
            assert_eq!(holder(&server).as_deref(), Some("b"));
            task.abort();
        }
    }
}
