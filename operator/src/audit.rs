//! Checks of a rollout from an API server's change log: every write in order, each with the
//! object after it. Tests replay the fake API server's log through these to check properties
//! at every instant rather than at a few sampled moments.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// One logged write.
#[derive(Clone, Copy, Debug)]
pub struct Mutation<'a> {
    pub seq: u64,
    /// Plural resource name: `nodes`, `osinstances`, `events`, ...
    pub resource: &'a str,
    pub name: &'a str,
    /// `create`, `update`, `patch`, `delete`, ...
    pub verb: &'a str,
    /// The object after the write (before it, for a delete).
    pub object: &'a Value,
}

/// Replays the log and returns the most nodes unavailable at once, and the `seq` of the first
/// write that reached it. A node is unavailable while NotReady, cordoned, or with an operation
/// in flight: an OSInstance whose phase is active, or whose spec asks for work it has not
/// finished. A finished operation (Succeeded or Failed) whose spec the proxy has not yet reset
/// to idle is not in flight: from there the proxy only uncordons the node (which counts while it
/// lasts) and resets the spec, nothing that takes the node down; the operator counts it as
/// available as soon as the node is Ready and schedulable, and so does this audit.
pub fn max_unavailable<'a>(log: impl IntoIterator<Item = Mutation<'a>>) -> (usize, u64) {
    // Per node: (down, busy); `now` counts nodes with either.
    let mut nodes: HashMap<String, (bool, bool)> = HashMap::new();
    let (mut now, mut max, mut at) = (0usize, 0, 0);
    for m in log {
        let gone = m.verb == "delete";
        let entry = nodes.entry(m.name.to_string()).or_default();
        let before = entry.0 || entry.1;
        match m.resource {
            "nodes" => {
                let ready = m.object["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .is_some_and(|c| c["status"] == "True");
                let cordoned = m.object["spec"]["unschedulable"] == true;
                entry.0 = !gone && (!ready || cordoned);
            }
            "osinstances" => {
                let phase = m.object["status"]["phase"].as_str().unwrap_or("Idle");
                let finished = ["Succeeded", "Failed"].contains(&phase);
                let active = !finished && phase != "Idle";
                let asked = m.object["spec"]["nodestatus"].as_str().unwrap_or("idle") != "idle";
                entry.1 = !gone && (active || (asked && !finished));
            }
            _ => continue,
        }
        let after = entry.0 || entry.1;
        now = now + after as usize - before as usize;
        if now > max {
            (max, at) = (now, m.seq);
        }
    }
    (max, at)
}

/// Writes that turned an OSInstance's phase into `phase`: (seq, node, target version).
pub fn phase_changes<'a>(
    log: impl IntoIterator<Item = Mutation<'a>>,
    phase: &str,
) -> Vec<(u64, String, String)> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for m in log.into_iter().filter(|m| m.resource == "osinstances") {
        let now = m.object["status"]["phase"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let before = last.insert(m.name.to_string(), now.clone());
        if now == phase && before.as_deref() != Some(phase) {
            let target = m.object["status"]["targetVersion"].as_str().unwrap_or("");
            out.push((m.seq, m.name.to_string(), target.to_string()));
        }
    }
    out
}

/// Operations the operator started: OSInstance phases turned `Assigned`.
pub fn starts<'a>(log: impl IntoIterator<Item = Mutation<'a>>) -> Vec<(u64, String, String)> {
    phase_changes(log, "Assigned")
}

/// An events.k8s.io Event as created.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEvent {
    pub seq: u64,
    pub reason: String,
    pub reporting_instance: String,
    /// The `related` object's name (the node, for node events).
    pub related: String,
    pub regarding_kind: String,
    pub regarding: String,
    pub note: String,
}

pub fn events<'a>(log: impl IntoIterator<Item = Mutation<'a>>) -> Vec<LoggedEvent> {
    log.into_iter()
        .filter(|m| m.resource == "events" && m.verb == "create")
        .map(|m| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            LoggedEvent {
                seq: m.seq,
                reason: s(&m.object["reason"]),
                reporting_instance: s(&m.object["reportingInstance"]),
                related: s(&m.object["related"]["name"]),
                regarding_kind: s(&m.object["regarding"]["kind"]),
                regarding: s(&m.object["regarding"]["name"]),
                note: s(&m.object["note"]),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m<'a>(seq: u64, resource: &'a str, name: &'a str, object: &'a Value) -> Mutation<'a> {
        Mutation {
            seq,
            resource,
            name,
            verb: "patch",
            object,
        }
    }

    #[test]
    fn a_node_counts_once_whether_down_busy_or_both() {
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let cordoned = json!({"spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let assigned = json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Assigned"}});
        let done = json!({"spec": {"nodestatus": "idle"}, "status": {"phase": "Succeeded"}});
        let log = [
            m(1, "nodes", "a", &ready),
            m(2, "osinstances", "a", &assigned),
            m(3, "nodes", "a", &cordoned),
            m(4, "osinstances", "b", &assigned),
            m(5, "nodes", "a", &ready),
            m(6, "osinstances", "a", &done),
            m(7, "osinstances", "b", &done),
        ];
        assert_eq!(max_unavailable(log), (2, 4));
    }

    #[test]
    fn a_finished_operation_waiting_for_its_spec_reset_is_available_once_uncordoned() {
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let cordoned = json!({"spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let asked = json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Idle"}});
        let succeeded =
            json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Succeeded"}});
        let failed = json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Failed"}});
        let assigned = json!({"spec": {"nodestatus": "upgrade"}, "status": {"phase": "Assigned"}});
        let log = [
            // a: finished, still cordoned: unavailable until the uncordon.
            m(1, "nodes", "a", &cordoned),
            m(2, "osinstances", "a", &succeeded),
            m(3, "nodes", "a", &ready),
            // b: finished and schedulable; c: asked but not assigned yet (counts).
            m(4, "nodes", "b", &ready),
            m(5, "osinstances", "b", &failed),
            m(6, "osinstances", "c", &asked),
            m(7, "osinstances", "d", &assigned),
        ];
        assert_eq!(max_unavailable(log), (2, 7));
    }

    #[test]
    fn starts_are_transitions_into_assigned() {
        let assigned = json!({"status": {"phase": "Assigned", "targetVersion": "v2"}});
        let draining = json!({"status": {"phase": "Draining", "targetVersion": "v2"}});
        let log = [
            m(1, "osinstances", "a", &assigned),
            m(2, "osinstances", "a", &assigned),
            m(3, "osinstances", "a", &draining),
            m(4, "osinstances", "a", &assigned),
        ];
        let starts = starts(log);
        assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(starts[0].2, "v2");
    }
}
