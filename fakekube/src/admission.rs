//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1): the policies and bindings
//! stored in the server judge every create, update, patch and delete, as the real admission
//! plugin does after authorization: a binding whose `validationActions` include `Deny` applies
//! its policy to requests its `matchConstraints.resourceRules` match; the `matchConditions`
//! must all hold; `variables` are evaluated in order; every `validations` expression must be
//! true, else the request is refused with the validation's reason (403 for Forbidden) and
//! message (or `messageExpression`). An expression that fails to evaluate refuses the request
//! under `failurePolicy: Fail` (the default) and is ignored under `Ignore`.
//!
//! The CEL is evaluated by the `cel-interpreter` crate: the standard macros and functions,
//! not the Kubernetes CEL libraries (no `quantity()`, `url()`, optional types). Not modelled:
//! `paramKind`/`paramRef`, the binding's `matchResources` and namespace/object selectors,
//! `auditAnnotations`, the `Warn` and `Audit` actions, and policy `status`.

use std::collections::HashMap;

use cel_interpreter::objects::Key;
use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::{json, Value};

use crate::rbac::UserInfo;
use crate::registry::ResourceType;
use crate::status::{reason_for, ApiError};
use crate::store::Store;

/// A bound policy, copied out of the store so that it can judge a write in progress.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    policy: Value,
    binding: String,
}

/// The request as `request` in the policy's CEL, plus the objects.
pub(crate) struct Request<'a> {
    pub user: &'a UserInfo,
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: &'static str,
    pub rt: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Every policy with a binding that denies.
pub(crate) fn bound(store: &Store) -> Vec<Bound> {
    let find = |plural: &str| store.find("admissionregistration.k8s.io", "v1", plural);
    let (Some(policies), Some(bindings)) = (
        find("validatingadmissionpolicies"),
        find("validatingadmissionpolicybindings"),
    ) else {
        return Vec::new();
    };
    store
        .list(bindings, None)
        .filter(|(_, b)| {
            b["spec"]["validationActions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "Deny"))
        })
        .filter_map(|((_, name), b)| {
            let policy = store.get(policies, "", b["spec"]["policyName"].as_str()?)?;
            Some(Bound {
                policy: policy.clone(),
                binding: name.clone(),
            })
        })
        .collect()
}

fn listed(v: &Value, wanted: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|x| x == "*" || x == wanted))
}

fn matches(policy: &Value, req: &Request<'_>) -> bool {
    let resource = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.rt.plural),
        None => req.rt.plural.to_string(),
    };
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    rules.as_array().into_iter().flatten().any(|rule| {
        listed(&rule["apiGroups"], req.rt.group)
            && listed(&rule["apiVersions"], req.rt.version)
            && listed(&rule["operations"], req.operation)
            && listed(&rule["resources"], &resource)
    })
}

fn request_json(req: &Request<'_>) -> Value {
    json!({
        "operation": req.operation,
        "name": req.name,
        "namespace": req.namespace,
        "subResource": req.subresource.unwrap_or(""),
        "resource": {"group": req.rt.group, "version": req.rt.version, "resource": req.rt.plural},
        "kind": {"group": req.rt.group, "version": req.rt.version, "kind": req.rt.kind},
        "userInfo": {"username": req.user.username, "groups": req.user.groups,
            "extra": req.user.extra},
    })
}

/// Judges one write: `object` is the object after it (`Null` for a delete), `old` the one
/// before (`Null` for a create).
pub(crate) fn admit(
    bound: &[Bound],
    req: &Request<'_>,
    object: &Value,
    old: &Value,
) -> Result<(), ApiError> {
    for b in bound.iter().filter(|b| matches(&b.policy, req)) {
        if let Err(denial) = judge(&b.policy, req, object, old) {
            let policy = b.policy["metadata"]["name"].as_str().unwrap_or_default();
            let message = format!(
                "{} {:?} is forbidden: ValidatingAdmissionPolicy '{policy}' with binding '{}' denied request: {}",
                req.rt.qualified(),
                req.name,
                b.binding,
                denial.message
            );
            let mut err = ApiError::new(denial.code, message);
            err.reason = denial.reason;
            return Err(
                err.with_details(json!({"name": req.name, "group": req.rt.group,
                "kind": req.rt.plural})),
            );
        }
    }
    Ok(())
}

struct Denial {
    code: u16,
    reason: &'static str,
    message: String,
}

fn eval(expr: &str, ctx: &Context) -> Result<Cel, String> {
    let program = Program::compile(expr).map_err(|e| format!("compilation failed: {e}"))?;
    program
        .execute(ctx)
        .map_err(|e| format!("expression '{expr}' resulted in error: {e}"))
}

fn judge(policy: &Value, req: &Request<'_>, object: &Value, old: &Value) -> Result<(), Denial> {
    let spec = &policy["spec"];
    let ignore_errors = spec["failurePolicy"] == "Ignore";
    let failed = |message: String| Denial {
        code: 403,
        reason: "Forbidden",
        message,
    };
    let mut ctx = Context::default();
    let added = ctx
        .add_variable("request", request_json(req))
        .and_then(|_| ctx.add_variable("object", object))
        .and_then(|_| ctx.add_variable("oldObject", old));
    if let Err(e) = added {
        return Err(failed(format!("cannot build the CEL request: {e}")));
    }
    let run = |expr: &str, ctx: &Context| -> Result<Option<Cel>, Denial> {
        match eval(expr, ctx) {
            Ok(v) => Ok(Some(v)),
            Err(_) if ignore_errors => Ok(None),
            Err(e) => Err(failed(e)),
        }
    };
    for condition in spec["matchConditions"].as_array().into_iter().flatten() {
        match run(condition["expression"].as_str().unwrap_or("false"), &ctx)? {
            Some(Cel::Bool(true)) => {}
            _ => return Ok(()),
        }
    }
    let mut variables: HashMap<Key, Cel> = HashMap::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        let value = run(v["expression"].as_str().unwrap_or("null"), &ctx)?.unwrap_or(Cel::Null);
        let name = v["name"].as_str().unwrap_or_default().to_string();
        variables.insert(name.into(), value);
        ctx.add_variable_from_value("variables", Cel::Map(variables.clone().into()));
    }
    for v in spec["validations"].as_array().into_iter().flatten() {
        let expr = v["expression"].as_str().unwrap_or("false");
        if matches!(run(expr, &ctx)?, Some(Cel::Bool(true)) | None) {
            continue;
        }
        let message = match (v["messageExpression"].as_str(), v["message"].as_str()) {
            (Some(m), _) => match eval(m, &ctx) {
                Ok(Cel::String(s)) => s.to_string(),
                _ => format!("failed expression: {expr}"),
            },
            (None, Some(m)) => m.to_string(),
            (None, None) => format!("failed expression: {expr}"),
        };
        let (code, reason) = match v["reason"].as_str() {
            Some("Invalid") => (422, "Invalid"),
            Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
            Some("Unauthorized") => (401, "Unauthorized"),
            _ => (403, reason_for(403)),
        };
        return Err(Denial {
            code,
            reason,
            message,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Value {
        json!({"metadata": {"name": "own-node"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["nodes"]}]},
            "matchConditions": [{"name": "proxy",
                "expression": "request.userInfo.username == 'proxy'"}],
            "variables": [{"name": "node", "expression":
                "'node-name' in request.userInfo.extra ? request.userInfo.extra['node-name'][0] : ''"}],
            "validations": [
                {"expression": "request.name == variables.node",
                 "messageExpression": "'may not write node ' + request.name", "reason": "Forbidden"},
                {"expression": "!has(object.spec.taints)", "message": "no taints"}]}})
    }

    fn user(name: &str, node: &str) -> UserInfo {
        let mut u = UserInfo::service_account("ns", "x");
        u.username = name.into();
        u.extra.insert("node-name".into(), vec![node.into()]);
        u
    }

    fn nodes() -> &'static ResourceType {
        crate::registry::find("", "v1", "nodes").unwrap()
    }

    fn request<'a>(user: &'a UserInfo, name: &'a str) -> Request<'a> {
        Request {
            user,
            operation: "UPDATE",
            rt: nodes(),
            subresource: None,
            namespace: "",
            name,
        }
    }

    #[test]
    fn a_bound_policy_denies_with_its_message_and_reason() {
        let bound = [Bound {
            policy: policy(),
            binding: "b".into(),
        }];
        let proxy = user("proxy", "w1");
        let node = json!({"metadata": {"name": "w1"}, "spec": {}});
        assert!(admit(&bound, &request(&proxy, "w1"), &node, &node).is_ok());
        let err = admit(&bound, &request(&proxy, "w2"), &node, &node).unwrap_err();
        assert_eq!((err.code, err.reason), (403, "Forbidden"));
        assert_eq!(
            err.message,
            "nodes \"w2\" is forbidden: ValidatingAdmissionPolicy 'own-node' with binding 'b' \
             denied request: may not write node w2"
        );
        let tainted = json!({"metadata": {"name": "w1"}, "spec": {"taints": []}});
        let err = admit(&bound, &request(&proxy, "w1"), &tainted, &node).unwrap_err();
        assert!(
            err.message.ends_with("denied request: no taints"),
            "{}",
            err.message
        );
        let admin = user("admin", "");
        assert!(admit(&bound, &request(&admin, "w2"), &tainted, &node).is_ok());
        let mut create = request(&proxy, "w2");
        create.operation = "CREATE";
        assert!(
            admit(&bound, &create, &tainted, &Value::Null).is_ok(),
            "not matched"
        );
    }
}
