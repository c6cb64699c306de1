//! Server-side printing: a GET or LIST that accepts `application/json;as=Table;v=v1;
//! g=meta.k8s.io` (what `kubectl get` asks for) answers a `meta.k8s.io/v1` Table. A custom
//! resource's columns are Name plus its CRD version's `additionalPrinterColumns` (or Age when
//! it names none), each cell from a simple JSONPath (`.status.state`, `.a[0].b`) typed as the
//! column says, a `date` as its age (`HumanDuration`). Built-in types get Name and Age (the
//! real server has a printer per kind; no test here reads those columns).

use serde_json::{json, Value};

use crate::crd::Column;
use crate::registry::ResourceType;
use crate::store::Store;

/// Whether the Accept header asks for a v1 (or v1beta1) Table.
pub(crate) fn wanted(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
    })
}

fn name_column() -> Value {
    json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."})
}

fn age_column() -> Column {
    Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }
}

/// The Table of `objects` (one for a GET, the page for a LIST); `list_meta` is the list's
/// `metadata`; `include` is the `includeObject` parameter (`None`, `Metadata`, `Object`).
pub(crate) fn table(
    store: &Store,
    rt: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    include: &str,
    now: jiff::Timestamp,
) -> Value {
    let columns = match store.crds.of(rt) {
        Some(served) if !served.columns.is_empty() => served.columns.clone(),
        _ => vec![age_column()],
    };
    let mut definitions = vec![name_column()];
    definitions.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format,
            "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|c| cell(c, obj, now)));
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = obj.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]});
                }
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
        "columnDefinitions": definitions, "rows": rows})
}

/// The value at a simple JSONPath: `.a.b`, `.a[0].b`, `{.a.b}`.
fn lookup<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut at = obj;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            at = at.get(i)?;
        }
    }
    Some(at)
}

/// One cell as the CRD table convertor types it; `null` (printed empty) when the path
/// finds nothing or the value is not of the column's type.
fn cell(column: &Column, obj: &Value, now: jiff::Timestamp) -> Value {
    let Some(value) = lookup(obj, &column.json_path).filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match column.type_.as_str() {
        "integer" => value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
            })
            .map_or(Value::Null, |i| json!(i)),
        "number" => value.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => value.as_bool().map_or(Value::Null, |b| json!(b)),
        "date" => value
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(Value::Null, |t| {
                json!(human_duration(now.as_second() - t.as_second()))
            }),
        _ => match value {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
    }
}

/// apimachinery's `duration.HumanDuration`, for whole seconds.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::store_with_crds;

    #[test]
    fn kubectl_get_asks_for_a_table() {
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
        assert!(!wanted(
            "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn crd_columns_are_typed_and_dates_are_ages() {
        let store = store_with_crds();
        let os_rt = store
            .find("upgrade.openeuler.org", "v1alpha1", "os")
            .unwrap();
        let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let os = json!({"metadata": {"name": "os1", "creationTimestamp": "2026-01-01T00:57:30Z"},
            "spec": {"osversion": "v2", "opstype": "upgrade", "maxunavailable": 3},
            "status": {"state": "Progressing", "target": 3, "updated": 1.0}});
        let t = table(
            &store,
            os_rt,
            &[os],
            json!({"resourceVersion": "5"}),
            "Metadata",
            now,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[..4], ["Name", "Version", "Ops", "State"]);
        assert_eq!(names.last(), Some(&"Age"));
        let cells = &t["rows"][0]["cells"];
        let at = |name: &str| &cells[names.iter().position(|n| *n == name).unwrap()];
        assert_eq!(at("Name"), "os1");
        assert_eq!(at("State"), "Progressing");
        assert_eq!(at("Updated"), 1, "an integral number is an integer cell");
        assert_eq!(at("Failed"), &Value::Null);
        assert_eq!(at("Target"), 3);
        assert_eq!(at("Age"), "2m30s");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let wide = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(
            wide[names.iter().position(|n| *n == "Message").unwrap()]["priority"],
            1
        );
    }

    #[test]
    fn built_ins_have_name_and_age() {
        let store = Store::new(1);
        let nodes = store.find("", "v1", "nodes").unwrap();
        let now: jiff::Timestamp = "2026-01-03T00:00:00Z".parse().unwrap();
        let node = json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t = table(&store, nodes, &[node], json!({}), "None", now);
        assert_eq!(t["rows"][0]["cells"], json!(["n1", "2d"]));
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn human_durations_match_apimachinery() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}
