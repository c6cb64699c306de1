//! The cluster around the API server, as far as tests of drains and rollouts need it: the
//! kubelet (ends pods' grace periods, starts new pods), a scheduler, the ReplicaSet, disruption,
//! namespace and garbage-collector controllers. They run after every write (as if infinitely
//! fast) and on a timer for what waits on time; each can be paused by a test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::eviction;
use crate::graceful::NAMESPACE_FINALIZER;
use crate::registry::{self, ResourceType};
use crate::store::{Part, Store};

/// A simulated part of the cluster that a test can pause ([`crate::FakeApiServer::pause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// Ends pods' grace periods and starts the pods the ReplicaSet controller creates.
    Kubelet,
    /// Binds new pods to a Ready, schedulable node.
    Scheduler,
    ReplicaSet,
    /// Keeps PodDisruptionBudget status, which evictions are checked against.
    Disruption,
    /// Empties a terminating namespace, then removes it.
    Namespace,
    /// Deletes objects whose owners (by uid) are gone.
    GarbageCollector,
}

/// Settings and timers of the simulated controllers.
#[derive(Debug)]
pub(crate) struct Sim {
    /// How long a pod's containers take to stop after its deletion (its grace period bounds it).
    pub pod_shutdown: Duration,
    /// How long a scheduled pod takes to become Ready.
    pub pod_startup: Duration,
    pub paused: HashSet<Controller>,
    /// Pods `(namespace, name)` whose containers ignore the stop signal: gone only when their
    /// grace period ends or the test lets them go.
    pub held: HashSet<(String, String)>,
    /// Terminating pods by uid: when the deletion was asked for, when the grace period ends.
    terminating: HashMap<String, (Instant, Instant)>,
    /// Pods by uid that the kubelet starts: since when they are scheduled (None: not yet).
    starting: HashMap<String, Option<Instant>>,
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            pod_shutdown: Duration::ZERO,
            pod_startup: Duration::from_secs(1),
            paused: HashSet::new(),
            held: HashSet::new(),
            terminating: HashMap::new(),
            starting: HashMap::new(),
        }
    }
}

impl Sim {
    pub fn start_termination(&mut self, uid: &str, now: Instant, grace: i64) {
        let grace = Duration::from_secs(grace.max(0) as u64);
        self.terminating.insert(uid.to_string(), (now, now + grace));
    }

    pub fn shorten_grace(&mut self, uid: &str, by_seconds: i64) {
        if let Some((_, end)) = self.terminating.get_mut(uid) {
            *end = end
                .checked_sub(Duration::from_secs(by_seconds.max(0) as u64))
                .unwrap_or(*end);
        }
    }

    pub fn forget(&mut self, uid: &str) {
        self.terminating.remove(uid);
        self.starting.remove(uid);
    }

    fn running(&self, c: Controller) -> bool {
        !self.paused.contains(&c)
    }
}

fn rt(group: &str, version: &str, plural: &str) -> &'static ResourceType {
    registry::find(group, version, plural).expect("a built-in resource type")
}

fn key_of(obj: &Value) -> (String, String, String) {
    let m = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&m["namespace"]), s(&m["name"]), s(&m["uid"]))
}

fn terminating(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)?["uid"]
        .as_str()
}

/// Runs every controller that is not paused, once.
pub(crate) fn settle(store: &mut Store, now: Instant) {
    let running = |s: &Store, c| s.sim.running(c);
    if running(store, Controller::GarbageCollector) && store.gc_due {
        store.gc_due = false;
        collect_garbage(store);
    }
    if running(store, Controller::Namespace) {
        finalize_namespaces(store);
    }
    if running(store, Controller::ReplicaSet) {
        replicate(store);
    }
    if running(store, Controller::Scheduler) {
        schedule(store, now);
    }
    if running(store, Controller::Kubelet) {
        kubelet(store, now);
    }
    if running(store, Controller::Disruption) {
        disruption(store);
    }
}

/// Background deletion of dependents: an object all of whose owners are absent (an owner
/// reference to a uid this server issued, whose object is gone or was replaced by one with
/// another uid) is deleted. Owners this server never held are left alone (see README).
fn collect_garbage(store: &mut Store) {
    let mut orphans = Vec::new();
    for rt in store.types() {
        for (_, obj) in store.list(rt, None) {
            let Some(owners) = obj["metadata"]["ownerReferences"].as_array() else {
                continue;
            };
            let absent = |o: &Value| owner_absent(store, rt, obj, o);
            if !owners.is_empty() && owners.iter().all(absent) && !terminating(obj) {
                let (ns, name, uid) = key_of(obj);
                orphans.push((rt, ns, name, uid));
            }
        }
    }
    for (rt, ns, name, uid) in orphans {
        let options = json!({"preconditions": {"uid": uid}, "propagationPolicy": "Background"});
        if let Err(e) = store.delete(rt, &ns, &name, &options) {
            tracing::debug!(%name, error = %e.message, "garbage collector");
        }
    }
}

fn owner_absent(store: &Store, dependent_rt: &ResourceType, dependent: &Value, o: &Value) -> bool {
    let uid = o["uid"].as_str().unwrap_or_default();
    if !store.issued(uid) {
        return false;
    }
    let api_version = o["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = o["kind"].as_str().unwrap_or_default();
    let Some(owner_rt) = registry::RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
    else {
        return false;
    };
    // A namespaced owner lives in the dependent's namespace; a cluster-scoped one nowhere.
    let ns = if owner_rt.namespaced && dependent_rt.namespaced {
        dependent["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    } else {
        ""
    };
    let name = o["name"].as_str().unwrap_or_default();
    store
        .get(owner_rt, ns, name)
        .is_none_or(|owner| owner["metadata"]["uid"] != uid)
}

/// The namespace controller: deletes everything in a terminating namespace (pods with their
/// grace period), and once nothing is left removes its `kubernetes` finalizer.
fn finalize_namespaces(store: &mut Store) {
    let namespaces = rt("", "v1", "namespaces");
    let doomed: Vec<String> = store
        .list(namespaces, None)
        .filter(|(_, n)| terminating(n))
        .map(|((_, name), _)| name.clone())
        .collect();
    for ns in doomed {
        let mut left = 0;
        for rt in store.types().into_iter().filter(|r| r.namespaced) {
            let content: Vec<(String, bool)> = store
                .list(rt, Some(&ns))
                .map(|((_, name), obj)| (name.clone(), terminating(obj)))
                .collect();
            left += content.len();
            for (name, _) in content.into_iter().filter(|(_, t)| !t) {
                let _ = store.delete(rt, &ns, &name, &json!({}));
            }
        }
        if left == 0 {
            let _ = store.update(namespaces, "", &ns, Part::Main, "update", |n| {
                let mut n = n.clone();
                if let Some(f) = n["spec"]["finalizers"].as_array_mut() {
                    f.retain(|f| f != NAMESPACE_FINALIZER);
                }
                Ok(n)
            });
        }
    }
}

/// The ReplicaSet controller, creating only: active pods (not terminating, not finished)
/// fewer than `spec.replicas` get replacements from the template, Pending and unscheduled.
fn replicate(store: &mut Store) {
    let (sets, pods) = (rt("apps", "v1", "replicasets"), rt("", "v1", "pods"));
    let all: Vec<Value> = store
        .list(sets, None)
        .map(|(_, s)| s.clone())
        .filter(|s| !terminating(s))
        .collect();
    for set in all {
        let (ns, name, uid) = key_of(&set);
        let owned: Vec<Value> = store
            .list(pods, Some(&ns))
            .map(|(_, p)| p.clone())
            .filter(|p| controller_uid(p) == Some(uid.as_str()))
            .collect();
        let active = owned
            .iter()
            .filter(|p| !terminating(p))
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count() as i64;
        let wanted = set["spec"]["replicas"].as_i64().unwrap_or(1);
        for _ in active..wanted {
            let template = &set["spec"]["template"];
            let pod = json!({
                "metadata": {
                    "generateName": format!("{name}-"),
                    "labels": template["metadata"]["labels"],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
            });
            let created = store.create(pods, &ns, pod).and_then(|p| {
                let pod_name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                store.update(pods, &ns, &pod_name, Part::Status, "update", |p| {
                    let mut p = p.clone();
                    p["status"] = json!({"phase": "Pending"});
                    Ok(p)
                })
            });
            match created {
                Ok(p) => {
                    let (_, _, pod_uid) = key_of(&p);
                    store.sim.starting.insert(pod_uid, None);
                }
                Err(e) => tracing::debug!(%name, error = %e.message, "replicaset controller"),
            }
        }
        let ready = owned
            .iter()
            .filter(|p| !terminating(p) && p["status"]["phase"] == "Running")
            .filter(|p| eviction::is_ready(p))
            .count();
        let status = json!({"replicas": active.max(wanted), "readyReplicas": ready,
            "observedGeneration": set["metadata"]["generation"]});
        let _ = store.update(sets, &ns, &name, Part::Status, "update", |s| {
            let mut s = s.clone();
            s["status"] = status;
            Ok(s)
        });
    }
}

/// Binds the pods the kubelet is to start to the Ready, schedulable node with the fewest
/// pods (then by name).
fn schedule(store: &mut Store, now: Instant) {
    let (nodes, pods) = (rt("", "v1", "nodes"), rt("", "v1", "pods"));
    let unbound: Vec<(String, String, String)> = store
        .list(pods, None)
        .map(|(_, p)| p)
        .filter(|p| p["spec"]["nodeName"].as_str().unwrap_or("").is_empty())
        .map(key_of)
        .filter(|(_, _, uid)| store.sim.starting.get(uid) == Some(&None))
        .collect();
    for (ns, name, uid) in unbound {
        let mut load: BTreeMap<String, usize> = store
            .list(nodes, None)
            .map(|(_, n)| n)
            .filter(|n| n["spec"]["unschedulable"] != true)
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .map(|n| (n["metadata"]["name"].as_str().unwrap_or("").to_string(), 0))
            .collect();
        for (_, p) in store.list(pods, None) {
            if let Some(count) = p["spec"]["nodeName"].as_str().and_then(|n| load.get_mut(n)) {
                *count += usize::from(!terminating(p));
            }
        }
        let Some(node) = load.iter().min_by_key(|(n, c)| (**c, (*n).clone())) else {
            return;
        };
        let node = node.0.clone();
        let bound = store.update(pods, &ns, &name, Part::Main, "update", |p| {
            let mut p = p.clone();
            p["spec"]["nodeName"] = json!(node);
            Ok(p)
        });
        if bound.is_ok() {
            store.sim.starting.insert(uid, Some(now));
        }
    }
}

/// The kubelets of all nodes: a terminating pod is removed once its containers stopped
/// (`pod_shutdown` after the deletion, unless held) or its grace period ended; a pod the
/// ReplicaSet controller created runs and is Ready `pod_startup` after it was scheduled.
fn kubelet(store: &mut Store, now: Instant) {
    let pods = rt("", "v1", "pods");
    let (shutdown, startup) = (store.sim.pod_shutdown, store.sim.pod_startup);
    let mut finish = Vec::new();
    let mut start = Vec::new();
    for (_, p) in store.list(pods, None) {
        let (ns, name, uid) = key_of(p);
        if terminating(p) {
            if p["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0
            {
                continue;
            }
            let (asked, end) = store
                .sim
                .terminating
                .get(&uid)
                .copied()
                .unwrap_or((now, now));
            let held = store.sim.held.contains(&(ns.clone(), name.clone()));
            if now >= end || (!held && now >= asked + shutdown) {
                finish.push((ns, name, uid));
            }
        } else if let Some(Some(since)) = store.sim.starting.get(&uid) {
            if now >= *since + startup {
                start.push((ns, name, uid));
            }
        }
    }
    for (ns, name, uid) in finish {
        let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        if let Err(e) = store.delete(pods, &ns, &name, &options) {
            tracing::debug!(%name, error = %e.message, "kubelet");
        }
    }
    for (ns, name, uid) in start {
        store.sim.starting.remove(&uid);
        let _ = store.update(pods, &ns, &name, Part::Status, "update", |p| {
            let mut p = p.clone();
            p["status"] = json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]});
            Ok(p)
        });
    }
}

/// The disruption controller: every PodDisruptionBudget's status from the live pods, the
/// pods the status records as disrupted, and the scale of the pods' controllers.
fn disruption(store: &mut Store) {
    let (pdbs, pods, sets) = (
        rt("policy", "v1", "poddisruptionbudgets"),
        rt("", "v1", "pods"),
        rt("apps", "v1", "replicasets"),
    );
    let now = Timestamp::now();
    let all: Vec<Value> = store.list(pdbs, None).map(|(_, p)| p.clone()).collect();
    for pdb in all {
        let (ns, name, _) = key_of(&pdb);
        let selected: Vec<&Value> = store
            .list(pods, Some(&ns))
            .map(|(_, p)| p)
            .filter(|p| eviction::selects(&pdb, p))
            .collect();
        // `getExpectedScale`: each controller's replicas once; a pod whose controller is not
        // held here counts as one (see README).
        let mut scale = 0;
        let mut counted = HashSet::new();
        for p in &selected {
            let set = controller_uid(p).and_then(|uid| {
                store
                    .list(sets, Some(&ns))
                    .map(|(_, s)| s)
                    .find(|s| s["metadata"]["uid"] == uid)
            });
            match set {
                Some(s) if counted.insert(key_of(s).2) => {
                    scale += s["spec"]["replicas"].as_i64().unwrap_or(1);
                }
                Some(_) => {}
                None => scale += 1,
            }
        }
        let Ok(status) = eviction::pdb_status(&pdb, &selected, scale, now) else {
            continue;
        };
        if pdb["status"] == status {
            continue;
        }
        let _ = store.update(pdbs, &ns, &name, Part::Status, "update", |p| {
            let mut p = p.clone();
            p["status"] = status;
            Ok(p)
        });
    }
}
