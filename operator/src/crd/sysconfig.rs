//! KubeOS `sysconfigs` / `upgradeconfigs`: node settings applied with an operation.
//!
//! Field names and shapes follow KubeOS `api/v1alpha1/os_types.go` (`SysConfigs`, `SysConfig`,
//! `Content`). Every field is optional there, so every field is optional here.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A versioned set of settings. A node applies it when its applied `version` differs from this
/// one (KubeOS compares versions, not contents; an empty version is a version too).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SysConfigs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<SysConfig>>,
}

/// One kind of setting: `model` is `kernel.sysctl`, `kernel.sysctl.persist`,
/// `grub.cmdline.current` or `grub.cmdline.next` in KubeOS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SysConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// File to write, only for `kernel.sysctl.persist` (KubeOS default `/etc/sysctl.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configpath: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Vec<Content>>,
}

/// One key/value. `operation: delete` removes it; anything else adds or updates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    // Any JSON scalar: KubeOS's documented manifests write `value: 16384` unquoted, which its
    // later CRD accepts through `x-kubernetes-preserve-unknown-fields`; a string-typed schema
    // would reject those manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_value")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl Content {
    /// The value as the text the node writes: numbers and booleans as written, an absent or
    /// null value as empty (a bare grub.cmdline key such as `quiet`).
    pub fn value_text(&self) -> String {
        match &self.value {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }
}

fn any_json_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(value: Option<serde_json::Value>) -> Content {
        Content {
            key: Some("k".into()),
            value,
            operation: None,
        }
    }

    #[test]
    fn value_text_renders_scalars_as_written() {
        assert_eq!(
            content(Some(serde_json::json!(16384))).value_text(),
            "16384"
        );
        assert_eq!(content(Some(serde_json::json!("0"))).value_text(), "0");
        assert_eq!(content(Some(serde_json::json!(true))).value_text(), "true");
        assert_eq!(content(Some(serde_json::Value::Null)).value_text(), "");
        assert_eq!(content(None).value_text(), "");
    }

    #[test]
    fn absent_fields_stay_absent_on_the_wire() {
        let parsed: SysConfigs =
            serde_json::from_str(r#"{"configs":[{"model":"kernel.sysctl"}]}"#).unwrap();
        assert_eq!(parsed.version, None);
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"{"configs":[{"model":"kernel.sysctl"}]}"#
        );
    }
}
