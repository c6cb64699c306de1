//! `container.containerd`: edits of containerd's TOML config with
//! `toml_edit` (format-preserving: comments, ordering and the formatting of
//! untouched items survive). Tables created on the way to a new key are
//! implicit, so `plugins."io.containerd.grpc.v1.cri".containerd.snapshotter`
//! adds one header, not one per level. A value already equal to the wanted
//! one is left alone; a list value replaces the list (KubeOS appended).

use super::request::Operation;
use log::warn;
use miniserde::json::{Number, Value as Json};
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// Sets or deletes the value at `path` in the TOML document `text`.
pub fn edit(text: &str, path: &[String], op: Operation, value: &Json) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    match op {
        Operation::Set => set(doc.as_table_mut(), path, value)?,
        Operation::Delete => delete(doc.as_table_mut(), path),
    }
    Ok(doc.to_string())
}

fn set(t: &mut dyn TableLike, path: &[String], value: &Json) -> Result<(), String> {
    let (key, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        return set_value(t, key, value);
    }
    child_table(t, key)
        .ok_or_else(|| format!("`{key}` holds a value that is not a table"))
        .and_then(|child| set(child, rest, value))
}

/// The table under `key`, created (implicit) when missing; `None` when the
/// key holds something else.
fn child_table<'a>(t: &'a mut dyn TableLike, key: &str) -> Option<&'a mut dyn TableLike> {
    if t.get(key).is_none() {
        let mut table = Table::new();
        table.set_implicit(true);
        t.insert(key, Item::Table(table));
    }
    match t.get_mut(key)? {
        Item::Table(table) => Some(table),
        Item::Value(Value::InlineTable(table)) => Some(table),
        _ => None,
    }
}

/// Sets one key; objects key by key (merging into an existing table),
/// everything else in one piece, keeping the old value's comments.
fn set_value(t: &mut dyn TableLike, key: &str, value: &Json) -> Result<(), String> {
    if let Json::Object(o) = value {
        let child = child_table(t, key)
            .ok_or_else(|| format!("`{key}` holds a value that is not a table"))?;
        for (k, v) in o.iter() {
            set_value(child, k, v)?;
        }
        return Ok(());
    }
    let mut wanted = to_toml(value)?;
    match t.get_mut(key) {
        Some(Item::Value(old)) if same(old, value) => {}
        Some(Item::Value(old)) => {
            *wanted.decor_mut() = old.decor().clone();
            *old = wanted;
        }
        _ => {
            t.insert(key, Item::Value(wanted));
        }
    }
    Ok(())
}

fn delete(t: &mut dyn TableLike, path: &[String]) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if t.remove(key).is_none() {
            warn!(
                "containerd: `{}` is not set; nothing to delete",
                path.join(".")
            );
        }
        return;
    }
    match t.get_mut(key) {
        Some(Item::Table(child)) => delete(child, rest),
        Some(Item::Value(Value::InlineTable(child))) => delete(child, rest),
        _ => warn!("containerd: `{key}` is not a table here; nothing to delete"),
    }
}

fn to_toml(value: &Json) -> Result<Value, String> {
    Ok(match value {
        Json::Null => return Err("null is not a TOML value; use operation delete".into()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(Number::U64(n)) => {
            Value::from(i64::try_from(*n).map_err(|_| format!("{n} is too large for TOML"))?)
        }
        Json::Number(Number::I64(n)) => Value::from(*n),
        Json::Number(Number::F64(n)) => Value::from(*n),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => {
            let mut array = Array::new();
            for v in a.iter() {
                array.push(to_toml(v)?);
            }
            Value::Array(array)
        }
        Json::Object(o) => {
            let mut table = InlineTable::new();
            for (k, v) in o.iter() {
                table.insert(k, to_toml(v)?);
            }
            Value::InlineTable(table)
        }
    })
}

/// Whether a TOML value equals a JSON value (numbers by value).
fn same(old: &Value, new: &Json) -> bool {
    match (old, new) {
        (Value::String(s), Json::String(n)) => s.value() == n,
        (Value::Boolean(b), Json::Bool(n)) => b.value() == n,
        (Value::Integer(i), Json::Number(Number::I64(n))) => i.value() == n,
        (Value::Integer(i), Json::Number(Number::U64(n))) => i64::try_from(*n) == Ok(*i.value()),
        (Value::Float(f), Json::Number(Number::F64(n))) => f.value() == n,
        (Value::Array(a), Json::Array(n)) => {
            a.len() == n.len() && a.iter().zip(n.iter()).all(|(a, n)| same(a, n))
        }
        (Value::InlineTable(t), Json::Object(n)) => {
            t.len() == n.len()
                && n.iter()
                    .all(|(k, v)| t.get(k).is_some_and(|old| same(old, v)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = r#"# containerd config
version = 2
disabled_plugins = []  # none

[grpc]
  address = "/run/containerd/containerd.sock"
  uid = 0

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.8"   # pinned
"#;

    fn path(s: &str) -> Vec<String> {
        super::super::key_path(s).unwrap()
    }

    fn set(text: &str, key: &str, v: &str) -> String {
        let v: Json = miniserde::json::from_str(v).unwrap();
        edit(text, &path(key), Operation::Set, &v).unwrap()
    }

    #[test]
    fn update_keeps_comments_and_layout() {
        let out = set(
            CONTAINERD,
            r#"plugins."io.containerd.grpc.v1.cri".sandbox_image"#,
            r#""registry.k8s.io/pause:3.9""#,
        );
        assert_eq!(out, CONTAINERD.replace("pause:3.8", "pause:3.9"));
        let out = set(CONTAINERD, "grpc.uid", "1");
        assert_eq!(out, CONTAINERD.replace("uid = 0", "uid = 1"));
        assert_eq!(set(CONTAINERD, "grpc.uid", "0"), CONTAINERD);
    }

    #[test]
    fn add_nested_is_idempotent() {
        let key = r#"plugins."io.containerd.grpc.v1.cri".containerd.snapshotter"#;
        let out = set(CONTAINERD, key, r#""overlayfs""#);
        assert!(out.starts_with(CONTAINERD), "{out}");
        assert!(
            out.contains(
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"overlayfs\"\n"
            ),
            "{out}"
        );
        assert_eq!(set(&out, key, r#""overlayfs""#), out);
        let out = set(
            &out,
            "disabled_plugins",
            r#"["io.containerd.internal.v1.tracing"]"#,
        );
        assert!(
            out.contains("disabled_plugins = [\"io.containerd.internal.v1.tracing\"]  # none\n"),
            "{out}"
        );
        assert_eq!(
            set(
                &out,
                "disabled_plugins",
                r#"["io.containerd.internal.v1.tracing"]"#
            ),
            out
        );
        assert_eq!(set("", "a.b", "2"), "[a]\nb = 2\n");
    }

    #[test]
    fn delete_and_errors() {
        let p = path("grpc.uid");
        let out = edit(CONTAINERD, &p, Operation::Delete, &Json::Null).unwrap();
        assert_eq!(out, CONTAINERD.replace("  uid = 0\n", ""));
        assert_eq!(edit(&out, &p, Operation::Delete, &Json::Null).unwrap(), out);
        let err = edit(
            CONTAINERD,
            &path("version.x"),
            Operation::Set,
            &Json::Bool(true),
        );
        assert!(err.unwrap_err().contains("not a table"));
        assert!(edit(CONTAINERD, &path("a"), Operation::Set, &Json::Null).is_err());
        assert!(edit("[a\n", &path("a"), Operation::Set, &Json::Bool(true)).is_err());
    }
}
