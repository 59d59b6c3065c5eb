//! Kubernetes `Status` errors, shared by the REST layer and the in-process `Store` API.

use serde_json::{json, Value};

/// An API error in the shape the real server reports it: an HTTP code, a machine-readable
/// `reason` (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Expired, ...) and a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// `details` of the Status (name, group, kind), when known.
    pub details: Option<Value>,
}

/// `details` as the real server writes them: an empty group (the core group) is left out.
fn details(group: &str, resource: &str, name: &str) -> Option<Value> {
    let mut d = json!({"name": name, "kind": resource});
    if !group.is_empty() {
        d["group"] = group.into();
    }
    Some(d)
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(group, resource)),
            )
        }
    }

    /// The answer for a path or kind the server does not serve.
    pub fn no_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(group, resource)),
            )
        }
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    qualified(group, resource)
                ),
            )
        }
    }

    /// 422 Invalid; `field` and `why` become the single cause, as the real server reports it.
    pub fn invalid(group: &str, kind: &str, name: &str, field: &str, why: &str) -> Self {
        ApiError {
            details: Some(json!({
                "name": name, "group": group, "kind": kind,
                "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}],
            })),
            ..Self::new(
                422,
                "Invalid",
                format!("{kind} \"{name}\" is invalid: {field}: {why}"),
            )
        }
    }

    /// 422 Invalid for a query parameter the real server forbids in this combination (its
    /// ListOptions validation): `field` and `why` as the real server words them.
    pub fn list_options_forbidden(field: &str, why: &str) -> Self {
        ApiError {
            details: Some(json!({
                "group": "meta.k8s.io", "kind": "ListOptions",
                "causes": [{"reason": "FieldValueForbidden", "message": format!("Forbidden: {why}"),
                    "field": field}],
            })),
            ..Self::new(
                422,
                "Invalid",
                format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {why}"),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// The `Status` object sent as a response body or inside a watch ERROR event.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}
