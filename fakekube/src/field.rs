//! Field errors as apimachinery's `field.Error` reports them, and the 422 `Invalid` Status
//! (`apierrors.NewInvalid`) that carries them: one message listing every error, and one
//! `details.causes` entry per error with its reason, field path and message body.

use serde_json::{json, Value};

use crate::registry::ResourceType;
use crate::status::ApiError;

/// One invalid field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    /// The cause's `reason`: `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// `spec.maxunavailable`, `spec.sysconfigs.configs[0].model`.
    pub field: String,
    /// `ErrorBody()`: everything after `field: `.
    pub body: String,
}

impl FieldError {
    pub fn required(field: &str) -> Self {
        Self::with(field, "FieldValueRequired", "Required value".to_string())
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        let body = format!("Invalid value: {}: {detail}", go_value(value));
        Self::with(field, "FieldValueInvalid", body)
    }

    /// A wrong JSON type; `value` is the name of the type found, as the schema validator
    /// reports it.
    pub fn type_invalid(field: &str, found: &str, detail: &str) -> Self {
        let body = format!("Invalid value: {found:?}: {detail}");
        Self::with(field, "FieldValueTypeInvalid", body)
    }

    pub fn not_supported(field: &str, value: &Value, supported: &[Value]) -> Self {
        let listed: Vec<String> = supported
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("{s:?}"),
                other => format!("{:?}", other.to_string()),
            })
            .collect();
        let body = format!(
            "Unsupported value: {}: supported values: {}",
            go_value(value),
            listed.join(", ")
        );
        Self::with(field, "FieldValueNotSupported", body)
    }

    pub fn too_long(field: &str, max: u64) -> Self {
        let body = format!("Too long: may not be longer than {max}");
        Self::with(field, "FieldValueTooLong", body)
    }

    pub fn too_many(field: &str, count: usize, max: u64) -> Self {
        let body = format!("Too many: {count}: must have at most {max} items");
        Self::with(field, "FieldValueTooMany", body)
    }

    fn with(field: &str, reason: &'static str, body: String) -> Self {
        FieldError {
            reason,
            field: field.to_string(),
            body,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A bad value as Go's `%q` (strings) or `%v` (numbers, booleans) prints it in field errors.
pub(crate) fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `Kind.group "name" is invalid: ...` with its causes, as `apierrors.NewInvalid` builds it.
pub(crate) fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> ApiError {
    let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let aggregate = match listed.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let kind = if rt.group.is_empty() {
        rt.kind.to_string()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
        .collect();
    ApiError::new(422, format!("{kind} {name:?} is invalid: {aggregate}"))
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn one_error_is_not_bracketed_and_many_are() {
        let rt = registry::find("", "v1", "pods").unwrap();
        let one = invalid(rt, "p", &[FieldError::required("spec.x")]);
        assert_eq!(one.message, "Pod \"p\" is invalid: spec.x: Required value");
        assert_eq!(one.details.as_ref().unwrap()["kind"], "Pod");
        let two = invalid(
            rt,
            "p",
            &[
                FieldError::required("spec.x"),
                FieldError::invalid("spec.y", &json!(0), "too small"),
            ],
        );
        assert_eq!(
            two.message,
            "Pod \"p\" is invalid: [spec.x: Required value, spec.y: Invalid value: 0: too small]"
        );
        let causes = &two.details.unwrap()["causes"];
        assert_eq!(causes[1]["reason"], "FieldValueInvalid");
        assert_eq!(causes[1]["field"], "spec.y");
        assert_eq!(causes[1]["message"], "Invalid value: 0: too small");
    }

    #[test]
    fn unsupported_values_are_quoted_as_go_does() {
        let e = FieldError::not_supported(
            "spec.opstype",
            &json!("bad"),
            &[json!("upgrade"), json!("config")],
        );
        assert_eq!(
            e.to_string(),
            "spec.opstype: Unsupported value: \"bad\": supported values: \"upgrade\", \"config\""
        );
    }
}
