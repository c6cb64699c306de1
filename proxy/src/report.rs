//! What the node tells the cluster: OSInstance status writes (merge patches on the status
//! subresource, with explicit nulls for what an earlier step set and this one clears) and the
//! hand-back of the node (`spec.nodestatus: idle`, as KubeOS's proxy does when it is done).
//!
//! The patch bodies are pure functions of their inputs and the clock, tested below.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use operator::crd::{NodePhase, OsInstance, SysConfigs};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn time(now: jiff::Timestamp) -> Value {
    // Kubernetes `Time` is RFC 3339 with whole seconds.
    let whole = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    serde_json::to_value(Time(whole)).unwrap_or(Value::Null)
}

/// Entering a phase: the step starts now, an older error no longer applies.
pub fn phase_patch(phase: NodePhase, step: &str, now: jiff::Timestamp) -> Value {
    json!({"status": {
        "phase": phase,
        "step": step,
        "stepSince": time(now),
        "progress": 0,
        "lastError": null,
        "finishedAt": null,
    }})
}

/// A new step inside the current phase (`evicting 3 pods`), keeping the phase.
pub fn step_patch(step: &str, now: jiff::Timestamp) -> Value {
    json!({"status": {"step": step, "stepSince": time(now)}})
}

/// Download/write progress of the current step.
pub fn progress_patch(percent: u8, step: &str) -> Value {
    json!({"status": {"progress": percent.min(100), "step": step}})
}

/// The node reached the target: the versions it runs and the settings it applied.
pub fn succeeded_patch(
    current_version: &str,
    sysconfigs: Option<&SysConfigs>,
    upgradeconfigs: Option<&SysConfigs>,
    now: jiff::Timestamp,
) -> Value {
    let mut status = json!({
        "phase": NodePhase::Succeeded,
        "step": "done",
        "stepSince": time(now),
        "progress": 100,
        "lastError": null,
        "currentVersion": current_version,
        "finishedAt": time(now),
    });
    // KubeOS records the applied settings' versions in the status once they are in place.
    if let Some(s) = sysconfigs {
        status["sysconfigs"] = json!(s);
    }
    if let Some(u) = upgradeconfigs {
        status["upgradeconfigs"] = json!(u);
    }
    json!({ "status": status })
}

pub fn failed_patch(message: &str, current_version: Option<&str>, now: jiff::Timestamp) -> Value {
    let mut status = json!({
        "phase": NodePhase::Failed,
        "step": "failed",
        "stepSince": time(now),
        "lastError": message,
        "finishedAt": time(now),
    });
    if let Some(v) = current_version {
        status["currentVersion"] = json!(v);
    }
    json!({ "status": status })
}

/// Settings the agent applied (`which` is `sysconfigs` or `upgradeconfigs`).
pub fn applied_patch(which: &str, configs: &SysConfigs) -> Value {
    json!({"status": { which: configs }})
}

/// Hands the node back to the operator.
pub fn idle_spec_patch() -> Value {
    json!({"spec": {"nodestatus": "idle"}})
}

/// Limits progress writes to one per 2 s or per 5 percent, whichever comes first.
#[derive(Debug, Clone, Default)]
pub struct ProgressThrottle {
    last: Option<(Instant, u8)>,
}

pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
pub const PROGRESS_STEP: u8 = 5;

impl ProgressThrottle {
    /// Whether `percent` at `now` is worth a write; records it when it is.
    pub fn admit(&mut self, now: Instant, percent: u8) -> bool {
        let due = match self.last {
            None => true,
            Some((_, p)) if p == percent => false,
            Some((at, p)) => {
                now.duration_since(at) >= PROGRESS_INTERVAL
                    || percent.abs_diff(p) >= PROGRESS_STEP
                    || percent == 100
            }
        };
        if due {
            self.last = Some((now, percent));
        }
        due
    }
}

/// Writes to one OSInstance.
#[derive(Clone)]
pub struct Reporter {
    api: Api<OsInstance>,
    name: String,
}

impl Reporter {
    pub fn new(api: Api<OsInstance>, name: &str) -> Reporter {
        Reporter {
            api,
            name: name.into(),
        }
    }

    pub async fn status(&self, patch: &Value) -> Result<(), kube::Error> {
        self.api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop)
    }

    pub async fn spec(&self, patch: &Value) -> Result<(), kube::Error> {
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> jiff::Timestamp {
        "2026-11-27T00:00:00.250Z".parse().unwrap()
    }

    #[test]
    fn entering_a_phase_clears_the_last_error_explicitly() {
        let p = phase_patch(NodePhase::Draining, "evicting 2 pods", t0());
        let s = &p["status"];
        assert_eq!(s["phase"], "Draining");
        assert_eq!(s["stepSince"], "2026-11-27T00:00:00Z");
        let obj = s.as_object().unwrap();
        assert!(obj["lastError"].is_null() && obj.contains_key("lastError"));
        assert!(obj["finishedAt"].is_null() && obj.contains_key("finishedAt"));
    }

    #[test]
    fn success_records_versions_settings_and_the_end() {
        let cfg = SysConfigs {
            version: Some("s1".into()),
            configs: None,
        };
        let p = succeeded_patch("v2", Some(&cfg), None, t0());
        let s = &p["status"];
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(s["progress"], 100);
        assert_eq!(s["currentVersion"], "v2");
        assert_eq!(s["sysconfigs"]["version"], "s1");
        assert!(s.get("upgradeconfigs").is_none());
        assert_eq!(s["finishedAt"], "2026-11-27T00:00:00Z");
    }

    #[test]
    fn failure_carries_the_message() {
        let p = failed_patch("trial boot of v2 failed: x", Some("v1"), t0());
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(p["status"]["lastError"], "trial boot of v2 failed: x");
        assert_eq!(p["status"]["currentVersion"], "v1");
        assert_eq!(idle_spec_patch(), json!({"spec": {"nodestatus": "idle"}}));
    }

    #[test]
    fn progress_is_throttled_by_time_and_by_percent() {
        let mut t = ProgressThrottle::default();
        let start = Instant::now();
        assert!(t.admit(start, 0));
        assert!(!t.admit(start + Duration::from_millis(500), 1));
        assert!(!t.admit(start + Duration::from_millis(900), 4));
        assert!(t.admit(start + Duration::from_millis(1000), 5));
        assert!(!t.admit(start + Duration::from_millis(1500), 6));
        assert!(t.admit(start + Duration::from_millis(3001), 6));
        // The same percent is never written twice, however long it takes.
        assert!(!t.admit(start + Duration::from_secs(60), 6));
        assert!(t.admit(start + Duration::from_millis(3002), 100));
    }
}
