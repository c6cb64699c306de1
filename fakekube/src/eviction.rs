//! PodDisruptionBudgets as the real server keeps them: the disruption controller's status
//! (`currentHealthy`, `desiredHealthy`, `expectedPods`, `disruptionsAllowed`, `disruptedPods`)
//! and the eviction subresource's `checkAndDecrement` against that status.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use crate::selector::LabelSelector;
use crate::status::ApiError;

/// How long an evicted pod counts as disrupted while it has not started terminating
/// (`DeletionTimeout` of the disruption controller).
const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

/// More disrupted pods than this in a budget's status refuse evictions (`MaxDisruptedPodSize`).
const MAX_DISRUPTED_PODS: usize = 2000;

/// One PDB's budget over the pods it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    pub name: String,
    pub desired_healthy: i64,
    pub current_healthy: i64,
    pub expected_pods: i64,
}

impl Budget {
    pub fn disruptions_allowed(&self) -> i64 {
        if self.expected_pods <= 0 {
            return 0;
        }
        (self.current_healthy - self.desired_healthy).max(0)
    }
}

/// Whether the PDB check applies at all: the real server evicts terminal and pending pods
/// without consulting budgets (`canIgnorePDB`).
pub(crate) fn ignores_budgets(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || !pod["metadata"]["deletionTimestamp"].is_null()
}

/// Ready=True, or no status at all (see README: pods are created without status here).
pub(crate) fn is_ready(pod: &Value) -> bool {
    let Some(status) = pod.get("status").filter(|s| !s.is_null()) else {
        return true;
    };
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub(crate) fn selects(pdb: &Value, pod: &Value) -> bool {
    // A PDB with a missing or unparsable selector selects nothing, as in the disruption
    // controller; an empty selector `{}` selects every pod in the namespace (policy/v1).
    match pdb["spec"].get("selector") {
        Some(sel) if sel.is_object() => {
            LabelSelector::from_structured(sel).is_ok_and(|s| s.matches(pod))
        }
        _ => false,
    }
}

fn parse_time(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

/// The status's `disruptedPods` still pending: pods evicted less than two minutes ago that
/// have not started terminating (`buildDisruptedPodMap`).
fn still_disrupted(pdb: &Value, pods: &[&Value], now: Timestamp) -> BTreeMap<String, Value> {
    let listed = &pdb["status"]["disruptedPods"];
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?;
            let at = &listed[name];
            let when = parse_time(at)?;
            (when.checked_add(DELETION_TIMEOUT).ok()? > now).then(|| (name.to_string(), at.clone()))
        })
        .collect()
}

/// The budget of `pdb` over the pods it selects (`pods`: those of its namespace);
/// `expected_scale` is the sum of the scales of the selected pods' controllers.
pub(crate) fn budget(
    pdb: &Value,
    selected: &[&Value],
    disrupted: &BTreeMap<String, Value>,
    expected_scale: i64,
) -> Result<Budget, ApiError> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
    // `countHealthyPods`: terminating and recently evicted pods are not healthy.
    let current_healthy = selected
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or("")))
        .filter(|p| is_ready(p))
        .count() as i64;
    let spec = &pdb["spec"];
    let (desired_healthy, expected_pods) =
        if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
            let max = scaled(max, expected_scale).map_err(|e| internal(&name, e))?;
            (expected_scale - max, expected_scale)
        } else if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
            if let Some(n) = min.as_i64() {
                (n, selected.len() as i64)
            } else {
                let n = scaled(min, expected_scale).map_err(|e| internal(&name, e))?;
                (n, expected_scale)
            }
        } else {
            // Neither set: treated as minAvailable 1, policy/v1beta1's default.
            (1, selected.len() as i64)
        };
    Ok(Budget {
        name,
        desired_healthy: desired_healthy.max(0),
        current_healthy,
        expected_pods,
    })
}

/// The status the disruption controller writes for `pdb`.
pub(crate) fn pdb_status(
    pdb: &Value,
    selected: &[&Value],
    expected_scale: i64,
    now: Timestamp,
) -> Result<Value, ApiError> {
    let disrupted = still_disrupted(pdb, selected, now);
    let b = budget(pdb, selected, &disrupted, expected_scale)?;
    let mut status = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "currentHealthy": b.current_healthy,
        "desiredHealthy": b.desired_healthy,
        "expectedPods": b.expected_pods,
        "disruptionsAllowed": b.disruptions_allowed(),
    });
    if !disrupted.is_empty() {
        status["disruptedPods"] = json!(disrupted);
    }
    Ok(status)
}

/// The eviction's `checkAndDecrement`: refuses unless the budget's status allows a
/// disruption, and returns the status to write: one disruption fewer, the pod recorded as
/// disrupted (so the controller does not count it healthy until it is gone).
pub(crate) fn check_and_decrement(pdb: &Value, pod_name: &str) -> Result<Value, ApiError> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or("");
    let status = &pdb["status"];
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    if observed < pdb["metadata"]["generation"].as_i64().unwrap_or(0) {
        return Err(too_many(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    if allowed < 0 {
        return Err(ApiError::new(403, "pdb disruptions allowed is negative"));
    }
    let disrupted = status["disruptedPods"].as_object().map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::new(
            403,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            status["desiredHealthy"].as_i64().unwrap_or(0),
            status["currentHealthy"].as_i64().unwrap_or(0)
        )));
    }
    let mut next = status.clone();
    next["disruptionsAllowed"] = json!(allowed - 1);
    if !next["disruptedPods"].is_object() {
        next["disruptedPods"] = json!({});
    }
    next["disruptedPods"][pod_name] =
        json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    Ok(next)
}

/// An int-or-percent scaled against `total`, rounding up, as `GetScaledValueFromIntOrPercent`.
fn scaled(value: &Value, total: i64) -> Result<i64, String> {
    if let Some(n) = value.as_i64() {
        return Ok(n);
    }
    let text = value.as_str().unwrap_or("");
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("invalid value for IntOrString: {text:?}"))?;
    Ok((percent * total + 99) / 100)
}

fn internal(pdb: &str, message: String) -> ApiError {
    ApiError::new(500, format!("PodDisruptionBudget {pdb}: {message}"))
}

/// The real server's answer when a budget allows no disruption now.
fn too_many(cause: String) -> ApiError {
    ApiError::new(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
    )
    .with_details(json!({
        "causes": [{"reason": "DisruptionBudget", "message": cause}],
        "retryAfterSeconds": 0,
    }))
}

pub(crate) fn too_many_budgets() -> ApiError {
    ApiError::new(
        500,
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: Option<bool>) -> Value {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": "web"}}});
        if let Some(ready) = ready {
            let status = if ready { "True" } else { "False" };
            p["status"] = json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": status}]});
        }
        p
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "web", "generation": 1}, "spec": spec})
    }

    fn status(pdb: &Value, pods: &[Value], scale: i64) -> Value {
        let refs: Vec<&Value> = pods.iter().collect();
        pdb_status(pdb, &refs, scale, Timestamp::now()).unwrap()
    }

    #[test]
    fn min_available_counts_ready_and_statusless_pods() {
        let pods = [pod("a", Some(true)), pod("b", None), pod("c", Some(false))];
        let s = status(&pdb(json!({"minAvailable": 2})), &pods, 3);
        assert_eq!(
            (s["desiredHealthy"].as_i64(), s["currentHealthy"].as_i64()),
            (Some(2), Some(2))
        );
        assert_eq!(s["disruptionsAllowed"], 0);
        let s = status(&pdb(json!({"minAvailable": "50%"})), &pods, 3);
        assert_eq!(s["desiredHealthy"], 2, "50% of 3 rounds up");
    }

    #[test]
    fn max_unavailable_is_subtracted_from_the_controllers_scale() {
        let pods = [
            pod("a", Some(true)),
            pod("b", Some(true)),
            pod("c", Some(true)),
        ];
        let s = status(&pdb(json!({"maxUnavailable": 1})), &pods, 3);
        assert_eq!(s["disruptionsAllowed"], 1);
        let s = status(&pdb(json!({"maxUnavailable": "10%"})), &pods, 3);
        assert_eq!(
            s["desiredHealthy"], 2,
            "10% of 3 rounds up to 1 unavailable"
        );
        let s = status(&pdb(json!({"maxUnavailable": 1})), &pods, 4);
        assert_eq!(s["disruptionsAllowed"], 0, "a fourth replica is missing");
    }

    #[test]
    fn an_eviction_spends_the_budget_until_the_controller_sees_a_replacement() {
        let mut budget = pdb(json!({"minAvailable": 2}));
        let mut pods = vec![
            pod("a", Some(true)),
            pod("b", Some(true)),
            pod("c", Some(true)),
        ];
        budget["status"] = status(&budget, &pods, 3);
        assert_eq!(budget["status"]["disruptionsAllowed"], 1);
        budget["status"] = check_and_decrement(&budget, "a").unwrap();
        assert_eq!(budget["status"]["disruptionsAllowed"], 0);
        let refused = check_and_decrement(&budget, "b").unwrap_err().to_status();
        assert_eq!(refused["reason"], "TooManyRequests");
        assert_eq!(
            refused["details"]["causes"][0]["message"],
            "The disruption budget web needs 2 healthy pods and has 3 currently"
        );
        // Not terminating yet: still disrupted, so not healthy.
        budget["status"] = status(&budget, &pods, 3);
        assert_eq!(budget["status"]["currentHealthy"], 2);
        assert_eq!(budget["status"]["disruptionsAllowed"], 0);
        // Terminating: dropped from the map, still not healthy.
        pods[0]["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        budget["status"] = status(&budget, &pods, 3);
        assert!(budget["status"]["disruptedPods"].is_null());
        assert_eq!(budget["status"]["disruptionsAllowed"], 0);
        // The replacement is Ready.
        pods.push(pod("d", Some(true)));
        budget["status"] = status(&budget, &pods, 3);
        assert_eq!(budget["status"]["disruptionsAllowed"], 1);
    }

    #[test]
    fn a_budget_not_yet_processed_refuses() {
        let budget = pdb(json!({"minAvailable": 1}));
        let err = check_and_decrement(&budget, "a").unwrap_err().to_status();
        assert_eq!(err["code"], 429);
        assert_eq!(
            err["details"]["causes"][0]["message"],
            "The disruption budget web is still being processed by the server."
        );
    }

    #[test]
    fn pending_and_terminal_pods_ignore_budgets() {
        assert!(ignores_budgets(&json!({"status": {"phase": "Succeeded"}})));
        assert!(!ignores_budgets(&pod("a", Some(true))));
        assert!(!ignores_budgets(&pod("a", None)));
    }
}
