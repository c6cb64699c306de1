//! Label and field selectors: the `labelSelector`/`fieldSelector` query strings of list and
//! watch, and the structured `metav1.LabelSelector` of a PodDisruptionBudget.

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            // apimachinery: `!=` also matches objects without the label.
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e,!f,g in (x,y),h notin (z)`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        split_top_level(text)
            .into_iter()
            .map(|term| parse_requirement(term.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSelector)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|r| r.matches(labels))
    }

    /// A `metav1.LabelSelector` (`matchLabels` and `matchExpressions`) as requirements.
    pub fn from_structured(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector["matchLabels"].as_object() {
            for (key, value) in labels {
                let value = value.as_str().unwrap_or_default().to_string();
                requirements.push(Requirement::Equals(key.clone(), value));
            }
        }
        for expr in selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = expr["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            requirements.push(match expr["operator"].as_str().unwrap_or_default() {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(format!("{other:?} is not a valid selector operator")),
            });
        }
        Ok(LabelSelector(requirements))
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms.into_iter().filter(|t| !t.trim().is_empty()).collect()
}

fn parse_requirement(term: &str) -> Result<Requirement, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_string()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().into(),
            value.trim().into(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key.trim().into(), value.trim().into()));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = term.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(bad)?;
            let values = inner.split(',').map(|v| v.trim().to_string()).collect();
            let key = key.trim().to_string();
            return Ok(if notin {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    if term.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Requirement::Exists(term.to_string()))
}

/// A parsed `fieldSelector`, restricted to the fields the real server supports for the type.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str, rt: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || rt.fields.contains(&field);
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, rt: &ResourceType, object: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (field_value(rt, object, field) == *value) == *equal)
    }
}

fn field_value(rt: &ResourceType, object: &Value, field: &str) -> String {
    let found = field
        .split('.')
        .try_fold(object, |v, part| v.get(part))
        .filter(|v| !v.is_null());
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
        None if rt.boolean_field(field) => "false".to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_forms() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let yes = [
            "app=web",
            "app==web",
            "app",
            "!zone",
            "tier!=back",
            "app in (db, web)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&p), "{s}");
        }
        let no = [
            "app=db",
            "zone",
            "!app",
            "app notin (web)",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&p), "{s}");
        }
        assert!(LabelSelector::parse("zone!=a").unwrap().matches(&p));
        assert!(LabelSelector::parse("").unwrap().matches(&p));
    }

    #[test]
    fn structured_selector_expressions() {
        let p = pod(json!({"app": "web"}));
        let sel = json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"},
                                 {"key": "app", "operator": "NotIn", "values": ["db"]}]});
        assert!(LabelSelector::from_structured(&sel).unwrap().matches(&p));
        let sel = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]});
        assert!(!LabelSelector::from_structured(&sel).unwrap().matches(&p));
        assert!(LabelSelector::from_structured(&json!({}))
            .unwrap()
            .matches(&p));
    }

    #[test]
    fn field_selectors_are_checked_against_supported_fields() {
        let pods = registry::find("", "v1", "pods").unwrap();
        let p = pod(json!({}));
        let sel = FieldSelector::parse("spec.nodeName=n1,metadata.name!=q", pods).unwrap();
        assert!(sel.matches(pods, &p));
        assert!(!FieldSelector::parse("spec.nodeName=n2", pods)
            .unwrap()
            .matches(pods, &p));
        let err = FieldSelector::parse("spec.priority=1", pods).unwrap_err();
        assert_eq!(err.code, 400);
        let nodes = registry::find("", "v1", "nodes").unwrap();
        let node = json!({"metadata": {"name": "n"}});
        assert!(FieldSelector::parse("spec.unschedulable=false", nodes)
            .unwrap()
            .matches(nodes, &node));
    }
}
