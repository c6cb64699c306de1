//! What the node does next, as a pure function of what the proxy observes now.
//!
//! The proxy keeps no state of its own: the OSInstance status phase says how far the operation
//! got, and the agent's report (slot records, trial, fallback) and the Node say what really
//! happened. A phase is written only after the action that ends it succeeded, and every phase
//! first checks whether its action is already done, so a proxy restarted at any instant (or a
//! node rebooted under it) resumes without repeating a step that must not repeat (a second
//! download of a verified slot, a second trial of a failed image).

use crate::agent_client::{AgentStatus, Certs, SlotRecord, SlotState, UpgradeRequest};
use operator::crd::{
    ImageType, NodePhase, NodeStatus, OpsType, OsInstanceSpec, OsInstanceStatus, OsSpec,
};

/// The Node as far as the lifecycle cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `spec.unschedulable`, whoever set it.
    pub unschedulable: bool,
    /// The `upgrade.openeuler.org/cordoned-by: os-proxy` annotation is present.
    pub cordoned_by_us: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
}

/// One observation of everything the decision reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    pub spec: OsInstanceSpec,
    pub status: OsInstanceStatus,
    /// The OS named by `spec.namespacedname`, read from [`namespace`](Self::namespace) only;
    /// `None` when it does not exist (or none is named).
    pub os: Option<OsSpec>,
    /// The operator's namespace: the only one OS resources are taken from.
    pub namespace: String,
    pub node: NodeFacts,
    /// `None`: the agent did not answer (down, restarting, or the node is rebooting).
    pub agent: Option<AgentStatus>,
    /// The OSInstance's `resourceVersion` when it was read. A write decided on an `Assigned`
    /// instance carries it, so it fails (409) when the operator changed the instance since:
    /// an operation withdrawn by `spec.abort` before this proxy took it up stays withdrawn.
    pub resource_version: Option<String>,
}

/// What to do after the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDrain {
    /// Agent `upgrade`: arm the trial boot of the prepared slot (and reboot).
    Activate,
    /// Agent `rollback`: commit the other slot (and reboot).
    Rollback,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No operation asked of this node.
    Idle,
    /// Something outside the proxy has to happen first (the reboot, the health gate, the
    /// operator); observe again later.
    Wait(String),
    /// Record that the node moved to `phase`; the action of that phase comes next.
    Enter { phase: NodePhase, step: String },
    /// Agent `configure` with the OS's `upgradeconfigs`, first thing in `Preparing`.
    ApplyUpgradeConfigs,
    /// Agent `prepare_upgrade`: write and verify the image into the inactive slot.
    Prepare(UpgradeRequest),
    /// The agent is writing the image already (a restarted proxy): follow its progress.
    WatchPrepare,
    /// Cordon the node, recording that this proxy did it.
    Cordon,
    /// Evict the node's pods, then call the agent.
    Drain(AfterDrain),
    /// Agent `configure` with the OS's `sysconfigs`.
    Configure,
    /// Uncordon if we cordoned, report success, hand the node back (`nodestatus: idle`).
    Succeed { current_version: String },
    /// Uncordon if we cordoned, report the failure, hand the node back.
    Fail { message: String },
    /// Lift our own cordon: the operation is over or the operator stood the node down.
    Uncordon,
    /// The operation is reported but the spec still asks for it: set `nodestatus: idle`.
    ResetSpec,
}

impl NodeState {
    /// The settings to apply: the OS's own. The OSInstance's copy is never used, because a
    /// node's credentials can write its OSInstance and the settings (kubelet, sysctls, kernel
    /// arguments) act as root on the node.
    pub fn sysconfigs(&self) -> Option<&operator::crd::SysConfigs> {
        self.os.as_ref()?.sysconfigs.as_ref()
    }

    /// The settings applied before an upgrade, likewise the OS's own.
    pub fn upgradeconfigs(&self) -> Option<&operator::crd::SysConfigs> {
        self.os.as_ref()?.upgradeconfigs.as_ref()
    }
}

fn wait(why: impl Into<String>) -> Step {
    Step::Wait(why.into())
}

fn fail(message: impl Into<String>) -> Step {
    Step::Fail {
        message: message.into(),
    }
}

fn enter(phase: NodePhase, step: &str) -> Step {
    Step::Enter {
        phase,
        step: step.into(),
    }
}

pub fn next_step(s: &NodeState) -> Step {
    let op = match s.spec.nodestatus {
        // The operator stands a node down by setting it idle (after a timeout it also writes
        // Failed): nothing more happens here, but our cordon must not outlive the operation.
        NodeStatus::Idle if s.node.cordoned_by_us => return Step::Uncordon,
        NodeStatus::Idle => return Step::Idle,
        NodeStatus::Upgrade => OpsType::Upgrade,
        NodeStatus::Rollback => OpsType::Rollback,
        NodeStatus::Config => OpsType::Config,
    };
    let phase = match s.status.phase {
        None | Some(NodePhase::Idle) => return wait("waiting for the operator to assign the node"),
        Some(NodePhase::Succeeded | NodePhase::Failed) if s.node.cordoned_by_us => {
            return Step::Uncordon
        }
        Some(NodePhase::Succeeded | NodePhase::Failed) => return Step::ResetSpec,
        Some(p) => p,
    };
    if let Some(nn) = s
        .spec
        .namespacedname
        .as_ref()
        .filter(|n| !n.namespace.is_empty() && n.namespace != s.namespace)
    {
        return fail(format!(
            "this OSInstance names the OS {}/{}: OS resources are taken from {} only",
            nn.namespace, nn.name, s.namespace
        ));
    }
    let Some(os) = &s.os else {
        let name = s
            .spec
            .namespacedname
            .as_ref()
            .map_or("(none named)".to_owned(), |n| {
                format!("{}/{}", n.namespace, n.name)
            });
        return fail(format!("the OS {name} of this OSInstance does not exist"));
    };
    let Some(agent) = &s.agent else {
        let why = match phase {
            NodePhase::Rebooting | NodePhase::Confirming => "waiting for the node to come back",
            _ => "waiting for the agent to answer",
        };
        return wait(why);
    };
    match op {
        OpsType::Upgrade => match Target::upgrade(os, &s.status) {
            Ok(t) => upgrade_step(s, agent, &t, phase),
            Err(m) => fail(m),
        },
        OpsType::Rollback => rollback_step(s, agent, &Target::rollback(os, &s.status), phase),
        OpsType::Config => config_step(s, agent, phase),
    }
}

/// The image the operation ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    version: String,
    /// Normalised `algo:hex`; `None` for a rollback (the other slot's image, whatever it is).
    digest: Option<String>,
    /// The OS's `osversion` when it no longer is this operation's target (changed mid-way):
    /// the OS's image, checksum and URL are the new target's then, so they say nothing about
    /// this operation's image, and a slot holds the target by its version alone.
    superseded_by: Option<String>,
}

impl Target {
    fn upgrade(os: &OsSpec, status: &OsInstanceStatus) -> Result<Target, String> {
        // A container image pinned by digest needs no checksum: the reference carries it.
        let pinned = os
            .containerimage
            .split_once("@sha256:")
            .filter(|_| os.checksum.trim().is_empty() && os.imagetype != ImageType::Disk)
            .map(|(_, hex)| format!("sha256:{hex}"));
        let digest = match pinned {
            Some(d) => normalize_digest(&d)?,
            None => normalize_digest(&os.checksum)?,
        };
        let version = target_version(os, status);
        Ok(Target {
            superseded_by: (version != os.osversion).then(|| os.osversion.clone()),
            version,
            digest: Some(digest),
        })
    }

    fn rollback(os: &OsSpec, status: &OsInstanceStatus) -> Target {
        Target {
            version: target_version(os, status),
            digest: None,
            superseded_by: None,
        }
    }

    /// The record holds the target: same version, and the digest is the image's
    /// (`blake3:`) or, for an image from a registry, its OCI manifest's.
    fn held_by(&self, rec: &SlotRecord) -> bool {
        rec.version == self.version
            && (self.superseded_by.is_some()
                || self.digest.as_ref().is_none_or(|d| {
                    *d == rec.digest
                        || (d.starts_with("sha256:") && rec.source.ends_with(&format!("@{d}")))
                }))
    }
}

fn target_version(os: &OsSpec, status: &OsInstanceStatus) -> String {
    status
        .target_version
        .clone()
        .unwrap_or_else(|| os.osversion.clone())
}

/// `blake3:<hex>` or `sha256:<hex>` from an OS `checksum`, as the agent records it
/// ([`wire::Digest::from_check_sum`]: a bare hex digest is SHA-256).
pub fn normalize_digest(checksum: &str) -> Result<String, String> {
    wire::Digest::from_check_sum(checksum)
        .map(|d| d.to_string())
        .map_err(|e| format!("OS checksum: {e}"))
}

/// The agent's request for the OS's image.
pub fn upgrade_request(os: &OsSpec, version: &str) -> UpgradeRequest {
    let image_type = serde_json::to_value(os.imagetype)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    UpgradeRequest {
        version: version.to_owned(),
        check_sum: os.checksum.clone(),
        image_type,
        container_image: os.containerimage.clone(),
        image_url: os.imageurl.clone(),
        flag_safe: os.flag_safe,
        mtls: os.mtls,
        certs: Certs {
            ca_cert: os.cacert.clone().unwrap_or_default(),
            client_cert: os.clientcert.clone().unwrap_or_default(),
            client_key: os.clientkey.clone().unwrap_or_default(),
        },
    }
}

/// Whether a versioned settings set still has to be applied: it has settings and its version
/// is not the applied one (KubeOS compares versions, not contents).
pub fn settings_pending(
    wanted: Option<&operator::crd::SysConfigs>,
    applied: Option<&operator::crd::SysConfigs>,
) -> bool {
    let Some(wanted) = wanted else { return false };
    let has_configs = wanted.configs.as_ref().is_some_and(|c| !c.is_empty());
    has_configs && applied.and_then(|a| a.version.as_ref()) != wanted.version.as_ref()
}

/// Whether `phase` comes before `than` in an operation.
fn before(phase: NodePhase, than: NodePhase) -> bool {
    rank(phase) < rank(than)
}

fn rank(p: NodePhase) -> u8 {
    match p {
        NodePhase::Idle => 0,
        NodePhase::Assigned => 1,
        NodePhase::Preparing => 2,
        NodePhase::Draining => 3,
        NodePhase::Rebooting => 4,
        NodePhase::Confirming => 5,
        NodePhase::Configuring => 6,
        NodePhase::Succeeded | NodePhase::Failed => 7,
    }
}

/// The booted slot runs the target: on trial (health gate pending) or committed.
fn landed(s: &NodeState, agent: &AgentStatus, t: &Target, phase: NodePhase) -> Option<Step> {
    if !t.held_by(agent.booted_record()) {
        return None;
    }
    if agent.on_trial {
        return Some(if before(phase, NodePhase::Confirming) {
            enter(NodePhase::Confirming, "waiting for the agent's health gate")
        } else {
            wait(format!(
                "waiting for the agent's health gate on slot {}",
                agent.booted
            ))
        });
    }
    if t.digest.is_some() && agent.trial.is_none() && agent.active != agent.booted {
        // The health gate failed this very boot; the agent reboots into the committed slot.
        // The failure is reported once the node runs that slot, so nobody reads the node's
        // version as the target meanwhile.
        return Some(wait(format!(
            "the trial of {} failed; waiting for the reboot into slot {}",
            t.version, agent.active
        )));
    }
    if agent.active != agent.booted || !before(phase, NodePhase::Configuring) {
        return None;
    }
    Some(if s.node.ready {
        enter(NodePhase::Configuring, "applying settings")
    } else {
        wait(format!(
            "slot {} ({}) is committed; waiting for the node to be Ready",
            agent.booted, t.version
        ))
    })
}

/// The trial of the target fell back to the old slot: GRUB used up its tries, os-init refused
/// the root, or the health gate failed it.
fn fell_back(agent: &AgentStatus, t: &Target, phase: NodePhase) -> Option<Step> {
    let new = agent.inactive();
    let rec = agent.record(new);
    if agent.trial.is_some() || !t.held_by(rec) {
        return None;
    }
    let failure = agent
        .last_failure
        .as_ref()
        .filter(|f| f.slot == new && agent.fail == Some(new));
    let named = failure.is_some_and(|f| f.version.as_deref() == Some(t.version.as_str()));
    // A failed record belongs to this very write; `ab_fail` alone may be left over from an
    // earlier attempt at the same version, so it counts only once we armed (Rebooting on).
    let ours = rec.state == SlotState::Failed || (named && !before(phase, NodePhase::Rebooting));
    if !ours || before(phase, NodePhase::Draining) {
        return None;
    }
    let reason = failure.map_or("the slot was marked failed", |f| f.reason.as_str());
    Some(fail(format!(
        "trial boot of {} failed: {reason}; the node runs slot {} ({})",
        t.version,
        agent.booted,
        agent.booted_record().version
    )))
}

fn upgrade_step(s: &NodeState, agent: &AgentStatus, t: &Target, phase: NodePhase) -> Step {
    if let Some(step) = landed(s, agent, t, phase).or_else(|| fell_back(agent, t, phase)) {
        return step;
    }
    let new = agent.inactive();
    let prepared = agent.record(new).state == SlotState::Written && t.held_by(agent.record(new));
    let armed = agent.trial == Some(new);
    if let Some(now) = &t.superseded_by {
        // The OS moved on to another target. Before the trial is armed nothing of this
        // operation is worth finishing (and the OS no longer says what its image is): stop,
        // so the operator can start the node towards the new target. Once armed, the node
        // is rebooting into this operation's image: it finishes.
        if before(phase, NodePhase::Rebooting) && !(prepared && armed) {
            return fail(format!(
                "the OS now targets {now}: the upgrade to {} stopped before its reboot; the \
                 node runs slot {} ({})",
                t.version,
                agent.booted,
                agent.booted_record().version
            ));
        }
    }
    match phase {
        // Nothing is done to the node while Assigned: the first write (conditional, see
        // `NodeState::resource_version`) claims the operation, so one the operator withdrew
        // in the meantime is never started.
        NodePhase::Assigned => enter(NodePhase::Preparing, "preparing the new image"),
        NodePhase::Preparing
            if agent.job.is_none()
                && settings_pending(s.upgradeconfigs(), s.status.upgradeconfigs.as_ref()) =>
        {
            Step::ApplyUpgradeConfigs
        }
        NodePhase::Preparing => prepare_step(s, agent, t, prepared),
        NodePhase::Draining if prepared && armed => {
            enter(NodePhase::Rebooting, "rebooting into the new slot")
        }
        NodePhase::Draining if !prepared => enter(
            NodePhase::Preparing,
            "the prepared slot changed; preparing again",
        ),
        NodePhase::Draining if !s.node.unschedulable => Step::Cordon,
        NodePhase::Draining => Step::Drain(AfterDrain::Activate),
        NodePhase::Rebooting if prepared && armed => {
            wait(format!("waiting for the reboot into slot {new}"))
        }
        NodePhase::Rebooting => {
            let r = agent.record(new);
            fail(format!(
                "slot {new} was not armed for a trial of {} (it is {:?} with version {:?}); \
                 the node runs slot {}",
                t.version, r.state, r.version, agent.booted
            ))
        }
        NodePhase::Confirming => wait("waiting for the node to come back on the new slot"),
        // The OS's settings are the new target's now: they are applied when the node is
        // upgraded to it, not on this operation's image.
        _ if t.superseded_by.is_some() => Step::Succeed {
            current_version: agent.booted_record().version.clone(),
        },
        _ => configuring_step(s, agent),
    }
}

fn prepare_step(s: &NodeState, agent: &AgentStatus, t: &Target, prepared: bool) -> Step {
    if let Some(job) = &agent.job {
        return match job.kind.as_str() {
            "prepare" => Step::WatchPrepare,
            kind => wait(format!("the agent is busy with {kind}")),
        };
    }
    if let Some(other) = &agent.other_job {
        return wait(format!("the agent is busy: {other}"));
    }
    if prepared {
        // Verified already (a restarted proxy, or a retry): never download it twice.
        return enter(NodePhase::Draining, "cordoning and draining");
    }
    match &s.os {
        Some(os) => Step::Prepare(upgrade_request(os, &t.version)),
        None => fail("the OS disappeared"),
    }
}

fn rollback_step(s: &NodeState, agent: &AgentStatus, t: &Target, phase: NodePhase) -> Step {
    if let Some(step) = landed(s, agent, t, phase) {
        return step;
    }
    let other = agent.booted.other();
    let committed_other = agent.active == other && agent.trial.is_none();
    match phase {
        NodePhase::Assigned => {
            let r = agent.record(other);
            if r.state == SlotState::Good && t.held_by(r) {
                enter(NodePhase::Draining, "cordoning and draining")
            } else {
                fail(format!(
                    "cannot roll back to {}: slot {other} is {:?} with version {:?}; the node \
                     runs slot {} ({})",
                    t.version,
                    r.state,
                    r.version,
                    agent.booted,
                    agent.booted_record().version
                ))
            }
        }
        NodePhase::Preparing | NodePhase::Draining if committed_other => {
            enter(NodePhase::Rebooting, "rebooting into the other slot")
        }
        NodePhase::Preparing | NodePhase::Draining if !s.node.unschedulable => Step::Cordon,
        NodePhase::Preparing | NodePhase::Draining => Step::Drain(AfterDrain::Rollback),
        NodePhase::Rebooting | NodePhase::Confirming if committed_other => {
            wait(format!("waiting for the reboot into slot {other}"))
        }
        NodePhase::Rebooting | NodePhase::Confirming => fail(format!(
            "the rollback did not take: slot {} ({}) runs and slot {} is committed",
            agent.booted,
            agent.booted_record().version,
            agent.active
        )),
        _ => configuring_step(s, agent),
    }
}

fn config_step(s: &NodeState, agent: &AgentStatus, phase: NodePhase) -> Step {
    match phase {
        NodePhase::Configuring => configuring_step(s, agent),
        _ => enter(NodePhase::Configuring, "applying settings"),
    }
}

fn configuring_step(s: &NodeState, agent: &AgentStatus) -> Step {
    if settings_pending(s.sysconfigs(), s.status.sysconfigs.as_ref()) {
        return Step::Configure;
    }
    Step::Succeed {
        current_version: agent.booted_record().version.clone(),
    }
}

/// The slot that runs now and its version, for status.
pub fn current_version(agent: &AgentStatus) -> String {
    agent.booted_record().version.clone()
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
