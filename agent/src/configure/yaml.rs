//! `kubernetes.kubelet`: edits of the kubelet's YAML config with the
//! `yaml-edit` crate (lossless syntax tree: comments, blank lines, key order
//! and the formatting of untouched nodes survive). A value already equal to
//! the wanted one (compared as YAML values, not text) is left alone.
//!
//! Unlike KubeOS, a list value replaces the list instead of being appended to
//! it, so a request applied twice does not double the list.

use super::request::Operation;
use log::warn;
use miniserde::json::{Number, Value};
use std::collections::BTreeMap;
use std::str::FromStr;
use yaml_edit::{Mapping, ScalarValue, YamlFile, YamlValue};

/// Sets or deletes the value at `path` (already split, see
/// [`super::key_path`]) in the YAML document `text`.
pub fn edit(text: &str, path: &[String], op: Operation, value: &Value) -> Result<String, String> {
    let file = YamlFile::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    if file.documents().count() > 1 {
        return Err("holds several YAML documents; the kubelet reads one".into());
    }
    let doc = file.ensure_document();
    let root = match doc.as_mapping() {
        Some(m) => m,
        None if op == Operation::Delete => return Ok(text.to_owned()),
        // An empty document gets its root mapping from its first key.
        None if doc.set(path[0].as_str(), Mapping::new()) => doc
            .as_mapping()
            .ok_or("the document's root did not become a mapping")?,
        None => return Err("the document's root is not a mapping".into()),
    };
    match op {
        Operation::Set => set(&root, path, value)?,
        Operation::Delete => delete(&root, path),
    }
    Ok(file.to_string())
}

fn set(m: &Mapping, path: &[String], value: &Value) -> Result<(), String> {
    let (key, rest) = path.split_first().ok_or("empty key")?;
    let key = key.as_str();
    if rest.is_empty() {
        return set_value(m, key, value);
    }
    let child = match m.get(key) {
        Some(node) => match node.as_mapping() {
            Some(child) => child.clone(),
            None if node.as_scalar().is_some_and(|s| s.is_null()) => new_mapping(m, key)?,
            None => return Err(format!("`{key}` holds a value that is not a mapping")),
        },
        None => new_mapping(m, key)?,
    };
    set(&child, rest, value)
}

fn new_mapping(m: &Mapping, key: &str) -> Result<Mapping, String> {
    m.set(key, Mapping::new());
    m.get_mapping(key)
        .ok_or_else(|| format!("could not add mapping `{key}`"))
}

/// Sets one key to a JSON value; objects key by key (so a nested object
/// merges into an existing mapping), everything else in one piece.
fn set_value(m: &Mapping, key: &str, value: &Value) -> Result<(), String> {
    if let Value::Object(o) = value {
        let child = match m.get_mapping(key) {
            Some(child) => child,
            None => new_mapping(m, key)?,
        };
        for (k, v) in o.iter() {
            set_value(&child, k, v)?;
        }
        return Ok(());
    }
    let wanted = to_yaml(value)?;
    if m.get(key).is_some_and(|node| node.yaml_eq(&wanted)) {
        return Ok(());
    }
    m.set(key, wanted);
    Ok(())
}

fn delete(m: &Mapping, path: &[String]) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if m.remove(key.as_str()).is_none() {
            warn!(
                "kubelet: `{}` is not set; nothing to delete",
                path.join(".")
            );
        }
        return;
    }
    match m.get_mapping(key.as_str()) {
        Some(child) => delete(&child, rest),
        None => warn!("kubelet: `{key}` is not a mapping here; nothing to delete"),
    }
}

fn to_yaml(value: &Value) -> Result<YamlValue, String> {
    Ok(match value {
        Value::Null => YamlValue::scalar(ScalarValue::null()),
        Value::Bool(b) => YamlValue::scalar(*b),
        Value::Number(Number::U64(n)) => {
            YamlValue::scalar(i64::try_from(*n).map_err(|_| format!("{n} is too large"))?)
        }
        Value::Number(Number::I64(n)) => YamlValue::scalar(*n),
        Value::Number(Number::F64(n)) => YamlValue::scalar(*n),
        Value::String(s) => YamlValue::scalar(s.as_str()),
        Value::Array(a) => YamlValue::Sequence(a.iter().map(to_yaml).collect::<Result<_, _>>()?),
        Value::Object(o) => YamlValue::Mapping(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), to_yaml(v)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "\
# kubelet config, managed by hand
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration

evictionHard:
  memory.available: 100Mi   # keep this comment
  nodefs.available: 10%
port: 10250
";

    fn path(s: &str) -> Vec<String> {
        super::super::key_path(s).unwrap()
    }

    fn json(s: &str) -> Value {
        miniserde::json::from_str(s).unwrap()
    }

    fn set(text: &str, key: &str, v: &str) -> String {
        edit(text, &path(key), Operation::Set, &json(v)).unwrap()
    }

    #[test]
    fn update_keeps_comments_and_other_keys() {
        let out = set(KUBELET, r#"evictionHard."memory.available""#, r#""200Mi""#);
        assert_eq!(out, KUBELET.replace("100Mi", "200Mi"));
        let out = set(KUBELET, "port", "20250");
        assert_eq!(out, KUBELET.replace("10250", "20250"));
    }

    #[test]
    fn add_nested_and_idempotent() {
        let out = set(KUBELET, "authorization.mode", r#""Webhook""#);
        assert!(out.starts_with(KUBELET), "{out}");
        assert!(out.ends_with("authorization:\n  mode: Webhook\n"), "{out}");
        assert_eq!(set(&out, "authorization.mode", r#""Webhook""#), out);
        let out = set(&out, "clusterDNS", r#"["10.96.0.10"]"#);
        assert_eq!(set(&out, "clusterDNS", r#"["10.96.0.10"]"#), out);
        let out = set(&out, "serializeImagePulls", "false");
        assert_eq!(set(&out, "serializeImagePulls", "false"), out);
        let empty = set("", "a.b", "1");
        assert_eq!(empty, "a:\n  b: 1\n");
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        let out = set("a: 1\n", "b", r#""true""#);
        let out = set(&out, "c", r#""10""#);
        assert_eq!(set(&out, "b", r#""true""#), out);
        assert_ne!(set(&out, "b", "true"), out);
        assert_ne!(set(&out, "c", "10"), out);
    }

    #[test]
    fn delete_and_errors() {
        let p = path(r#"evictionHard."nodefs.available""#);
        let out = edit(KUBELET, &p, Operation::Delete, &Value::Null).unwrap();
        assert_eq!(out, KUBELET.replace("  nodefs.available: 10%\n", ""));
        let again = edit(&out, &p, Operation::Delete, &Value::Null).unwrap();
        assert_eq!(again, out);
        let err = edit(KUBELET, &path("port.x"), Operation::Set, &json("1")).unwrap_err();
        assert!(err.contains("not a mapping"), "{err}");
        assert!(edit("- 1\n", &path("a"), Operation::Set, &json("1")).is_err());
        assert!(edit("a: [1\n", &path("a"), Operation::Set, &json("1")).is_err());
    }
}
