//! Validation the real server applies that clients of this project can trip over, for the
//! types where it is cheap to copy: `events.k8s.io/v1` Events (`ValidateEventCreate`), whose
//! `note` is limited to 1024 bytes.

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::ApiError;

/// `NoteLengthLimit`, in bytes.
pub(crate) const NOTE_LIMIT: usize = 1024;
/// `ReportingInstanceLengthLimit`, `ActionLengthLimit`, `ReasonLengthLimit`.
const SHORT_LIMIT: usize = 128;

/// Checks an object about to be stored (created or updated).
pub(crate) fn object(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let errors = if rt.group == "events.k8s.io" {
        event(obj)
    } else {
        Vec::new()
    };
    if errors.is_empty() {
        return Ok(());
    }
    let listed = if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    };
    let kind = if rt.group.is_empty() {
        rt.kind.to_string()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    Err(
        ApiError::new(422, format!("{kind} \"{name}\" is invalid: {listed}")).with_details(
            serde_json::json!({"name": name, "group": rt.group, "kind": rt.kind,
                "causes": errors.iter().map(|e| serde_json::json!({"message": e})).collect::<Vec<_>>()}),
        ),
    )
}

fn event(obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let text = |field: &str| obj[field].as_str().unwrap_or("");
    if obj["eventTime"].is_null() {
        errors.push("eventTime: Required value".to_string());
    }
    match text("type") {
        "Normal" | "Warning" => {}
        other => errors.push(format!(
            "type: Unsupported value: {other:?}: supported values: \"Normal\", \"Warning\""
        )),
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let value = text(field);
        if value.is_empty() {
            errors.push(format!("{field}: Required value"));
        } else if field != "reportingController" && value.len() > SHORT_LIMIT {
            errors.push(format!(
                "{field}: Invalid value: \"\": can have at most {SHORT_LIMIT} characters"
            ));
        }
    }
    if text("note").len() > NOTE_LIMIT {
        errors.push(format!(
            "note: Too long: may not be more than {NOTE_LIMIT} bytes"
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use serde_json::json;

    fn valid() -> Value {
        json!({"eventTime": "2026-01-01T00:00:00.000000Z", "type": "Normal",
            "reportingController": "os-operator", "reportingInstance": "op-1",
            "action": "Upgrade", "reason": "NodeStarted", "note": "ok"})
    }

    #[test]
    fn a_note_over_1024_bytes_is_refused() {
        let rt = registry::find("events.k8s.io", "v1", "events").unwrap();
        assert!(object(rt, "e", &valid()).is_ok());
        let mut long = valid();
        // 512 two-byte characters: 1024 bytes, the limit.
        long["note"] = json!("é".repeat(512));
        assert!(object(rt, "e", &long).is_ok());
        long["note"] = json!("é".repeat(513));
        let err = object(rt, "e", &long).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert_eq!(
            err.message,
            "Event.events.k8s.io \"e\" is invalid: note: Too long: may not be more than 1024 bytes"
        );
    }

    #[test]
    fn required_fields_are_named_together() {
        let rt = registry::find("events.k8s.io", "v1", "events").unwrap();
        let err = object(rt, "e", &json!({"type": "Odd"})).unwrap_err();
        for field in [
            "eventTime",
            "type",
            "reportingController",
            "action",
            "reason",
        ] {
            assert!(err.message.contains(field), "{}", err.message);
        }
        let core = registry::find("", "v1", "events").unwrap();
        assert!(
            object(core, "e", &json!({})).is_ok(),
            "core events are not checked"
        );
    }
}
