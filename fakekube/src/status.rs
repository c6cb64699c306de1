//! API errors as the real server reports them: a `v1` `Status` object with `code`, `reason` and
//! `message`, which kube-rs turns into `kube::Error::Api`.

use serde_json::{json, Value};

use crate::registry::ResourceType;

/// A failed request: the HTTP status plus the `Status` body fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, format!("{} \"{name}\" not found", rt.qualified()))
            .with_details(named_details(rt, name))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(409, format!("{} \"{name}\" already exists", rt.qualified()))
            .with_reason("AlreadyExists")
            .with_details(named_details(rt, name))
    }

    /// The optimistic-concurrency failure of apiserver's `GuaranteedUpdate`.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_details(named_details(rt, name))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self::new(
            422,
            format!("{} \"{name}\" is invalid: {}", rt.kind, message.into()),
        )
        .with_details(named_details(rt, name))
    }

    /// What a watch or a continue token from before the retained history gets.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, message)
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// The `Status` body of a successful request that returns no object (eviction).
pub(crate) fn success_status(code: u16) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    })
}

fn named_details(rt: &ResourceType, name: &str) -> Value {
    json!({"name": name, "group": rt.group, "kind": rt.plural})
}

/// The `metav1.StatusReason` apimachinery uses for a bare HTTP code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn conflict_names_the_group_qualified_resource() {
        let rt = registry::find("coordination.k8s.io", "v1", "leases").unwrap();
        let status = ApiError::conflict(rt, "n1").to_status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert!(status["message"]
            .as_str()
            .unwrap()
            .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\""));
    }

    #[test]
    fn core_resources_are_not_group_qualified() {
        let rt = registry::find("", "v1", "pods").unwrap();
        let status = ApiError::not_found(rt, "p").to_status();
        assert_eq!(status["message"], "pods \"p\" not found");
        assert_eq!(status["reason"], "NotFound");
    }
}
