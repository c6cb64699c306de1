//! The admission policy that keeps each os-proxy to its own Node and OSInstance
//! (deploy/admission.yaml), evaluated as shipped: its CEL expressions run in a CEL
//! interpreter against admission requests shaped as the API server builds them
//! (`request`, `object`, `oldObject`, `variables`), with the API server's order: match
//! conditions, then variables, then every validation. No API server runs here, so this
//! checks the policy's logic, not its registration.

use cel_interpreter::{Context, Program, Value as Cel};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use operator::controller::start_status;
use operator::crd::{NodePhase, OpsType, SysConfigs};
use proxy::report;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

const PROXY: &str = "system:serviceaccount:os-upgrade-system:os-proxy";
const CLAIM: &str = "authentication.kubernetes.io/node-name";

fn policy() -> ValidatingAdmissionPolicy {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/admission.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "a policy and its binding");
    let binding: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(docs[1].clone()).unwrap();
    let spec = binding.spec.unwrap();
    assert_eq!(spec.policy_name.as_deref(), Some("os-proxy-own-node"));
    assert_eq!(spec.validation_actions, Some(vec!["Deny".to_owned()]));
    serde_json::from_value(docs[0].clone()).unwrap()
}

fn eval(expr: &str, ctx: &Context) -> Cel {
    let program = Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
    program
        .execute(ctx)
        .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
}

/// `Ok` when the policy admits the request (or does not apply to it), else the message.
fn admit(request: Value, object: Value, old: Value) -> Result<(), String> {
    let spec = policy().spec.unwrap();
    let mut ctx = Context::default();
    ctx.add_variable("request", &request).unwrap();
    ctx.add_variable("object", &object).unwrap();
    ctx.add_variable("oldObject", &old).unwrap();
    for c in spec.match_conditions.unwrap_or_default() {
        if eval(&c.expression, &ctx) != Cel::Bool(true) {
            return Ok(());
        }
    }
    let mut vars: HashMap<String, Cel> = HashMap::new();
    for v in spec.variables.unwrap_or_default() {
        let value = eval(&v.expression, &ctx);
        vars.insert(v.name, value);
        let map: HashMap<cel_interpreter::objects::Key, Cel> = vars
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.clone()))
            .collect();
        ctx.add_variable_from_value("variables", Cel::Map(map.into()));
    }
    for v in spec.validations.unwrap_or_default() {
        if eval(&v.expression, &ctx) != Cel::Bool(true) {
            return Err(match (&v.message_expression, v.message) {
                (Some(m), _) => match eval(m, &ctx) {
                    Cel::String(s) => s.to_string(),
                    other => panic!("{m} is not a string: {other:?}"),
                },
                (None, Some(m)) => m,
                (None, None) => v.expression.clone(),
            });
        }
    }
    Ok(())
}

fn request(user: &str, node_claim: Option<&str>, op: &str, resource: &str, name: &str) -> Value {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let extra = match node_claim {
        Some(n) => json!({ CLAIM: [n], "authentication.kubernetes.io/pod-name": ["os-proxy-x"] }),
        None => json!({}),
    };
    json!({
        "userInfo": { "username": user, "extra": extra },
        "operation": op, "name": name, "subResource": sub,
        "resource": { "group": "", "version": "v1", "resource": resource },
    })
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name,
            "labels": { "kubernetes.io/hostname": name, "node-role.kubernetes.io/control-plane": "" },
            "annotations": { "node.alpha.kubernetes.io/ttl": "0" } },
        "spec": { "podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"] },
    })
}

fn cordoned(name: &str) -> Value {
    let mut n = node(name);
    n["spec"]["unschedulable"] = json!(true);
    n["metadata"]["annotations"]["upgrade.openeuler.org/cordoned-by"] = json!("os-proxy");
    n
}

fn osinstance(name: &str) -> Value {
    json!({
        "apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OSInstance",
        "metadata": { "name": name, "namespace": "os-upgrade-system" },
        "spec": { "nodestatus": "idle" },
    })
}

#[test]
fn a_proxy_cordons_and_uncordons_its_own_node() {
    let req = request(PROXY, Some("w1"), "UPDATE", "nodes", "w1");
    assert_eq!(admit(req.clone(), cordoned("w1"), node("w1")), Ok(()));
    assert_eq!(admit(req, node("w1"), cordoned("w1")), Ok(()));
}

#[test]
fn a_proxy_cannot_touch_another_node() {
    let req = request(PROXY, Some("w1"), "UPDATE", "nodes", "cp1");
    let err = admit(req, cordoned("cp1"), node("cp1")).unwrap_err();
    assert!(err.contains("may not write"), "{err}");
}

#[test]
fn on_its_own_node_a_proxy_changes_nothing_but_the_cordon() {
    let req = || request(PROXY, Some("w1"), "UPDATE", "nodes", "w1");
    let mut labelled = cordoned("w1");
    labelled["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!(null);
    labelled["metadata"]["labels"]["os"] = json!("pick-me");
    let mut tainted = node("w1");
    tainted["spec"]["taints"] = json!([{ "key": "x", "effect": "NoSchedule" }]);
    let mut annotated = node("w1");
    annotated["metadata"]["annotations"]["evil"] = json!("1");
    let mut unannotated = node("w1");
    unannotated["metadata"]["annotations"] = json!({});
    let mut provider = node("w1");
    provider["spec"]["providerID"] = json!("aws:///i-123");
    for (what, new) in [
        ("a label", labelled),
        ("a taint", tainted),
        ("an annotation added", annotated),
        ("an annotation removed", unannotated),
        ("the provider ID", provider),
    ] {
        let err = admit(req(), new, node("w1")).expect_err(what);
        assert!(err.contains("only spec.unschedulable"), "{what}: {err}");
    }
    for (op, sub) in [("DELETE", "nodes"), ("UPDATE", "nodes/status")] {
        let err = admit(
            request(PROXY, Some("w1"), op, sub, "w1"),
            node("w1"),
            node("w1"),
        )
        .expect_err(op);
        assert!(err.contains("only updates its Node"), "{op} {sub}: {err}");
    }
}

#[test]
fn a_proxy_writes_its_own_osinstance_only() {
    let create = request(PROXY, Some("w1"), "CREATE", "osinstances", "w1");
    assert_eq!(admit(create, osinstance("w1"), Value::Null), Ok(()));
    let status = request(PROXY, Some("w1"), "UPDATE", "osinstances/status", "w1");
    assert_eq!(admit(status, osinstance("w1"), osinstance("w1")), Ok(()));
    let other = request(PROXY, Some("w1"), "UPDATE", "osinstances", "cp1");
    assert!(admit(other, osinstance("cp1"), osinstance("cp1")).is_err());
    let other = request(PROXY, Some("w1"), "CREATE", "osinstances", "cp1");
    assert!(admit(other, osinstance("cp1"), Value::Null).is_err());
}

#[test]
fn a_token_without_the_node_claim_is_denied() {
    let req = request(PROXY, None, "UPDATE", "nodes", "w1");
    let err = admit(req, cordoned("w1"), node("w1")).unwrap_err();
    assert!(
        err.contains("no authentication.kubernetes.io/node-name"),
        "{err}"
    );
}

#[test]
fn other_users_are_not_this_policys_business() {
    for user in [
        "system:serviceaccount:os-upgrade-system:os-operator",
        "system:serviceaccount:kube-system:node-controller",
        "kubernetes-admin",
    ] {
        let req = request(user, None, "UPDATE", "nodes", "cp1");
        let mut labelled = node("cp1");
        labelled["metadata"]["labels"]["x"] = json!("y");
        assert_eq!(admit(req, labelled, node("cp1")), Ok(()), "{user}");
    }
    // A proxy of another namespace's installation is someone else too.
    let req = request(
        "system:serviceaccount:default:os-proxy",
        Some("w1"),
        "UPDATE",
        "nodes",
        "cp1",
    );
    assert_eq!(admit(req, cordoned("cp1"), node("cp1")), Ok(()));
}

/// `base` after the JSON merge patch `patch`, as the API server applies one.
fn merged(base: &Value, patch: &Value) -> Value {
    let mut v = base.clone();
    json_patch::merge(&mut v, patch);
    v
}

fn t0() -> jiff::Timestamp {
    "2026-11-27T00:00:00Z".parse().unwrap()
}

/// `name`'s OSInstance as the operator leaves it when it starts an upgrade to v2 (its own
/// status write).
fn assigned(name: &str) -> Value {
    let mut osi = osinstance(name);
    osi["spec"]["nodestatus"] = json!("upgrade");
    merged(
        &osi,
        &json!({ "status": start_status(OpsType::Upgrade, "v2", t0()) }),
    )
}

#[test]
fn a_proxy_reports_progress_and_results_on_its_own_osinstance() {
    let status = || request(PROXY, Some("w1"), "UPDATE", "osinstances/status", "w1");
    let settings = SysConfigs {
        version: Some("s1".into()),
        configs: None,
    };
    // The proxy's own status patches, in the order of an upgrade, then a failure.
    let writes = [
        report::phase_patch(NodePhase::Preparing, "downloading", t0()),
        report::progress_patch(40, "downloading 1 GiB of 2 GiB"),
        report::phase_patch(NodePhase::Draining, "evicting 2 pods", t0()),
        report::step_patch("waiting for 1 pod", t0()),
        report::phase_patch(NodePhase::Rebooting, "rebooting into v2", t0()),
        report::applied_patch("upgradeconfigs", &settings),
        report::applied_patch("sysconfigs", &settings),
        report::succeeded_patch("v2", Some(&settings), Some(&settings), t0()),
        report::failed_patch("trial boot of v2 failed", Some("v1"), t0()),
    ];
    let mut old = assigned("w1");
    for patch in writes {
        let new = merged(&old, &patch);
        assert_eq!(admit(status(), new.clone(), old), Ok(()), "{patch}");
        old = new;
    }
    // Done: the node handed back to the operator (a spec write).
    let spec = request(PROXY, Some("w1"), "UPDATE", "osinstances", "w1");
    let idle = merged(&old, &report::idle_spec_patch());
    assert_eq!(admit(spec, idle, old), Ok(()));
}

#[test]
fn a_proxy_cannot_set_or_change_the_operators_stamp_of_an_operation() {
    let status = || request(PROXY, Some("w1"), "UPDATE", "osinstances/status", "w1");
    let deny = |what: &str, new: Value, old: Value| {
        let err = admit(status(), new, old).expect_err(what);
        assert!(
            err.contains("the operator starts operations"),
            "{what}: {err}"
        );
    };
    for (field, forged) in [
        ("startedAt", json!("2100-01-01T00:00:00Z")),
        ("operation", json!("config")),
        ("targetVersion", json!("v9")),
    ] {
        let old = assigned("w1");
        let set = json!({ "status": { field: forged } });
        deny(&format!("{field} changed"), merged(&old, &set), old.clone());
        let removed = json!({ "status": { field: null } });
        deny(&format!("{field} removed"), merged(&old, &removed), old);
        // On an instance no operator started yet.
        let idle = osinstance("w1");
        deny(&format!("{field} added"), merged(&idle, &set), idle.clone());
        let create = request(PROXY, Some("w1"), "CREATE", "osinstances", "w1");
        let err = admit(create, merged(&idle, &set), Value::Null).expect_err(field);
        assert!(err.contains("the operator starts operations"), "{err}");
    }
    // The operator starts operations.
    let operator = request(
        "system:serviceaccount:os-upgrade-system:os-operator",
        None,
        "UPDATE",
        "osinstances/status",
        "w1",
    );
    assert_eq!(admit(operator, assigned("w1"), osinstance("w1")), Ok(()));
}
