//! A custom resource against its CRD's structural `openAPIV3Schema`, in the real server's
//! order for a request body: nulls of non-nullable fields without a default are dropped,
//! defaults are filled in (top down, so a defaulted object gets its own defaults), unknown
//! fields are pruned unless `x-kubernetes-preserve-unknown-fields` keeps them, and then the
//! result is validated (types, nullable, enum, required, minimum/maximum, maxLength,
//! min/maxItems), each failure a field error as `ValidateCustomResource` words it.
//!
//! `format: date-time` strings are checked (the CRDs here use it for their times). `pattern`,
//! the other formats (this project's CRDs have only integer ones, `int64`, `uint32`, ...,
//! which the real server does not check either), `multipleOf`, `uniqueItems`, the
//! `x-kubernetes-validations` CEL rules and list/map types are not checked (no CRD here uses
//! them).

use serde_json::{Map, Value};

use crate::field::FieldError;

/// Prunes and defaults `obj` (a whole object: apiVersion, kind and metadata are kept as the
/// server keeps them) and returns the validation errors of the result.
pub(crate) fn admit(schema: &Value, obj: &mut Value) -> Vec<FieldError> {
    normalize(schema, obj, true);
    let mut errors = Vec::new();
    validate(schema, obj, "", &mut errors);
    errors
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

fn nullable(schema: &Value) -> bool {
    schema["nullable"] == Value::Bool(true)
}

/// Null drop, defaulting and pruning of one value under its schema.
fn normalize(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => normalize_object(schema, map, root),
        Value::Array(items) if schema["items"].is_object() => {
            for item in items {
                normalize(&schema["items"], item, false);
            }
        }
        _ => {}
    }
}

fn normalize_object(schema: &Value, map: &mut Map<String, Value>, root: bool) {
    let embedded = schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
    let keep = |key: &str| (root || embedded) && matches!(key, "apiVersion" | "kind" | "metadata");
    if let Some(properties) = schema["properties"].as_object() {
        map.retain(|key, v| {
            keep(key)
                || match properties.get(key) {
                    Some(p) => !v.is_null() || nullable(p) || p.get("default").is_some(),
                    None => preserves_unknown(schema),
                }
        });
        for (key, property) in properties {
            if keep(key) {
                continue;
            }
            if let Some(default) = property.get("default") {
                let unset = match map.get(key) {
                    None => true,
                    Some(Value::Null) => !nullable(property),
                    Some(_) => false,
                };
                if unset {
                    map.insert(key.clone(), default.clone());
                }
            }
            if let Some(v) = map.get_mut(key) {
                normalize(property, v, false);
            }
        }
    } else if schema["additionalProperties"].is_object() {
        let values = &schema["additionalProperties"];
        map.retain(|key, v| keep(key) || !v.is_null() || nullable(values));
        for (key, v) in map.iter_mut() {
            if !keep(key) {
                normalize(values, v, false);
            }
        }
    } else if !preserves_unknown(schema) && schema["additionalProperties"] != Value::Bool(true) {
        map.retain(|key, _| keep(key));
    }
}

/// The JSON type name go-openapi reports for a value.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match wanted {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        // A JSON number with no fraction decodes to an integer in Go's unstructured objects.
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    if value.is_null() {
        if !nullable(schema) && schema["type"].is_string() {
            let t = schema["type"].as_str().unwrap_or_default();
            errors.push(FieldError::type_invalid(
                path,
                "null",
                &format!("{path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    if int_or_string {
        if !(has_type(value, "integer") || value.is_string()) {
            let found = type_name(value);
            errors.push(FieldError::type_invalid(
                path,
                found,
                &format!("{path} in body must be of type integer,string: {found:?}"),
            ));
            return;
        }
    } else if let Some(t) = schema["type"].as_str() {
        if !has_type(value, t) {
            let found = type_name(value);
            errors.push(FieldError::type_invalid(
                path,
                found,
                &format!("{path} in body must be of type {t}: {found:?}"),
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(FieldError::not_supported(path, value, allowed));
        }
    }
    match value {
        Value::Object(map) => validate_object(schema, map, path, errors),
        Value::Array(items) => validate_array(schema, items, path, errors),
        Value::String(s) => {
            if let Some(max) = schema["maxLength"].as_u64() {
                if s.chars().count() as u64 > max {
                    errors.push(FieldError::too_long(path, max));
                }
            }
            if let Some(min) = schema["minLength"].as_u64() {
                if (s.chars().count() as u64) < min {
                    let detail = format!("{path} in body should be at least {min} chars long");
                    errors.push(FieldError::invalid(path, value, &detail));
                }
            }
            if schema["format"] == "date-time" && !is_date_time(s) {
                errors.push(FieldError::type_invalid(
                    path,
                    s,
                    &format!("{path} in body must be of type date-time: {s:?}"),
                ));
            }
        }
        Value::Number(n) => validate_number(schema, value, n.as_f64().unwrap_or(0.0), path, errors),
        _ => {}
    }
}

/// Whether `s` passes the real server's `format: date-time` check (go-openapi strfmt's
/// `IsDateTime`, case-insensitive): a full date (`YYYY-MM-DD`, a real calendar day), a `T`,
/// then `hh:mm:ss` (hours to 23, minutes and seconds to 59), optionally one character and
/// digits (the fraction), and `Z` or `+hh:mm`/`-hh:mm`. No zone, no seconds or a space for
/// the `T` are refused there, so here too.
fn is_date_time(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let mut parts = lower.split('t');
    let (Some(date), Some(time)) = (parts.next(), parts.next()) else {
        return false;
    };
    full_date(date) && rfc3339_time(time)
}

/// `n` ASCII digits at the start of `s`, as a number, and the rest.
fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

fn full_date(s: &str) -> bool {
    let parsed = (|| {
        let (year, rest) = digits(s, 4)?;
        let (month, rest) = digits(rest.strip_prefix('-')?, 2)?;
        let (day, rest) = digits(rest.strip_prefix('-')?, 2)?;
        rest.is_empty().then_some((year, month, day))
    })();
    parsed.is_some_and(|(y, m, d)| jiff::civil::Date::new(y as i16, m as i8, d as i8).is_ok())
}

fn rfc3339_time(s: &str) -> bool {
    let zone = |z: &str| {
        z == "z"
            || (|| {
                let rest = z.strip_prefix('+').or_else(|| z.strip_prefix('-'))?;
                let (_, rest) = digits(rest, 2)?;
                let (_, rest) = digits(rest.strip_prefix(':')?, 2)?;
                rest.is_empty().then_some(())
            })()
            .is_some()
    };
    let clock = (|| {
        let (h, rest) = digits(s, 2)?;
        let (m, rest) = digits(rest.strip_prefix(':')?, 2)?;
        let (sec, rest) = digits(rest.strip_prefix(':')?, 2)?;
        (h <= 23 && m <= 59 && sec <= 59).then_some(rest)
    })();
    let Some(rest) = clock else {
        return false;
    };
    if zone(rest) {
        return true;
    }
    // One character of any kind, then at least one digit: the fraction.
    let mut chars = rest.chars();
    if chars.next().is_none() {
        return false;
    }
    let fraction = chars.as_str();
    let end = fraction
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(fraction.len());
    end > 0 && zone(&fraction[end..])
}

fn validate_number(
    schema: &Value,
    value: &Value,
    n: f64,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let bound = |key: &str| schema[key].as_f64();
    let flag = |key: &str| schema[key] == Value::Bool(true);
    let shown = |b: f64| crate::field::go_value(&serde_json::json!(b));
    if let Some(min) = bound("minimum") {
        let (bad, words) = if flag("exclusiveMinimum") {
            (n <= min, "greater than")
        } else {
            (n < min, "greater than or equal to")
        };
        if bad {
            let detail = format!("{path} in body should be {words} {}", shown(min));
            errors.push(FieldError::invalid(path, value, &detail));
        }
    }
    if let Some(max) = bound("maximum") {
        let (bad, words) = if flag("exclusiveMaximum") {
            (n >= max, "less than")
        } else {
            (n > max, "less than or equal to")
        };
        if bad {
            let detail = format!("{path} in body should be {words} {}", shown(max));
            errors.push(FieldError::invalid(path, value, &detail));
        }
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for required in schema["required"].as_array().into_iter().flatten() {
        let key = required.as_str().unwrap_or_default();
        if !map.contains_key(key) {
            errors.push(FieldError::required(&child(path, key)));
        }
    }
    let properties = schema["properties"].as_object();
    for (key, v) in map {
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match properties.and_then(|p| p.get(key)) {
            Some(property) => validate(property, v, &child(path, key), errors),
            None if schema["additionalProperties"].is_object() => {
                validate(
                    &schema["additionalProperties"],
                    v,
                    &child(path, key),
                    errors,
                );
            }
            None => {}
        }
    }
}

fn validate_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = schema["maxItems"].as_u64() {
        if items.len() as u64 > max {
            errors.push(FieldError::too_many(path, items.len(), max));
        }
    }
    if let Some(min) = schema["minItems"].as_u64() {
        if (items.len() as u64) < min {
            let detail = format!("{path} in body should have at least {min} items");
            errors.push(FieldError::invalid(
                path,
                &Value::Array(items.to_vec()),
                &detail,
            ));
        }
    }
    if schema["items"].is_object() {
        for (i, item) in items.iter().enumerate() {
            validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["osversion"], "properties": {
                "osversion": {"type": "string", "maxLength": 8},
                "opstype": {"type": "string", "enum": ["upgrade", "config"]},
                "budget": {"type": "integer", "default": 1, "minimum": 1.0},
                "note": {"type": "string", "nullable": true},
                "settings": {"type": "object", "default": {}, "properties": {
                    "mode": {"type": "string", "default": "parallel"}}},
                "configs": {"type": "array", "maxItems": 2, "items": {
                    "type": "object", "properties": {"key": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            }},
            "status": {"type": "object", "nullable": true, "properties": {
                "state": {"type": "string"}}},
        }})
    }

    #[test]
    fn date_time_strings_are_checked_as_the_real_server_checks_them() {
        let schema = json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"}}});
        for ok in [
            "2026-12-04T22:13:46Z",
            "2026-12-04T22:13:46.123456Z",
            "2026-12-04T22:13:46+01:00",
            "2026-12-04t22:13:46z",
            "2024-02-29T23:59:59-05:30",
        ] {
            let mut obj = json!({ "at": ok });
            assert!(admit(&schema, &mut obj).is_empty(), "{ok}");
        }
        for bad in [
            "yesterday",
            "",
            "1733350426",
            "2026-13-04T22:13:46Z",
            "2025-02-29T22:13:46Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T22:13:46",
            "2026-12-04 22:13:46Z",
            "2026-12-04T22:13Z",
            "2026-12-04T22:13:46+0100",
            "2026-12-04T22:13:46.Z",
        ] {
            let mut obj = json!({ "at": bad });
            let errors: Vec<String> = admit(&schema, &mut obj)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(
                errors,
                [format!(
                    "at: Invalid value: {bad:?}: at in body must be of type date-time: {bad:?}"
                )],
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_fill_absent_and_non_nullable_null_fields_top_down() {
        let mut obj = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "x"},
            "spec": {"osversion": "v1", "budget": null, "note": null}});
        assert!(admit(&schema(), &mut obj).is_empty());
        let spec = &obj["spec"];
        assert_eq!(spec["budget"], 1, "null of a defaulted field is defaulted");
        assert_eq!(spec["note"], Value::Null, "a nullable null stays");
        assert_eq!(spec["settings"], json!({"mode": "parallel"}));
        assert_eq!(obj["metadata"]["name"], "x");
    }

    #[test]
    fn unknown_fields_are_pruned_unless_preserved() {
        let mut obj = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {},
            "extra": 1, "spec": {"osversion": "v1", "typo": true,
                "configs": [{"key": "a", "junk": 1}],
                "free": {"anything": {"goes": 1}}, "labels": {"a": "b"}}});
        assert!(admit(&schema(), &mut obj).is_empty());
        assert!(obj.get("extra").is_none());
        assert!(obj["spec"].get("typo").is_none());
        assert_eq!(obj["spec"]["configs"], json!([{"key": "a"}]));
        assert_eq!(obj["spec"]["free"], json!({"anything": {"goes": 1}}));
        assert_eq!(obj["spec"]["labels"], json!({"a": "b"}));
    }

    #[test]
    fn errors_are_worded_as_the_real_server_words_them() {
        let mut obj = json!({"spec": {"opstype": "reboot", "budget": 0,
            "configs": [{}, {}, {}], "labels": {"a": 1}, "settings": "x"}});
        let errors: Vec<String> = admit(&schema(), &mut obj)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "spec.osversion: Required value",
                "spec.budget: Invalid value: 0: spec.budget in body should be greater than or equal to 1",
                "spec.configs: Too many: 3: must have at most 2 items",
                "spec.labels.a: Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\"",
                "spec.opstype: Unsupported value: \"reboot\": supported values: \"upgrade\", \"config\"",
                "spec.settings: Invalid value: \"string\": spec.settings in body must be of type object: \"string\"",
            ]
        );
        let mut long = json!({"spec": {"osversion": "123456789"}});
        let errors = admit(&schema(), &mut long);
        assert_eq!(
            errors[0].to_string(),
            "spec.osversion: Too long: may not be longer than 8"
        );
    }
}
