//! Carrying out one [`Step`]: the only place that calls the agent, patches the Node and writes
//! the OSInstance. Each action ends by writing the phase that follows it, never before, so an
//! interruption anywhere is recognised by the next observation (see lifecycle.rs).

use crate::agent_client::{AgentError, ErrorKind, UpgradeRequest};
use crate::cordon;
use crate::drain::{self, DrainConfig};
use crate::lifecycle::{AfterDrain, NodeState, Step};
use crate::report::{self, ProgressThrottle};
use crate::run::{Error, Proxy};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use operator::crd::{NodePhase, SysConfigs};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How often the agent's progress is read while it writes an image.
const PROGRESS_POLL: Duration = Duration::from_secs(1);

/// Whether a failed agent call is asked again on a later tick: the agent said
/// so (busy, network, server trouble), or it could not answer (down,
/// restarting, rebooting). Refusals and failures end the operation.
pub(crate) fn retry_later(e: &AgentError) -> bool {
    e.kind() == ErrorKind::Retryable
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub(crate) async fn execute(p: &Proxy, s: &NodeState, step: &Step) -> Result<(), Error> {
    match carry_out(p, s, step).await {
        // The claim of an Assigned operation lost to a change by the operator (withdrawn by
        // `spec.abort`, or stood down): nothing was done to the node; look again.
        Err(Error::Write {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 409 && claims(s) => {
            tracing::info!(
                node = %p.cfg.node_name,
                ?step,
                "the OSInstance changed since it was read; not taking up the operation"
            );
            Ok(())
        }
        r => r,
    }
}

/// Whether `s` is an operation the operator assigned and this proxy has not taken up yet.
fn claims(s: &NodeState) -> bool {
    s.status.phase == Some(NodePhase::Assigned)
}

async fn carry_out(p: &Proxy, s: &NodeState, step: &Step) -> Result<(), Error> {
    match step {
        Step::Idle => Ok(()),
        Step::Wait(why) => show_wait(p, s, why).await,
        Step::Enter { phase, step } => write(p, s, &report::phase_patch(*phase, step, now())).await,
        Step::ApplyUpgradeConfigs => configure(p, s, "upgradeconfigs", s.upgradeconfigs()).await,
        Step::Configure => configure(p, s, "sysconfigs", s.sysconfigs()).await,
        Step::Prepare(req) => prepare(p, s, req).await,
        Step::WatchPrepare => {
            watch_progress(p, &mut ProgressThrottle::default()).await;
            Ok(())
        }
        Step::Cordon => {
            cordon::cordon(&p.nodes, &p.cfg.node_name).await?;
            Ok(())
        }
        Step::Drain(after) => drain_then(p, s, *after).await,
        Step::Succeed { current_version } => succeed(p, s, current_version).await,
        Step::Fail { message } => fail(p, s, message).await,
        Step::Uncordon => {
            cordon::uncordon(&p.nodes, &p.cfg.node_name).await?;
            Ok(())
        }
        Step::ResetSpec => hand_back(p).await,
    }
}

/// Writes `patch` into the status. Decided on an `Assigned` instance (`claims`), it carries
/// the `resourceVersion` `s` was read at, so it takes up the operation only if the operator
/// has not changed the instance since (a 409 otherwise).
async fn write(p: &Proxy, s: &NodeState, patch: &Value) -> Result<(), Error> {
    let mut patch = patch.clone();
    if let Some(version) = s.resource_version.as_ref().filter(|_| claims(s)) {
        patch["metadata"]["resourceVersion"] = Value::String(version.clone());
    }
    p.reporter
        .status(&patch)
        .await
        .map_err(|source| Error::Write {
            name: p.cfg.node_name.clone(),
            source,
        })
}

async fn hand_back(p: &Proxy) -> Result<(), Error> {
    p.reporter
        .spec(&report::idle_spec_patch())
        .await
        .map_err(|source| Error::Write {
            name: p.cfg.node_name.clone(),
            source,
        })
}

/// Shows why the node waits, once per reason, while an operation is in flight.
async fn show_wait(p: &Proxy, s: &NodeState, why: &str) -> Result<(), Error> {
    let active = s.status.phase.is_some_and(NodePhase::is_active);
    if !active || s.status.step.as_deref() == Some(why) {
        return Ok(());
    }
    write(p, s, &report::step_patch(why, now())).await
}

/// Whether the operation observed in `s` is still the one asked for: a long action (a write,
/// a drain) must not be followed by the next one after the operator stood the node down.
async fn still_asked(p: &Proxy, s: &NodeState) -> Result<bool, Error> {
    let Some(now) = p.read_instance().await? else {
        return Ok(false);
    };
    let status = now.status.unwrap_or_default();
    Ok(now.spec.nodestatus == s.spec.nodestatus && status.phase == s.status.phase)
}

async fn configure(
    p: &Proxy,
    s: &NodeState,
    which: &str,
    configs: Option<&SysConfigs>,
) -> Result<(), Error> {
    let Some(configs) = configs else {
        return Ok(());
    };
    let list =
        serde_json::to_value(configs.configs.clone().unwrap_or_default()).unwrap_or(Value::Null);
    match p.agent.configure(&list).await {
        Ok(()) => write(p, s, &report::applied_patch(which, configs)).await,
        // Down, or finishing its after-boot check: ask again on the next tick.
        Err(e) if retry_later(&e) => Ok(()),
        Err(e) => {
            let version = configs.version.as_deref().unwrap_or("");
            fail(p, s, &format!("applying {which} version {version:?}: {e}")).await
        }
    }
}

/// Writes the image while reporting the agent's progress, then moves on to the drain.
async fn prepare(p: &Proxy, s: &NodeState, req: &UpgradeRequest) -> Result<(), Error> {
    tracing::info!(version = %req.version, url = %req.image_url, "preparing the inactive slot");
    write(
        p,
        s,
        &report::step_patch(
            &format!("writing {} into the inactive slot", req.version),
            now(),
        ),
    )
    .await?;
    let mut throttle = ProgressThrottle::default();
    let result = tokio::select! {
        r = p.agent.prepare_upgrade(req) => r,
        () = follow_progress(p, &mut throttle) => unreachable!("follow_progress never ends"),
    };
    match result {
        Ok(()) if still_asked(p, s).await? => {
            let step = "cordoning and draining";
            write(p, s, &report::phase_patch(NodePhase::Draining, step, now())).await
        }
        Ok(()) => Ok(()),
        // The agent restarted or is busy: the next observation tells what is left to do.
        Err(e) if retry_later(&e) => {
            tracing::warn!(error = %e, "prepare interrupted");
            Ok(())
        }
        Err(e) => fail(p, s, &format!("preparing {}: {e}", req.version)).await,
    }
}

/// Reports progress until the agent's prepare job ends (or the agent goes away).
async fn watch_progress(p: &Proxy, throttle: &mut ProgressThrottle) {
    loop {
        let Some(status) = p.agent_status().await else {
            return;
        };
        let Some(job) = status.job.filter(|j| j.kind == "prepare") else {
            return;
        };
        report_progress(p, throttle, &job).await;
        tokio::time::sleep(PROGRESS_POLL).await;
    }
}

async fn follow_progress(p: &Proxy, throttle: &mut ProgressThrottle) {
    loop {
        tokio::time::sleep(PROGRESS_POLL).await;
        if let Some(job) = p.agent_status().await.and_then(|s| s.job) {
            report_progress(p, throttle, &job).await;
        }
    }
}

async fn report_progress(
    p: &Proxy,
    throttle: &mut ProgressThrottle,
    job: &crate::agent_client::Job,
) {
    let percent = job.percent.unwrap_or(0.0).clamp(0.0, 100.0) as u8;
    if !throttle.admit(Instant::now(), percent) {
        return;
    }
    let step = if job.total > 0 {
        format!(
            "{} {} MiB of {} MiB",
            job.phase,
            job.bytes >> 20,
            job.total >> 20
        )
    } else {
        job.phase.clone()
    };
    if let Err(e) = p
        .reporter
        .status(&report::progress_patch(percent, &step))
        .await
    {
        tracing::warn!(error = %e, "progress not written");
    }
}

async fn drain_then(p: &Proxy, s: &NodeState, after: AfterDrain) -> Result<(), Error> {
    let cfg = DrainConfig {
        timeout: p.cfg.drain_timeout,
        grace_seconds: p.cfg.pod_grace_seconds,
        force: s.os.as_ref().is_some_and(|o| o.evictpodforce),
    };
    let start = tokio::time::Instant::now();
    let drained = match drain::plan(&p.client, &p.cfg.node_name, cfg.force).await {
        Ok(plan) => {
            write(p, s, &report::step_patch(&drain_step(&plan), now())).await?;
            drain::run(&p.client, &p.cfg.node_name, &plan, &cfg, start).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = drained {
        let message = e.to_string();
        publish_drain_failed(p, &message).await;
        return fail(p, s, &message).await;
    }
    if !still_asked(p, s).await? {
        tracing::warn!("the operation was withdrawn during the drain; not rebooting");
        return Ok(());
    }
    let (call, next) = match after {
        AfterDrain::Activate => (p.agent.upgrade().await, "rebooting into the new slot"),
        AfterDrain::Rollback => (p.agent.rollback().await, "rebooting into the other slot"),
    };
    match call {
        Ok(()) => {
            write(
                p,
                s,
                &report::phase_patch(NodePhase::Rebooting, next, now()),
            )
            .await
        }
        // No answer: it may have armed and rebooted at once; the next observation tells.
        // Busy: another job holds the agent; the next tick asks again (the drain is done).
        Err(e) if retry_later(&e) => Ok(()),
        Err(e) => fail(p, s, &e.to_string()).await,
    }
}

/// The step shown while draining: what is evicted, and which pods are waited for.
fn drain_step(plan: &drain::Plan) -> String {
    let mut step = format!("evicting {} pods", plan.evict.len());
    if !plan.wait.is_empty() {
        let names: Vec<String> = plan
            .wait
            .iter()
            .take(5)
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        let more = plan.wait.len().saturating_sub(names.len());
        step += &format!(
            ", waiting for {} terminating: {}{}",
            plan.wait.len(),
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    step
}

async fn publish_drain_failed(p: &Proxy, message: &str) {
    let node = match p.nodes.get(&p.cfg.node_name).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "no DrainFailed event: cannot read the node");
            return;
        }
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "DrainFailed".into(),
        note: Some(operator::note::note(message)),
        action: "Drain".into(),
        secondary: None,
    };
    if let Err(e) = p.recorder.publish(&event, &node.object_ref(&())).await {
        tracing::warn!(error = %e, "DrainFailed event not published");
    }
}

async fn succeed(p: &Proxy, s: &NodeState, version: &str) -> Result<(), Error> {
    cordon::uncordon(&p.nodes, &p.cfg.node_name).await?;
    let patch = report::succeeded_patch(version, s.sysconfigs(), s.upgradeconfigs(), now());
    write(p, s, &patch).await?;
    tracing::info!(node = %p.cfg.node_name, version, "succeeded");
    hand_back(p).await
}

/// Uncordons (ours only), reports the failure, hands the node back. The node keeps running the
/// slot it runs: nothing here touches the agent.
pub(crate) async fn fail(p: &Proxy, s: &NodeState, message: &str) -> Result<(), Error> {
    tracing::warn!(node = %p.cfg.node_name, message, "failed");
    cordon::uncordon(&p.nodes, &p.cfg.node_name).await?;
    let current = s.agent.as_ref().map(crate::lifecycle::current_version);
    write(
        p,
        s,
        &report::failed_patch(message, current.as_deref(), now()),
    )
    .await?;
    hand_back(p).await
}
