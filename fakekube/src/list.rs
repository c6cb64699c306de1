//! LIST: selectors, `limit`/`continue` pagination and the list envelope.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::route::Target;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Key, Store};

/// The selectors of a list or watch request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_query(target: &Target, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = query.get("labelSelector").map(String::as_str).unwrap_or("");
        let fields = query.get("fieldSelector").map(String::as_str).unwrap_or("");
        Ok(Filter {
            namespace: target.namespace.clone(),
            labels: LabelSelector::parse(labels)?,
            fields: FieldSelector::parse(fields, target.rt)?,
        })
    }

    pub fn matches(&self, target: &Target, object: &Value) -> bool {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches(object)
            && self.fields.matches(target.rt, object)
    }
}

/// The list as the real server returns it, one page at a time. Pages after the first are read
/// from the current state rather than a snapshot at the first page's resourceVersion.
pub(crate) fn list(
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let filter = Filter::from_query(target, query)?;
    let limit = match query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => decode_continue(token, store.floor())?,
        None => (store.resource_version(), None),
    };
    let matching = store
        .list(target.rt, filter.namespace.as_deref())
        .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
        .filter(|(_, obj)| filter.matches(target, obj));
    let (mut items, mut last_key, mut more) = (Vec::new(), None, false);
    for (key, obj) in matching {
        if limit > 0 && items.len() == limit {
            more = true;
            break;
        }
        items.push(obj.clone());
        last_key = Some(key.clone());
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let (true, Some(last)) = (more, last_key) {
        metadata["continue"] = json!(encode_continue(list_rv, &last));
    }
    Ok(json!({
        "kind": format!("{}List", target.rt.kind),
        "apiVersion": target.rt.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// `{rv}|{namespace}|{name}`: opaque to clients, like the real (base64) token.
fn encode_continue(rv: u64, (ns, name): &Key) -> String {
    format!("{rv}|{ns}|{name}")
}

fn decode_continue(token: &str, floor: u64) -> Result<(u64, Option<Key>), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let mut parts = token.splitn(3, '|');
    let rv: u64 = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    if rv < floor {
        return Err(ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        ));
    }
    Ok((rv, Some((ns, name))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_string(), "a|b".to_string());
        let token = encode_continue(7, &key);
        assert_eq!(decode_continue(&token, 1).unwrap(), (7, Some(key)));
    }

    #[test]
    fn compacted_continue_tokens_expire() {
        let token = encode_continue(3, &("ns".into(), "a".into()));
        assert_eq!(decode_continue(&token, 5).unwrap_err().code, 410);
        assert_eq!(decode_continue("garbage", 1).unwrap_err().code, 400);
    }
}
