//! Deletion as the real registry does it (`rest.BeforeDelete` with the pod and namespace
//! strategies): a scheduled pod gets a grace period (`deletionTimestamp` in the future,
//! `deletionGracePeriodSeconds`) and its kubelet removes it; a namespace starts terminating and
//! the namespace controller empties it; any object with finalizers waits for them.

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use crate::controllers::Sim;
use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::store::{finalizers, Store};

/// `terminationGracePeriodSeconds` when a pod does not set it (`DefaultTerminationGracePeriodSeconds`).
const DEFAULT_POD_GRACE: i64 = 30;

/// The finalizer the server puts in every namespace's `spec.finalizers`; the namespace
/// controller removes it once the namespace is empty.
pub(crate) const NAMESPACE_FINALIZER: &str = "kubernetes";

/// What a DELETE does to an object.
#[derive(Debug)]
pub(crate) enum Deletion {
    Remove,
    /// Already terminating, and the request does not shorten its grace period.
    Unchanged,
    /// Marked terminating (or its grace period shortened): the object to store.
    Mark(Value),
}

fn is_core(rt: &ResourceType, plural: &str) -> bool {
    rt.group.is_empty() && rt.plural == plural
}

/// Server-set fields of a new object: a namespace is `Active` and carries the `kubernetes`
/// finalizer in its spec (the namespace strategy's `PrepareForCreate`).
pub(crate) fn on_create(rt: &ResourceType, obj: &mut Value) {
    if is_core(rt, "namespaces") {
        obj["spec"]["finalizers"] = json!([NAMESPACE_FINALIZER]);
        obj["status"] = json!({"phase": "Active"});
    }
}

pub(crate) fn on_delete(
    rt: &ResourceType,
    existing: &Value,
    options: &Value,
    now: Instant,
    sim: &mut Sim,
) -> Deletion {
    let meta = &existing["metadata"];
    let terminating = !meta["deletionTimestamp"].is_null();
    if is_core(rt, "namespaces") {
        if terminating {
            return Deletion::Unchanged;
        }
        let mut marked = mark(existing, 0);
        marked["status"]["phase"] = json!("Terminating");
        return Deletion::Mark(marked);
    }
    let grace = if is_core(rt, "pods") {
        pod_grace(existing, options)
    } else {
        0
    };
    let uid = meta["uid"].as_str().unwrap_or_default();
    let no_finalizers = finalizers(existing).is_empty();
    if terminating {
        let current = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
        if grace >= current {
            return Deletion::Unchanged;
        }
        if grace == 0 && no_finalizers {
            return Deletion::Remove;
        }
        // Only a shorter grace period is taken, counted from the first request.
        let requested = meta["deletionTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .and_then(|t| t.checked_sub(SignedDuration::from_secs(current)).ok())
            .unwrap_or_else(Timestamp::now);
        let mut marked = existing.clone();
        marked["metadata"]["deletionTimestamp"] = json!(format_time(
            requested
                .checked_add(SignedDuration::from_secs(grace))
                .unwrap_or(requested)
        ));
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        sim.shorten_grace(uid, current - grace);
        return Deletion::Mark(marked);
    }
    if grace == 0 && no_finalizers {
        return Deletion::Remove;
    }
    if grace > 0 {
        sim.start_termination(uid, now, grace);
    }
    Deletion::Mark(mark(existing, grace))
}

/// The pod strategy's `CheckGracefulDelete`: a pod never scheduled or already finished goes
/// at once; otherwise the request's period, else the pod's, else 30 s.
fn pod_grace(pod: &Value, options: &Value) -> i64 {
    let phase = pod["status"]["phase"].as_str();
    let unscheduled = pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    if unscheduled || matches!(phase, Some("Succeeded" | "Failed")) {
        return 0;
    }
    let period = options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(DEFAULT_POD_GRACE);
    // A negative period means "the minimum", one second.
    if period < 0 {
        1
    } else {
        period
    }
}

fn mark(existing: &Value, grace: i64) -> Value {
    let mut marked = existing.clone();
    let now = Timestamp::now();
    let at = now
        .checked_add(SignedDuration::from_secs(grace))
        .unwrap_or(now);
    marked["metadata"]["deletionTimestamp"] = json!(format_time(at));
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    marked
}

fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether a terminating object is gone: no finalizers, no grace period left to run, and for
/// a namespace no `spec.finalizers`.
pub(crate) fn can_remove(obj: &Value) -> bool {
    let meta = &obj["metadata"];
    if meta["deletionTimestamp"].is_null() || !finalizers(obj).is_empty() {
        return false;
    }
    if meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) != 0 {
        return false;
    }
    let spec_finalizers = obj["spec"]["finalizers"].as_array().map_or(0, Vec::len);
    !(obj["kind"] == "Namespace" && spec_finalizers > 0)
}

/// Whether `ns` is a namespace being deleted.
pub(crate) fn namespace_terminating(store: &Store, ns: &str) -> bool {
    let Some(namespaces) = crate::registry::find("", "v1", "namespaces") else {
        return false;
    };
    store
        .get(namespaces, "", ns)
        .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null())
}

/// What the NamespaceLifecycle admission plugin answers a create (an eviction too) in a
/// namespace being deleted.
pub(crate) fn namespace_terminating_error(rt: &ResourceType, name: &str, ns: &str) -> ApiError {
    ApiError::new(
        403,
        format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because \
             it is being terminated",
            rt.qualified()
        ),
    )
    .with_details(json!({
        "name": name,
        "group": rt.group,
        "kind": rt.plural,
        "causes": [{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace",
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn pod(extra: Value) -> Value {
        let mut p = json!({"kind": "Pod", "metadata": {"name": "p", "uid": "u"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        p
    }

    fn pods() -> &'static ResourceType {
        registry::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn a_running_pod_gets_its_own_grace_period_or_the_requested_one() {
        let mut sim = Sim::default();
        let now = Instant::now();
        let spec = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 7}});
        let Deletion::Mark(m) = on_delete(pods(), &pod(spec), &json!({}), now, &mut sim) else {
            panic!("a running pod is not removed at once");
        };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 7);
        assert!(!can_remove(&m), "its kubelet removes it");
        let asked = json!({"gracePeriodSeconds": 3});
        let Deletion::Mark(m) = on_delete(pods(), &pod(json!({})), &asked, now, &mut sim) else {
            panic!("not marked");
        };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 3);
    }

    #[test]
    fn only_a_shorter_grace_period_changes_a_terminating_pod() {
        let mut sim = Sim::default();
        let now = Instant::now();
        let Deletion::Mark(m) = on_delete(pods(), &pod(json!({})), &json!({}), now, &mut sim)
        else {
            panic!("not marked");
        };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 30);
        let longer = json!({"gracePeriodSeconds": 60});
        assert!(matches!(
            on_delete(pods(), &m, &longer, now, &mut sim),
            Deletion::Unchanged
        ));
        let shorter = json!({"gracePeriodSeconds": 5});
        let Deletion::Mark(s) = on_delete(pods(), &m, &shorter, now, &mut sim) else {
            panic!("not shortened");
        };
        assert_eq!(s["metadata"]["deletionGracePeriodSeconds"], 5);
        let now_please = json!({"gracePeriodSeconds": 0});
        assert!(matches!(
            on_delete(pods(), &s, &now_please, now, &mut sim),
            Deletion::Remove
        ));
    }

    #[test]
    fn unscheduled_and_finished_pods_go_at_once() {
        let mut sim = Sim::default();
        let now = Instant::now();
        let unscheduled = pod(json!({"spec": {}}));
        assert!(matches!(
            on_delete(pods(), &unscheduled, &json!({}), now, &mut sim),
            Deletion::Remove
        ));
        let done = pod(json!({"status": {"phase": "Succeeded"}}));
        assert!(matches!(
            on_delete(pods(), &done, &json!({}), now, &mut sim),
            Deletion::Remove
        ));
    }

    #[test]
    fn a_namespace_terminates_until_its_spec_finalizer_is_removed() {
        let namespaces = registry::find("", "v1", "namespaces").unwrap();
        let mut ns = json!({"kind": "Namespace", "metadata": {"name": "d", "uid": "n"}});
        on_create(namespaces, &mut ns);
        let mut sim = Sim::default();
        let Deletion::Mark(m) = on_delete(namespaces, &ns, &json!({}), Instant::now(), &mut sim)
        else {
            panic!("a namespace is not removed at once");
        };
        assert_eq!(m["status"]["phase"], "Terminating");
        assert!(!can_remove(&m));
        let mut finalized = m.clone();
        finalized["spec"]["finalizers"] = json!([]);
        assert!(can_remove(&finalized));
    }
}
