//! Rollout decisions: a pure function of the OS spec, the observed nodes and the clock.
//!
//! Rules (see `decide`):
//! - The rollout's nodes are those `nodeselector` selects; control-plane nodes only with
//!   `includeControlPlane` (KubeOS always skips them). A node in an operation for this
//!   rollout's target stays one of them until the operation ends or times out, even when it is
//!   no longer selected (relabelled mid-operation), so it keeps counting against
//!   `maxunavailable`.
//! - A node another OS resource also selects for another target (`Observed::contested`) is not
//!   started by either: the conflict is reported instead of the two upgrading it back and
//!   forth.
//! - A node in an operation longer than `nodeTimeoutSeconds` is marked failed; so is a node
//!   whose operation "succeeded" but does not run the target. Neither waits for any gate.
//! - `status.startedAt` is the operator's own stamp, but it lives in an object each node's
//!   proxy may write, so a start later than the operator's clock plus [`MAX_CLOCK_SKEW`]
//!   (which no operator replica can have written) is not trusted: it holds no interval (as
//!   if the instance had no start), and an operation still in flight with it is marked failed
//!   at once, never later than one started now would time out. A start within the skew
//!   (another replica's clock, after a failover) is taken as is. So a node that rewrites its
//!   start cannot hold the other nodes' starts or its own slot beyond that; the admission
//!   policy (deploy/admission.yaml) keeps the proxy from writing it at all.
//! - Once `failureBudget` nodes failed the current target, the rollout halts: nothing starts
//!   until the spec changes (a new target starts a new count) or the budget is raised.
//! - `paused`, `abort`, a closed `timewindow` and `timeinterval` only hold back new starts;
//!   nodes already started go on. `abort` also ends the rollout: `Aborting` while nodes are
//!   still in flight, then `Aborted`; and it withdraws operations no proxy has taken up yet
//!   (phase `Assigned`, before any timeout): the proxy's first write is conditional, so a
//!   withdrawal either lands before it (nothing was done to the node) or loses to it (the
//!   node is in flight and finishes).
//! - A node annotated `upgrade.openeuler.org/skip: "true"` is not started (it is counted as
//!   skipped); one already in an operation finishes it.
//! - A node is unavailable when NotReady, cordoned (by anyone) or in an operation; starts are
//!   capped so unavailable nodes never exceed `min(maxunavailable, selected nodes)`, where a
//!   percentage is of the selected nodes, rounded down, at least one. Failed
//!   nodes release their operation slot but still count while NotReady or cordoned.
//! - `serial` runs one node at a time. At most one control-plane node is started, and only
//!   while no control-plane node of the cluster is unavailable.
//! - Only Ready nodes with an OSInstance (a proxy to act) are started, workers before
//!   control-plane nodes, by name. A node cordoned by someone else is already unavailable:
//!   it is started first and costs no capacity; its proxy leaves it cordoned. A node at the target is never started; a node that
//!   failed the current target is not retried.

mod observe;
mod plan;
#[cfg(test)]
mod selection_tests;
mod selector;
mod status;
#[cfg(test)]
mod tests;
mod window;

pub use observe::{InstanceView, NodeView, Observed, SKIP_ANNOTATION};
pub use plan::{MaxUnavailable, Plan, SpecError};
pub use selector::{
    is_control_plane, NodeSelection, CONTROL_PLANE_LABEL, LEGACY_MASTER_LABEL, NODE_SELECTOR_LABEL,
};
pub use status::os_status;
pub use window::{Window, WindowError};

use std::collections::BTreeMap;
use std::fmt;

use jiff::{SignedDuration, Timestamp};

use crate::crd::{ExecutionMode, NodePhase, OpsType, OsSpec, RolloutState};

/// What to do now. The controller applies it and calls `decide` again on the next change or
/// at `next_check`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Nodes to start now, in order.
    pub start: Vec<String>,
    /// Nodes to record as failed now.
    pub mark_failed: Vec<NodeFailure>,
    /// Nodes whose operation for this rollout is `Assigned` (no proxy took it up yet), to be
    /// withdrawn now because of `spec.abort`. Counted in progress until the withdrawal is seen.
    pub withdraw: Vec<String>,
    pub counts: Counts,
    pub state: RolloutState,
    /// Why nodes still to do are not all starting now.
    pub hold: Option<Hold>,
    /// Nodes that failed the current target (including those marked now), sorted.
    pub failed_nodes: Vec<String>,
    pub paused: bool,
    /// `spec.abort`.
    pub aborted: bool,
    pub failure_budget: u32,
    /// When the decision may change with no event: a timeout, the window, the interval.
    pub next_check: Option<Timestamp>,
    /// Selected nodes another OS resource also selects for another target, with those
    /// resources (`namespace/name`).
    pub contested: BTreeMap<String, Vec<String>>,
}

/// Selected nodes by where they are relative to the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub target: u32,
    pub updated: u32,
    pub in_progress: u32,
    pub failed: u32,
    pub pending: u32,
    /// Nodes annotated to be skipped, and with `config`, nodes not at `osversion` (KubeOS
    /// does not configure them).
    pub skipped: u32,
    /// Selected nodes NotReady, cordoned or in an operation, after this decision's starts.
    pub unavailable: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub node: String,
    pub reason: FailureReason,
}

/// How far ahead of the operator's clock a `status.startedAt` may be and still be taken as an
/// operator's stamp: another replica's clock after a failover. Anything later was not
/// written by an operator (see the module comment).
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    TimedOut {
        phase: NodePhase,
        seconds: u64,
    },
    /// In flight with a `startedAt` later than the operator's clock plus [`MAX_CLOCK_SKEW`].
    StartInFuture {
        phase: NodePhase,
        started_at: Timestamp,
    },
    /// The operation reported success but the node runs something else.
    WrongVersion {
        expected: String,
        found: String,
    },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::TimedOut { phase, seconds } => {
                write!(
                    f,
                    "still {phase:?} {seconds}s after start (nodeTimeoutSeconds)"
                )
            }
            FailureReason::StartInFuture { phase, started_at } => {
                write!(
                    f,
                    "still {phase:?} with startedAt {started_at}, later than the operator's \
                     clock: no operator wrote it (clocks apart by more than {}s, or the \
                     start was rewritten)",
                    MAX_CLOCK_SKEW.as_secs()
                )
            }
            FailureReason::WrongVersion { expected, found } => {
                write!(
                    f,
                    "operation succeeded but the node runs {found:?}, not {expected:?}"
                )
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    Invalid(SpecError),
    Halted {
        failed: u32,
        budget: u32,
    },
    Paused,
    Aborted,
    /// `None` when a one-off window has passed.
    OutsideWindow {
        opens_at: Option<Timestamp>,
    },
    Interval {
        until: Timestamp,
    },
    NoCapacity {
        unavailable: u32,
        limit: u32,
    },
    Serial,
    /// Pending nodes that cannot start: NotReady, cordoned, no OSInstance yet, or a
    /// control-plane node while another one is unavailable.
    NodesNotStartable {
        nodes: u32,
    },
    /// Pending nodes that other OS resources (`namespace/name`) also select.
    Contested {
        nodes: u32,
        by: Vec<String>,
    },
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Invalid(e) => write!(f, "invalid spec: {e}"),
            Hold::Halted { failed, budget } => write!(
                f,
                "halted: {failed} nodes failed, failureBudget is {budget}; raise it or change \
                 the target to go on"
            ),
            Hold::Paused => write!(f, "paused by spec.paused"),
            Hold::Aborted => write!(
                f,
                "aborted by spec.abort: nothing new starts, nodes already started finish"
            ),
            Hold::OutsideWindow { opens_at: Some(t) } => {
                write!(f, "outside the time window; it opens at {t}")
            }
            Hold::OutsideWindow { opens_at: None } => write!(f, "the time window has passed"),
            Hold::Interval { until } => write!(f, "timeinterval: next start at {until}"),
            Hold::NoCapacity { unavailable, limit } => {
                write!(f, "{unavailable} of at most {limit} nodes unavailable")
            }
            Hold::Serial => write!(f, "serial: waiting for the node in progress"),
            Hold::NodesNotStartable { nodes } => write!(
                f,
                "{nodes} pending nodes cannot start (NotReady, cordoned, no OSInstance yet, or \
                 another control-plane node unavailable)"
            ),
            Hold::Contested { nodes, by } => write!(
                f,
                "{nodes} pending nodes are also selected by {} for another target; neither \
                 starts them until one nodeselector stops selecting them",
                by.join(", ")
            ),
        }
    }
}

/// Where one selected node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Updated,
    InProgress,
    Failed,
    Pending { startable: bool },
    Skipped,
}

struct Row<'a> {
    node: &'a NodeView,
    class: Class,
    unavailable: bool,
}

pub fn decide(spec: &OsSpec, observed: &Observed, now: Timestamp) -> Decision {
    let plan = Plan::from_spec(spec);
    let ctx = match &plan {
        Ok(p) => Ctx {
            withdraw_assigned: spec.abort,
            ..Ctx::new(spec, p.operation, &p.target, now)
        },
        Err(_) => Ctx::new(spec, spec.opstype, &spec.osversion, now),
    };
    let mut mark_failed = Vec::new();
    let mut withdraw = Vec::new();
    let rows: Vec<Row> = observed
        .nodes
        .iter()
        .filter(|n| selects(spec, n) || in_flight_for(n, &ctx))
        .map(|node| classify(node, &ctx, observed, &mut mark_failed, &mut withdraw))
        .collect();
    let contested: BTreeMap<String, Vec<String>> = observed
        .contested
        .iter()
        .filter(|(name, _)| rows.iter().any(|r| &r.node.name == *name))
        .map(|(name, by)| (name.clone(), by.clone()))
        .collect();

    let mut counts = count(&rows);
    let mut failed_nodes: Vec<String> = rows
        .iter()
        .filter(|r| r.class == Class::Failed)
        .map(|r| r.node.name.clone())
        .collect();
    failed_nodes.sort();
    let halted = counts.failed >= spec.failure_budget;
    let gate = match &plan {
        Err(e) => Some(Hold::Invalid(e.clone())),
        Ok(_) if halted => Some(Hold::Halted {
            failed: counts.failed,
            budget: spec.failure_budget,
        }),
        Ok(_) if spec.abort => Some(Hold::Aborted),
        Ok(_) if spec.paused => Some(Hold::Paused),
        Ok(p) => time_gate(spec, p, &rows, now),
    };
    let (start, newly_unavailable, capacity_hold) = match (gate.as_ref(), &plan) {
        (None, Ok(plan)) => pick_starts(spec, plan, observed, &rows, &mark_failed, &contested),
        _ => (Vec::new(), 0, None),
    };
    counts.unavailable += newly_unavailable;
    let pending_left = counts.pending as usize > start.len();
    let hold = match gate {
        // Worth saying even with nothing left to start.
        Some(h @ (Hold::Invalid(_) | Hold::Halted { .. })) => Some(h),
        Some(Hold::Aborted) if counts.pending + counts.in_progress > 0 => Some(Hold::Aborted),
        gate if pending_left => gate.or(capacity_hold),
        _ => None,
    };
    Decision {
        state: rollout_state(plan.is_ok(), halted, spec, &counts),
        next_check: next_check(&rows, &hold, ctx.timeout),
        start,
        mark_failed,
        withdraw,
        counts,
        hold,
        failed_nodes,
        paused: spec.paused,
        aborted: spec.abort,
        failure_budget: spec.failure_budget,
        contested,
    }
}

/// Whether `spec`'s `nodeselector` (and its control-plane rule) picks `node`.
pub fn selects(spec: &OsSpec, node: &NodeView) -> bool {
    NodeSelection::parse(&spec.nodeselector).matches(&node.labels)
        && (spec.include_control_plane || !node.control_plane)
}

/// Whether `node` is in an operation this rollout started (its target and operation).
fn in_flight_for(node: &NodeView, ctx: &Ctx) -> bool {
    node.instance
        .as_ref()
        .is_some_and(|i| i.is_active() && i.is_for(ctx.operation, ctx.target))
}

/// What every node's classification needs.
struct Ctx<'a> {
    spec: &'a OsSpec,
    operation: OpsType,
    target: &'a str,
    now: Timestamp,
    timeout: SignedDuration,
    /// `spec.abort` of a valid spec: operations still `Assigned` are withdrawn.
    withdraw_assigned: bool,
}

impl<'a> Ctx<'a> {
    fn new(spec: &'a OsSpec, operation: OpsType, target: &'a str, now: Timestamp) -> Ctx<'a> {
        let seconds = spec.node_timeout_seconds.min(i64::MAX as u64) as i64;
        Ctx {
            spec,
            operation,
            target,
            now,
            timeout: SignedDuration::from_secs(seconds),
            withdraw_assigned: false,
        }
    }
}

fn rollout_state(valid: bool, halted: bool, spec: &OsSpec, counts: &Counts) -> RolloutState {
    let finished = counts.pending == 0 && counts.in_progress == 0;
    match () {
        _ if !valid => RolloutState::Invalid,
        // An abort of a rollout that is done anyway changes nothing.
        _ if finished && counts.failed == 0 => RolloutState::Complete,
        _ if spec.abort && counts.in_progress > 0 => RolloutState::Aborting,
        _ if spec.abort => RolloutState::Aborted,
        _ if halted => RolloutState::Halted,
        _ if finished => RolloutState::Incomplete,
        _ if spec.paused => RolloutState::Paused,
        _ => RolloutState::Progressing,
    }
}

fn classify<'a>(
    node: &'a NodeView,
    ctx: &Ctx,
    observed: &Observed,
    mark_failed: &mut Vec<NodeFailure>,
    withdraw: &mut Vec<String>,
) -> Row<'a> {
    let (spec, operation, target) = (ctx.spec, ctx.operation, ctx.target);
    let down = !node.ready || node.cordoned;
    let inst = node.instance.as_ref();
    let for_target = inst.is_some_and(|i| i.is_for(operation, target));
    let row = |class: Class| Row {
        node,
        class,
        unavailable: down || class == Class::InProgress,
    };

    if let Some(i) = inst.filter(|i| i.is_active()) {
        // Never taken up: withdrawn rather than timed out, nothing was done to the node.
        if ctx.withdraw_assigned && for_target && i.phase == Some(NodePhase::Assigned) {
            withdraw.push(node.name.clone());
            return row(Class::InProgress);
        }
        let phase = i.phase.unwrap_or(NodePhase::Assigned);
        let reason = match i.started_at {
            Some(started_at) if !trusted_start(started_at, ctx.now) => {
                FailureReason::StartInFuture { phase, started_at }
            }
            started_at => {
                let deadline = started_at.and_then(|s| s.saturating_add(ctx.timeout).ok());
                if deadline.is_none_or(|d| d > ctx.now) {
                    return row(Class::InProgress);
                }
                FailureReason::TimedOut {
                    phase,
                    seconds: spec.node_timeout_seconds,
                }
            }
        };
        mark_failed.push(NodeFailure {
            node: node.name.clone(),
            reason,
        });
        // Its state is unknown until the failure is recorded: not retried in this decision.
        return row(if for_target {
            Class::Failed
        } else {
            Class::Pending { startable: false }
        });
    }
    if reached_target(node, spec, operation, target) {
        return row(Class::Updated);
    }
    let phase = inst.and_then(|i| i.phase);
    if for_target && phase == Some(NodePhase::Succeeded) {
        let found = match operation {
            OpsType::Config => inst.and_then(|i| i.applied_config_version.clone()),
            _ => inst.and_then(|i| i.current_version.clone()),
        };
        mark_failed.push(NodeFailure {
            node: node.name.clone(),
            reason: FailureReason::WrongVersion {
                expected: target.to_string(),
                found: found.unwrap_or_else(|| node.os_version.clone()),
            },
        });
        return row(Class::Failed);
    }
    if for_target && phase == Some(NodePhase::Failed) {
        return row(Class::Failed);
    }
    if node.skip || (operation == OpsType::Config && node.os_version != spec.osversion) {
        return row(Class::Skipped);
    }
    // A cordoned node is already unavailable: starting it costs no capacity, and its proxy
    // leaves it cordoned afterwards (it did not cordon it).
    row(Class::Pending {
        startable: node.ready && inst.is_some() && !observed.contested.contains_key(&node.name),
    })
}

/// Upgrade/rollback: the node runs `osversion` (by the kubelet's report, or by the agent's
/// when the operation succeeded and the Node object lags). Config: the node runs `osversion`
/// and has applied the settings version.
fn reached_target(node: &NodeView, spec: &OsSpec, operation: OpsType, target: &str) -> bool {
    let inst = node.instance.as_ref();
    match operation {
        OpsType::Upgrade | OpsType::Rollback => {
            node.os_version == target
                || inst.is_some_and(|i| {
                    i.is_for(operation, target)
                        && i.phase == Some(NodePhase::Succeeded)
                        && i.current_version.as_deref() == Some(target)
                })
        }
        OpsType::Config => {
            node.os_version == spec.osversion
                && inst
                    .and_then(|i| i.applied_config_version.as_deref())
                    .unwrap_or("")
                    == target
        }
    }
}

fn count(rows: &[Row]) -> Counts {
    let mut c = Counts {
        target: rows.len() as u32,
        ..Counts::default()
    };
    for r in rows {
        match r.class {
            Class::Updated => c.updated += 1,
            Class::InProgress => c.in_progress += 1,
            Class::Failed => c.failed += 1,
            Class::Pending { .. } => c.pending += 1,
            Class::Skipped => c.skipped += 1,
        }
        c.unavailable += r.unavailable as u32;
    }
    c
}

/// The window and the interval between batches.
fn time_gate(spec: &OsSpec, plan: &Plan, rows: &[Row], now: Timestamp) -> Option<Hold> {
    if !plan.window.is_open(now) {
        return Some(Hold::OutsideWindow {
            opens_at: plan.window.next_open(now),
        });
    }
    let last_start = rows
        .iter()
        .filter_map(|r| r.node.instance.as_ref())
        .filter(|i| i.is_for(plan.operation, &plan.target))
        .filter_map(|i| i.started_at)
        .filter(|&s| trusted_start(s, now))
        .max()?;
    let until = last_start
        .saturating_add(SignedDuration::from_secs(spec.timeinterval))
        .ok()?;
    (now < until).then_some(Hold::Interval { until })
}

/// Whether `started_at` can be an operator's stamp: not later than `now` plus
/// [`MAX_CLOCK_SKEW`].
fn trusted_start(started_at: Timestamp, now: Timestamp) -> bool {
    now.saturating_add(MAX_CLOCK_SKEW)
        .is_ok_and(|latest| started_at <= latest)
}

/// Returns the nodes to start, how many of them become unavailable by it (cordoned nodes
/// already are), and why pending nodes are held back.
fn pick_starts(
    spec: &OsSpec,
    plan: &Plan,
    observed: &Observed,
    rows: &[Row],
    mark_failed: &[NodeFailure],
    contested: &BTreeMap<String, Vec<String>>,
) -> (Vec<String>, u32, Option<Hold>) {
    let unavailable = rows.iter().filter(|r| r.unavailable).count() as u32;
    let limit = plan.max_unavailable.limit(rows.len() as u32);
    let mut free = limit.saturating_sub(unavailable);
    let serial = spec.executionmode == ExecutionMode::Serial;
    if serial && rows.iter().any(|r| r.class == Class::InProgress) {
        return (Vec::new(), 0, Some(Hold::Serial));
    }
    let timed_out = |name: &str| mark_failed.iter().any(|f| f.node == name);
    // Control-plane nodes of the whole cluster, selected or not: etcd quorum does not care
    // which OS resource took a member down.
    let mut control_plane_free = !observed.nodes.iter().any(|n| {
        n.control_plane
            && (!n.ready
                || n.cordoned
                || (n.instance.as_ref().is_some_and(InstanceView::is_active)
                    && !timed_out(&n.name)))
    });
    let mut candidates: Vec<&NodeView> = rows
        .iter()
        .filter(|r| r.class == (Class::Pending { startable: true }))
        .map(|r| r.node)
        .collect();
    // Workers first; among them cordoned nodes, which cost no capacity.
    candidates.sort_by(|a, b| {
        (a.control_plane, !a.cordoned, &a.name).cmp(&(b.control_plane, !b.cordoned, &b.name))
    });

    let mut start = Vec::new();
    let mut added = 0;
    for node in candidates {
        if serial && !start.is_empty() {
            break;
        }
        let cost = u32::from(!node.cordoned);
        if cost > free {
            continue;
        }
        if node.control_plane {
            if !control_plane_free {
                continue;
            }
            control_plane_free = false;
        }
        start.push(node.name.clone());
        free -= cost;
        added += cost;
    }
    let pending = rows
        .iter()
        .filter(|r| matches!(r.class, Class::Pending { .. }))
        .count();
    let hold = if serial && !start.is_empty() {
        Some(Hold::Serial)
    } else if free == 0 {
        Some(Hold::NoCapacity {
            unavailable: unavailable + added,
            limit,
        })
    } else if let Some(hold) = contested_hold(rows, contested) {
        Some(hold)
    } else {
        Some(Hold::NodesNotStartable {
            nodes: (pending - start.len()) as u32,
        })
    };
    (start, added, hold)
}

/// Pending nodes held back because other OS resources select them too.
fn contested_hold(rows: &[Row], contested: &BTreeMap<String, Vec<String>>) -> Option<Hold> {
    let held: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| matches!(r.class, Class::Pending { .. }))
        .filter_map(|r| contested.get(&r.node.name))
        .collect();
    if held.is_empty() {
        return None;
    }
    let mut by: Vec<String> = held.iter().flat_map(|b| b.iter().cloned()).collect();
    by.sort();
    by.dedup();
    Some(Hold::Contested {
        nodes: held.len() as u32,
        by,
    })
}

fn next_check(rows: &[Row], hold: &Option<Hold>, timeout: SignedDuration) -> Option<Timestamp> {
    let timeouts = rows
        .iter()
        .filter(|r| r.class == Class::InProgress)
        .filter_map(|r| {
            r.node
                .instance
                .as_ref()?
                .started_at?
                .saturating_add(timeout)
                .ok()
        });
    let gate = match hold {
        Some(Hold::OutsideWindow { opens_at }) => *opens_at,
        Some(Hold::Interval { until }) => Some(*until),
        _ => None,
    };
    timeouts.chain(gate).min()
}
