//! CustomResourceDefinitions: an applied `apiextensions.k8s.io/v1` CRD makes the server serve
//! its resource (every served version, one stored table as with a `None` conversion), with the
//! names, scope, status subresource, schema and printer columns of its spec; deleting the CRD
//! stops serving it and removes its objects. The CRD's status gets `NamesAccepted` and
//! `Established` as the apiextensions controllers set them.

use serde_json::{json, Value};

use crate::field::FieldError;
use crate::registry::{self, Defined, ResourceType};
use crate::store::{Part, Store};

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Column {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A resource version a CRD serves.
#[derive(Debug)]
pub(crate) struct Served {
    pub rt: &'static ResourceType,
    /// The version's `openAPIV3Schema`, `Null` when it has none.
    pub schema: Value,
    /// The version's printer columns; empty when it names none (then the table has Age).
    pub columns: Vec<Column>,
}

/// What the stored CRDs make the server serve.
#[derive(Debug, Default)]
pub(crate) struct Crds {
    served: Vec<Served>,
}

impl Crds {
    /// Rebuilt from every stored CRD after each change to one. A CRD whose names a built-in
    /// type or an earlier CRD already serves is not served (its `NamesAccepted` would be false).
    pub fn from_objects<'a>(crds: impl Iterator<Item = &'a Value>) -> Crds {
        let mut served: Vec<Served> = Vec::new();
        for crd in crds {
            if !crd["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            for version in served_versions(crd) {
                let taken = registry::find(version.rt.group, version.rt.version, version.rt.plural)
                    .is_some()
                    || served.iter().any(|s| {
                        s.rt.group == version.rt.group
                            && s.rt.version == version.rt.version
                            && s.rt.plural == version.rt.plural
                    });
                if !taken {
                    served.push(version);
                }
            }
        }
        Crds { served }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Served> {
        self.served
            .iter()
            .find(|s| s.rt.group == group && s.rt.version == version && s.rt.plural == plural)
    }

    /// The CRD version behind a served resource type.
    pub fn of(&self, rt: &ResourceType) -> Option<&Served> {
        self.served.iter().find(|s| std::ptr::eq(s.rt, rt))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Served> {
        self.served.iter()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn served_versions(crd: &Value) -> Vec<Served> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let short_names = strings(&names["shortNames"]);
    let categories = strings(&names["categories"]);
    let kind = text(&names["kind"]);
    let singular = match text(&names["singular"]) {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] == Value::Bool(false) {
            continue;
        }
        let rt = registry::intern(Defined {
            group: spec["group"].as_str().unwrap_or_default(),
            version: v["name"].as_str().unwrap_or_default(),
            plural: names["plural"].as_str().unwrap_or_default(),
            kind: &kind,
            singular: &singular,
            namespaced: spec["scope"] == "Namespaced",
            status_subresource: v["subresources"]["status"].is_object(),
            short_names: &short_names,
            categories: &categories,
        });
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Column {
                name: text(&c["name"]),
                type_: text(&c["type"]),
                format: text(&c["format"]),
                description: text(&c["description"]),
                priority: c["priority"].as_i64().unwrap_or(0),
                json_path: text(&c["jsonPath"]),
            })
            .collect();
        out.push(Served {
            rt,
            schema: v["schema"]["openAPIV3Schema"].clone(),
            columns,
        });
    }
    out
}

/// The checks of `ValidateCustomResourceDefinition` that a mistake in a generated CRD would
/// trip: the name is `<plural>.<group>`, the names and scope are set, and exactly one served
/// version is the storage version, each with a schema of type object.
pub(crate) fn validate(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (group, plural) = (text(&spec["group"]), text(&spec["names"]["plural"]));
    for (field, value) in [
        ("spec.group", &group),
        ("spec.names.plural", &plural),
        ("spec.names.kind", &text(&spec["names"]["kind"])),
    ] {
        if value.is_empty() {
            errors.push(FieldError::required(field));
        }
    }
    let name = &crd["metadata"]["name"];
    if name.as_str() != Some(&format!("{plural}.{group}")) {
        let detail = "must be spec.names.plural+\".\"+spec.group";
        errors.push(FieldError::invalid("metadata.name", name, detail));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        errors.push(FieldError::not_supported(
            "spec.scope",
            &spec["scope"],
            &[json!("Cluster"), json!("Namespaced")],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if !versions.is_empty() && storage != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let schema = &v["schema"]["openAPIV3Schema"];
        if schema["type"] != "object" {
            errors.push(FieldError::required(&format!(
                "spec.versions[{i}].schema.openAPIV3Schema.type"
            )));
        }
    }
    errors
}

/// The status the apiextensions controllers give a CRD they serve, or `None` when `crd`
/// already has it.
pub(crate) fn established_status(crd: &Value) -> Option<Value> {
    let spec = &crd["spec"];
    let stored: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    let condition = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "reason": reason, "message": message});
    let wanted = json!({
        "acceptedNames": spec["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
    let current = &crd["status"];
    let same = current["acceptedNames"] == wanted["acceptedNames"]
        && current["storedVersions"] == wanted["storedVersions"]
        && current["conditions"].as_array().map(Vec::len) == Some(2);
    (!same).then(|| {
        let mut status = wanted;
        let now = crate::store::now_timestamp();
        for c in status["conditions"].as_array_mut().into_iter().flatten() {
            c["lastTransitionTime"] = json!(now);
        }
        status
    })
}

/// The project's CRDs, generated from the operator's Rust types (operator/tests/deploy.rs
/// checks that the file is current).
pub(crate) const PROJECT_CRDS: &str = include_str!("../../deploy/crds.yaml");

/// Creates every CustomResourceDefinition of a multi-document YAML text, established.
pub(crate) fn install(store: &mut Store, yaml: &str) -> Result<(), crate::status::ApiError> {
    use serde::Deserialize;
    let crd_rt = registry::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("the CRD type is built in");
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let crd = Value::deserialize(doc)
            .map_err(|e| crate::status::ApiError::bad_request(format!("CRD YAML: {e}")))?;
        if !crd.is_null() {
            store.create(crd_rt, "", crd)?;
        }
    }
    establish(store);
    Ok(())
}

/// Whether `rt` is the CustomResourceDefinition type itself.
pub(crate) fn is_crd_type(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}

/// The apiextensions controllers: every stored CRD gets its established status.
pub(crate) fn establish(store: &mut Store) {
    let Some(crd_rt) = registry::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    else {
        return;
    };
    let due: Vec<(String, Value)> = store
        .list(crd_rt, None)
        .filter_map(|((_, name), crd)| Some((name.clone(), established_status(crd)?)))
        .collect();
    for (name, status) in due {
        let result = store.update(crd_rt, "", &name, Part::Status, "update", |crd| {
            let mut crd = crd.clone();
            crd["status"] = status;
            Ok(crd)
        });
        if let Err(e) = result {
            tracing::debug!(%name, error = %e.message, "apiextensions controller");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(plural: &str, group: &str) -> Value {
        json!({"metadata": {"name": format!("{plural}.{group}")}, "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": plural, "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer",
                    "jsonPath": ".spec.size", "priority": 1}],
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    #[test]
    fn a_crd_serves_its_versions_with_its_names_and_columns() {
        let c = crd("widgets", "example.com");
        assert!(validate(&c).is_empty());
        let crds = Crds::from_objects([&c].into_iter());
        let served = crds.find("example.com", "v1", "widgets").unwrap();
        assert_eq!(served.rt.kind, "Widget");
        assert_eq!(served.rt.singular, "widget");
        assert_eq!(served.rt.short_names, ["wd"]);
        assert!(served.rt.namespaced && served.rt.status_subresource);
        assert_eq!(served.columns[0].priority, 1);
        assert!(std::ptr::eq(crds.of(served.rt).unwrap().rt, served.rt));
        let again = Crds::from_objects([&c].into_iter());
        assert!(
            std::ptr::eq(
                again.find("example.com", "v1", "widgets").unwrap().rt,
                served.rt
            ),
            "interned once"
        );
    }

    #[test]
    fn built_in_names_cannot_be_taken_and_bad_crds_are_named() {
        let pods = crd("pods", "");
        assert!(Crds::from_objects([&pods].into_iter())
            .iter()
            .next()
            .is_none());
        let mut bad = crd("widgets", "example.com");
        bad["metadata"]["name"] = json!("widgets");
        bad["spec"]["versions"][0]["storage"] = json!(false);
        let fields: Vec<_> = validate(&bad).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["metadata.name", "spec.versions"]);
    }

    #[test]
    fn established_status_is_written_once() {
        let mut c = crd("widgets", "example.com");
        let status = established_status(&c).unwrap();
        assert_eq!(status["conditions"][1]["type"], "Established");
        assert_eq!(status["acceptedNames"]["plural"], "widgets");
        c["status"] = status;
        assert!(established_status(&c).is_none());
    }
}
