//! The OS status written after each decision: counts, a one-word state and the five
//! conditions, with `lastTransitionTime` kept while a condition's status does not change.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Decision, Hold};
use crate::crd::{OsStatus, RolloutState};

/// Failed node names listed in the status; the count has them all.
const MAX_FAILED_NODES: usize = 20;

pub fn os_status(
    decision: &Decision,
    generation: Option<i64>,
    previous: Option<&OsStatus>,
    now: Timestamp,
) -> OsStatus {
    let c = &decision.counts;
    let new = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map_or(Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let message = decision.hold.as_ref().map(ToString::to_string);
    let progressing = decision.state == RolloutState::Progressing;
    let progressing_reason = match (&decision.hold, decision.state) {
        (_, RolloutState::Complete) => "Complete",
        (_, RolloutState::Halted) => "FailureBudgetExhausted",
        (_, RolloutState::Paused) => "Paused",
        (_, RolloutState::Aborting | RolloutState::Aborted) => "Aborted",
        (_, RolloutState::Invalid) => "InvalidSpec",
        (_, RolloutState::Incomplete) => "NodesFailed",
        _ if !decision.start.is_empty() => "NodesStarted",
        (Some(hold), _) => hold_reason(hold),
        (None, _) => "NodesInProgress",
    };
    let complete_reason = match () {
        _ if decision.state == RolloutState::Complete => "AllNodesUpdated",
        _ if c.pending + c.in_progress > 0 => "NodesRemaining",
        _ => "NodesFailed",
    };
    let failures = format!(
        "{} of {} allowed node failures",
        c.failed, decision.failure_budget
    );
    let conditions = vec![
        new(
            "Progressing",
            progressing,
            progressing_reason,
            message.clone().unwrap_or_default(),
        ),
        new(
            "Paused",
            decision.paused,
            if decision.paused {
                "PausedBySpec"
            } else {
                "NotPaused"
            },
            String::new(),
        ),
        new(
            "Aborted",
            decision.aborted,
            match decision.state {
                RolloutState::Aborting => "NodesFinishing",
                RolloutState::Aborted => "AbortedBySpec",
                _ if decision.aborted => "NothingToAbort",
                _ => "NotAborted",
            },
            if decision.aborted {
                format!(
                    "{} nodes in flight, {} never started",
                    c.in_progress, c.pending
                )
            } else {
                String::new()
            },
        ),
        new(
            "Halted",
            decision.state == RolloutState::Halted,
            if decision.state == RolloutState::Halted {
                "FailureBudgetExhausted"
            } else {
                "WithinFailureBudget"
            },
            failures,
        ),
        new(
            "Complete",
            decision.state == RolloutState::Complete,
            complete_reason,
            format!("{} of {} nodes updated", c.updated, c.target),
        ),
        conflict_condition(decision, &new),
    ];
    OsStatus {
        observed_generation: generation,
        state: Some(decision.state),
        target: c.target,
        updated: c.updated,
        in_progress: c.in_progress + decision.start.len() as u32,
        failed: c.failed,
        pending: c.pending - decision.start.len() as u32,
        skipped: c.skipped,
        failed_nodes: decision
            .failed_nodes
            .iter()
            .take(MAX_FAILED_NODES)
            .cloned()
            .collect(),
        message,
        conditions,
    }
}

/// Nodes listed in the SelectorConflict message; the count has them all.
const MAX_CONTESTED_NODES: usize = 10;

/// `SelectorConflict`: other OS resources select some of this one's nodes for another target.
fn conflict_condition(
    decision: &Decision,
    new: &dyn Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    if decision.contested.is_empty() {
        return new("SelectorConflict", false, "NoConflict", String::new());
    }
    let mut by: Vec<&String> = decision.contested.values().flatten().collect();
    by.sort();
    by.dedup();
    let nodes: Vec<&String> = decision
        .contested
        .keys()
        .take(MAX_CONTESTED_NODES)
        .collect();
    let more = decision.contested.len() - nodes.len();
    let message =
        format!(
        "{} nodes ({}{}) are also selected by {} for another target; neither starts them until \
         one nodeselector stops selecting them or one OS is deleted",
        decision.contested.len(),
        nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        if more > 0 { format!(", {more} more") } else { String::new() },
        by.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "),
    );
    new("SelectorConflict", true, "NodesSelectedTwice", message)
}

fn hold_reason(hold: &Hold) -> &'static str {
    match hold {
        Hold::Invalid(_) => "InvalidSpec",
        Hold::Halted { .. } => "FailureBudgetExhausted",
        Hold::Paused => "Paused",
        Hold::Aborted => "Aborted",
        Hold::OutsideWindow { .. } => "OutsideTimeWindow",
        Hold::Interval { .. } => "WaitingForInterval",
        Hold::NoCapacity { .. } => "WaitingForCapacity",
        Hold::Serial => "WaitingForSerialNode",
        Hold::NodesNotStartable { .. } => "WaitingForNodes",
        Hold::Contested { .. } => "SelectorConflict",
    }
}
