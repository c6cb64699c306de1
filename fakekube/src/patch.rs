//! The four PATCH content types kube-rs sends, applied to the stored object.

use serde_json::Value;

use crate::registry::ResourceType;
use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// RFC 7386.
    Merge,
    /// RFC 6902.
    Json,
    /// Approximated as a merge patch: list merge keys and `$patch` directives are not known.
    Strategic,
    /// Server-side apply, approximated as a merge patch of the applied configuration that
    /// creates the object when missing; no field ownership.
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            other => Err(ApiError::new(
                415,
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, got {other:?}"),
            )),
        }
    }
}

/// Decodes a patch body: JSON for all types, YAML too for apply.
pub(crate) fn decode(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let decoded = match pt {
        PatchType::Apply => serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())),
        _ => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    decoded.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// The object after applying `patch` to `existing`.
pub(crate) fn apply(
    rt: &ResourceType,
    name: &str,
    pt: PatchType,
    existing: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let mut doc = existing.clone();
    match pt {
        PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            // The apiserver answers a failed `test` or a bad path with 422 Invalid.
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::invalid(rt, name, format!("json patch failed: {e}")))?;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;
    use serde_json::json;

    fn pods() -> &'static ResourceType {
        registry::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn content_types() {
        let ct = "application/merge-patch+json; charset=utf-8";
        assert_eq!(PatchType::from_content_type(ct).unwrap(), PatchType::Merge);
        assert_eq!(
            PatchType::from_content_type("application/json")
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let out = apply(
            pods(),
            "p",
            PatchType::Merge,
            &doc,
            &json!({"b": {"c": null}}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": 1, "b": {"d": 3}}));
    }

    #[test]
    fn failed_json_patch_test_is_invalid() {
        let doc = json!({"a": 1});
        let patch =
            json!([{"op": "test", "path": "/a", "value": 2}, {"op": "remove", "path": "/a"}]);
        let err = apply(pods(), "p", PatchType::Json, &doc, &patch).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
    }

    #[test]
    fn apply_accepts_yaml() {
        let body = b"metadata:\n  name: x\nspec:\n  a: 1\n";
        let v = decode(PatchType::Apply, body).unwrap();
        assert_eq!(v["spec"]["a"], 1);
    }
}
