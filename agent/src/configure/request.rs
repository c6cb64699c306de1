//! KubeOS's `ConfigureRequest`, read from JSON as its proxy sends it.
//!
//! Reference: openEuler KubeOS `KubeOS-Rust/manager/src/api/types.rs`:
//! `ConfigureRequest { configs: Vec<Sysconfig> }`, `Sysconfig { model,
//! config_path, contents: HashMap<String, KeyInfo> }`, `KeyInfo { value:
//! serde_json::Value, operation: String }`. So on the wire:
//!
//! ```json
//! [{"configs":[{"model":"kernel.sysctl.persist","config_path":"",
//!   "contents":{"vm.swappiness":{"value":"10","operation":""}}}]}]
//! ```
//!
//! Also accepted, because a JSON object cannot hold one key twice (two
//! `pam.limits` lines for the same domain), the OS custom resource's own list
//! form: `"contents":[{"key":"vm.swappiness","value":"10","operation":""}]`,
//! and the CR's spelling `configpath`.

use crate::kubeos::single_param;
use miniserde::json::{Number, Object, Value};
use wire::json::get_str;

/// What to do with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// KubeOS's `""`, `add` and `update`: set the key, adding it if missing.
    Set,
    Delete,
}

impl Operation {
    fn parse(op: &str) -> Result<Operation, String> {
        match op.trim() {
            "" | "add" | "update" => Ok(Operation::Set),
            "delete" => Ok(Operation::Delete),
            other => Err(format!(
                "unknown operation {other:?} (expected add, update, delete or empty)"
            )),
        }
    }
}

/// One key of a model: KubeOS's `(key, KeyInfo)`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub operation: Operation,
}

impl Entry {
    /// The value as one line of text: strings as they are, numbers and
    /// booleans as JSON writes them, null as empty (KubeOS's
    /// `convert_json_value_to_string`); `None` for arrays and objects.
    pub fn text(&self) -> Option<String> {
        scalar_text(&self.value)
    }
}

pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(Number::U64(n)) => Some(n.to_string()),
        Value::Number(Number::I64(n)) => Some(n.to_string()),
        Value::Number(Number::F64(n)) => Some(n.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// KubeOS's `Sysconfig`: one model, the file it edits, its keys in order.
#[derive(Debug, Clone)]
pub struct Sysconfig {
    pub model: String,
    /// Empty: the model's default file.
    pub config_path: String,
    pub contents: Vec<Entry>,
}

/// KubeOS's `ConfigureRequest`.
#[derive(Debug, Clone, Default)]
pub struct ConfigureRequest {
    pub configs: Vec<Sysconfig>,
}

impl ConfigureRequest {
    pub fn from_params(params: Option<&Value>) -> Result<ConfigureRequest, String> {
        Self::from_object(single_param(params, "ConfigureRequest")?)
    }

    /// From the text of a request file: `{"configs":[..]}` or `[{"configs":..}]`.
    pub fn from_json(text: &str) -> Result<ConfigureRequest, String> {
        let value: Value = miniserde::json::from_str(text)
            .map_err(|_| "not a complete, valid JSON value".to_owned())?;
        Self::from_params(Some(&value))
    }

    fn from_object(o: &Object) -> Result<ConfigureRequest, String> {
        let configs = match o.get("configs") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Value::Object(c) => sysconfig(c).map_err(|e| format!("configs[{i}]: {e}")),
                    _ => Err(format!("configs[{i}] must be an object")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("field `configs` must be an array".into()),
        };
        Ok(ConfigureRequest { configs })
    }
}

fn sysconfig(o: &Object) -> Result<Sysconfig, String> {
    let model = get_str(o, "model")?.ok_or("lacks field `model`")?;
    let config_path = match get_str(o, "config_path")? {
        Some(p) => p,
        None => get_str(o, "configpath")?.unwrap_or_default(),
    };
    let contents = match o.get("contents") {
        None | Some(Value::Null) => vec![],
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, info)| {
                entry(key.clone(), info).map_err(|e| format!("{model} {key:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, item)| listed_entry(item).map_err(|e| format!("{model} contents[{i}]: {e}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{model}: `contents` must be an object or an array")),
    };
    Ok(Sysconfig {
        model,
        config_path,
        contents,
    })
}

/// `{"value":..,"operation":..}` under its key.
fn entry(key: String, info: &Value) -> Result<Entry, String> {
    let Value::Object(info) = info else {
        return Err("must be an object {\"value\":..,\"operation\":..}".into());
    };
    Ok(Entry {
        key,
        value: info.get("value").cloned().unwrap_or(Value::Null),
        operation: Operation::parse(&get_str(info, "operation")?.unwrap_or_default())?,
    })
}

/// `{"key":..,"value":..,"operation":..}` (the custom resource's form).
fn listed_entry(item: &Value) -> Result<Entry, String> {
    let Value::Object(o) = item else {
        return Err("must be an object {\"key\":..,\"value\":..,\"operation\":..}".into());
    };
    let key = get_str(o, "key")?.ok_or("lacks field `key`")?;
    entry(key, item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeos_map_form() {
        let r = ConfigureRequest::from_json(
            r#"[{"configs":[{"model":"kernel.sysctl","config_path":"",
            "contents":{"b":{"value":1,"operation":"delete"},"a":{"value":"x","operation":""}}}]}]"#,
        )
        .unwrap();
        let c = &r.configs[0];
        assert_eq!(
            (c.model.as_str(), c.config_path.as_str()),
            ("kernel.sysctl", "")
        );
        assert_eq!(c.contents.len(), 2);
        let b = c.contents.iter().find(|e| e.key == "b").unwrap();
        assert_eq!(
            (b.operation, b.text()),
            (Operation::Delete, Some("1".into()))
        );
    }

    #[test]
    fn list_form_keeps_order_and_duplicates() {
        let r = ConfigureRequest::from_json(
            r#"{"configs":[{"model":"pam.limits","configpath":"/etc/security/limits.conf",
            "contents":[{"key":"*","value":"soft.nofile.1024"},
                        {"key":"*","value":"hard.nofile.2048","operation":"update"}]}]}"#,
        )
        .unwrap();
        let c = &r.configs[0];
        assert_eq!(c.config_path, "/etc/security/limits.conf");
        let values: Vec<_> = c.contents.iter().map(|e| e.text().unwrap()).collect();
        assert_eq!(values, ["soft.nofile.1024", "hard.nofile.2048"]);
    }

    #[test]
    fn malformed_requests_say_where() {
        let err = |s: &str| ConfigureRequest::from_json(s).unwrap_err();
        assert!(err(r#"{"configs":[{"contents":{}}]}"#).contains("configs[0]: lacks field `model`"));
        assert!(
            err(r#"{"configs":[{"model":"m","contents":{"k":{"operation":"drop"}}}]}"#)
                .contains(r#"m "k": unknown operation "drop""#)
        );
        assert!(
            err(r#"{"configs":[{"model":"m","contents":[{"value":1}]}]}"#)
                .contains("m contents[0]: lacks field `key`")
        );
        assert!(err(r#"{"configs":3}"#).contains("must be an array"));
        assert!(err("[").contains("JSON"));
    }

    #[test]
    fn values_as_text() {
        assert_eq!(scalar_text(&Value::Null), Some(String::new()));
        assert_eq!(scalar_text(&Value::Bool(true)), Some("true".into()));
        assert_eq!(
            scalar_text(&Value::Number(Number::I64(-3))),
            Some("-3".into())
        );
        assert_eq!(scalar_text(&Value::Array(Default::default())), None);
    }
}
