//! The pod eviction decision against PodDisruptionBudgets, computed from the live pods rather
//! than from PDB status maintained by a disruption controller.

use serde_json::{json, Value};

use crate::selector::LabelSelector;
use crate::status::ApiError;

/// One PDB's budget over the pods it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    pub name: String,
    pub desired_healthy: i64,
    pub current_healthy: i64,
}

impl Budget {
    pub fn disruptions_allowed(&self) -> i64 {
        self.current_healthy - self.desired_healthy
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
pub(crate) fn is_healthy(pod: &Value) -> bool {
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

/// The budget of `pdb` over `pods` (the pods of its namespace).
pub(crate) fn budget(pdb: &Value, pods: &[&Value]) -> Result<Budget, ApiError> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
    let selected: Vec<&&Value> = pods.iter().filter(|p| selects(pdb, p)).collect();
    let expected = selected.len() as i64;
    let current_healthy = selected.iter().filter(|p| is_healthy(p)).count() as i64;
    let spec = &pdb["spec"];
    let desired_healthy = if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
        scaled(min, expected).map_err(|e| internal(&name, e))?
    } else if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
        expected - scaled(max, expected).map_err(|e| internal(&name, e))?
    } else {
        // Neither set: treated as minAvailable 1, policy/v1beta1's default.
        1
    };
    Ok(Budget {
        name,
        desired_healthy: desired_healthy.max(0),
        current_healthy,
    })
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

/// The real server's answer when a budget allows no disruption.
pub(crate) fn refused(budget: &Budget) -> ApiError {
    ApiError::new(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
    )
    .with_details(json!({
        "causes": [{
            "reason": "DisruptionBudget",
            "message": format!(
                "The disruption budget {} needs {} healthy pods and has {} currently",
                budget.name, budget.desired_healthy, budget.current_healthy
            ),
        }],
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
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn min_available_counts_ready_and_statusless_pods() {
        let pods = [pod("a", Some(true)), pod("b", None), pod("c", Some(false))];
        let refs: Vec<&Value> = pods.iter().collect();
        let b = budget(&pdb(json!({"minAvailable": 2})), &refs).unwrap();
        assert_eq!((b.desired_healthy, b.current_healthy), (2, 2));
        assert_eq!(b.disruptions_allowed(), 0);
        let b = budget(&pdb(json!({"minAvailable": "50%"})), &refs).unwrap();
        assert_eq!(b.desired_healthy, 2, "50% of 3 rounds up");
    }

    #[test]
    fn max_unavailable_is_subtracted_from_selected_pods() {
        let pods = [
            pod("a", Some(true)),
            pod("b", Some(true)),
            pod("c", Some(true)),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let b = budget(&pdb(json!({"maxUnavailable": 1})), &refs).unwrap();
        assert_eq!(b.disruptions_allowed(), 1);
        let b = budget(&pdb(json!({"maxUnavailable": "10%"})), &refs).unwrap();
        assert_eq!(b.desired_healthy, 2, "10% of 3 rounds up to 1 unavailable");
    }

    #[test]
    fn refusal_names_the_budget() {
        let b = Budget {
            name: "web".into(),
            desired_healthy: 2,
            current_healthy: 1,
        };
        let status = refused(&b).to_status();
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "The disruption budget web needs 2 healthy pods and has 1 currently"
        );
    }

    #[test]
    fn pending_and_terminal_pods_ignore_budgets() {
        assert!(ignores_budgets(&json!({"status": {"phase": "Succeeded"}})));
        assert!(!ignores_budgets(&pod("a", Some(true))));
        assert!(!ignores_budgets(&pod("a", None)));
    }
}
