//! `/openapi/v2`: the OpenAPI v2 document the real server publishes for custom resources,
//! in JSON or in the protobuf encoding (gnostic's `openapi.v2.Document`) that kubectl asks
//! for. kubectl validates a manifest against it before sending (`--validate`) and computes
//! apply patches from it.
//!
//! Only CRD-defined kinds are described, each converted as `ToStructuralOpenAPIV2` does
//! (nullable and preserve-unknown-fields nodes become untyped, defaults dropped), with
//! `metadata` a reference to `ObjectMeta`. Built-in kinds are left out: kubectl skips
//! validation of a kind the document does not describe and computes strategic merge patches
//! for built-ins from its compiled-in types, so what it does against this server is what it
//! does against a real one, minus the client-side check of built-in manifests.

use serde_json::{json, Map, Value};

use crate::store::Store;

pub(crate) const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The document for what `store` serves now.
pub(crate) fn document(store: &Store) -> Value {
    let mut definitions = Map::new();
    definitions.insert(OBJECT_META.to_string(), object_meta());
    for served in store.crds.iter() {
        let rt = served.rt;
        let mut schema = if served.schema.is_object() {
            to_v2(&served.schema)
        } else {
            json!({"type": "object"})
        };
        let properties = schema["properties"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut all = Map::new();
        all.insert("apiVersion".into(), json!({"type": "string"}));
        all.insert("kind".into(), json!({"type": "string"}));
        all.insert(
            "metadata".into(),
            json!({"$ref": format!("#/definitions/{OBJECT_META}")}),
        );
        all.extend(properties);
        schema["properties"] = Value::Object(all);
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": rt.group, "kind": rt.kind, "version": rt.version}]);
        let reversed: Vec<&str> = rt.group.split('.').rev().collect();
        let name = format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind);
        definitions.insert(name, schema);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-fakekube"},
        "paths": {},
        "definitions": definitions,
    })
}

/// A structural v3 schema as the v2 document carries it.
fn to_v2(schema: &Value) -> Value {
    let Some(map) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "properties" => {
                let props = value.as_object().cloned().unwrap_or_default();
                let converted = props.iter().map(|(k, v)| (k.clone(), to_v2(v))).collect();
                out.insert(key.clone(), Value::Object(converted));
            }
            "items" | "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), to_v2(value));
            }
            "nullable" | "default" | "allOf" | "oneOf" | "anyOf" | "not" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let untyped =
        schema["nullable"] == true || schema["x-kubernetes-preserve-unknown-fields"] == true;
    if untyped {
        out.remove("items");
        out.remove("properties");
    }
    if schema["nullable"] == true
        || (!out.contains_key("items") && out.get("type") == Some(&json!("array")))
    {
        out.remove("type");
    }
    // A nullable property may be sent as null: kubectl must not require it.
    if let (Some(required), Some(props)) = (out.get("required").cloned(), map.get("properties")) {
        let kept: Vec<Value> = required
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| props[r.as_str().unwrap_or_default()]["nullable"] != true)
            .cloned()
            .collect();
        out.insert("required".into(), Value::Array(kept));
    }
    Value::Object(out)
}

fn object_meta() -> Value {
    let string = json!({"type": "string"});
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let integer = json!({"type": "integer", "format": "int64"});
    let owner = json!({"type": "object", "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {"apiVersion": string, "blockOwnerDeletion": {"type": "boolean"},
            "controller": {"type": "boolean"}, "kind": string, "name": string, "uid": string}});
    json!({"type": "object", "properties": {
        "annotations": strings, "creationTimestamp": string,
        "deletionGracePeriodSeconds": integer, "deletionTimestamp": string,
        "finalizers": {"type": "array", "items": string}, "generateName": string,
        "generation": integer, "labels": strings,
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "name": string, "namespace": string,
        "ownerReferences": {"type": "array", "items": owner},
        "resourceVersion": string, "selfLink": string, "uid": string,
    }})
}

/// Protocol buffers, as much of the wire format as the document needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        self.varint(u64::from(field) << 3);
        self.varint(u64::from(b));
    }

    fn int64(&mut self, field: u32, i: i64) {
        self.varint(u64::from(field) << 3);
        self.varint(i as u64);
    }

    fn double(&mut self, field: u32, d: f64) {
        self.varint(u64::from(field) << 3 | 1);
        self.0.extend_from_slice(&d.to_le_bytes());
    }
}

/// `openapi.v2.Any` holding a value as YAML text (JSON is YAML).
fn any(value: &Value) -> Pb {
    let mut a = Pb::default();
    a.string(2, &format!("{value}\n"));
    a
}

/// `NamedSchema` / `NamedAny`: field 1 the name, field 2 the value.
fn named(name: &str, value: Pb) -> Pb {
    let mut n = Pb::default();
    n.string(1, name);
    n.message(2, value);
    n
}

/// `openapi.v2.Schema`.
fn schema_pb(s: &Value) -> Pb {
    let mut pb = Pb::default();
    let text = |key: &str| s[key].as_str();
    for (field, key) in [(1, "$ref"), (2, "format"), (3, "title"), (4, "description")] {
        if let Some(t) = text(key) {
            pb.string(field, t);
        }
    }
    for (field, key) in [(7, "maximum"), (9, "minimum")] {
        if let Some(d) = s[key].as_f64() {
            pb.double(field, d);
        }
    }
    for (field, key) in [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
    ] {
        if s[key] == true {
            pb.boolean(field, true);
        }
    }
    for (field, key) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
    ] {
        if let Some(i) = s[key].as_i64() {
            pb.int64(field, i);
        }
    }
    if let Some(p) = text("pattern") {
        pb.string(13, p);
    }
    for r in s["required"].as_array().into_iter().flatten() {
        pb.string(19, r.as_str().unwrap_or_default());
    }
    for e in s["enum"].as_array().into_iter().flatten() {
        pb.message(20, any(e));
    }
    match &s["additionalProperties"] {
        Value::Object(_) => {
            let mut item = Pb::default();
            item.message(1, schema_pb(&s["additionalProperties"]));
            pb.message(21, item);
        }
        Value::Bool(b) => {
            let mut item = Pb::default();
            item.boolean(2, *b);
            pb.message(21, item);
        }
        _ => {}
    }
    if let Some(t) = text("type") {
        let mut item = Pb::default();
        item.string(1, t);
        pb.message(22, item);
    }
    if s["items"].is_object() {
        let mut item = Pb::default();
        item.message(1, schema_pb(&s["items"]));
        pb.message(23, item);
    }
    if let Some(props) = s["properties"].as_object() {
        let mut properties = Pb::default();
        for (name, p) in props {
            properties.message(1, named(name, schema_pb(p)));
        }
        pb.message(25, properties);
    }
    for (key, value) in s.as_object().into_iter().flatten() {
        if key.starts_with("x-") {
            pb.message(31, named(key, any(value)));
        }
    }
    pb
}

/// The document in gnostic's `openapi.v2.Document` protobuf encoding.
pub(crate) fn protobuf(doc: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Pb::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    pb.message(2, info);
    pb.message(8, Pb::default());
    let mut definitions = Pb::default();
    for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
        definitions.message(1, named(name, schema_pb(schema)));
    }
    pb.message(9, definitions);
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::store_with_crds;

    #[test]
    fn crds_are_published_as_v2_definitions() {
        let doc = document(&store_with_crds());
        let os = &doc["definitions"]["org.openeuler.upgrade.v1alpha1.OS"];
        assert_eq!(
            os["x-kubernetes-group-version-kind"][0]["kind"], "OS",
            "{os}"
        );
        assert_eq!(
            os["properties"]["metadata"]["$ref"],
            format!("#/definitions/{OBJECT_META}")
        );
        let spec = &os["properties"]["spec"]["properties"];
        assert_eq!(spec["failureBudget"]["type"], "integer");
        assert!(
            spec["checksum"].get("default").is_none(),
            "defaults dropped"
        );
        assert!(
            spec["cacert"].get("type").is_none(),
            "a nullable field is untyped in v2"
        );
        assert!(doc["definitions"][OBJECT_META].is_object());
    }

    #[test]
    fn protobuf_encodes_fields_with_their_numbers() {
        let mut pb = Pb::default();
        pb.varint(300);
        assert_eq!(pb.0, [0xac, 0x02]);
        let s = schema_pb(&json!({"type": "string", "maximum": 1.0}));
        // field 7 (double, wire type 1), then field 22 (message, key 178 as a two-byte
        // varint) holding field 1 "string".
        let mut want = vec![7 << 3 | 1];
        want.extend_from_slice(&1.0f64.to_le_bytes());
        want.extend_from_slice(&[0xb2, 0x01, 8, 1 << 3 | 2, 6]);
        want.extend_from_slice(b"string");
        assert_eq!(s.0, want);
    }
}
