//! Errors: [`ApiServerError`] for start-up failures and [`ApiError`], the Kubernetes `Status`
//! answered to clients.

use std::path::PathBuf;

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use kinit_store::StoreError;
use serde_json::{json, Value};

/// Why the API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// A file named by a flag could not be read.
    #[error("cannot read {what} {path}: {source}; check the --{flag} flag")]
    ReadFile {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path} ({what}) is not usable: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A flag value is invalid.
    #[error("invalid --{flag} `{value}`: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// TLS could not be configured.
    #[error(
        "TLS setup failed: {0}; check --tls-cert-file, --tls-private-key-file and --client-ca-file"
    )]
    Tls(String),
    /// Listening on the secure port failed.
    #[error("cannot listen on {address}: {source}; is another API server running on that port?")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// The storage backend failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Authentication/authorization could not be set up.
    #[error("auth setup failed: {0}")]
    Auth(String),
    /// Creating the built-in objects (namespaces, `kubernetes` service, RBAC policy) failed.
    #[error("creating the built-in {what} failed: {reason}")]
    Bootstrap { what: String, reason: String },
}

/// A value shown in a [`Cause`] message.
pub trait CauseValue {
    /// Rendered like Kubernetes' field errors: `"text"` or `42`.
    fn render(&self) -> String;
}

impl CauseValue for &str {
    fn render(&self) -> String {
        format!("{self:?}")
    }
}

impl CauseValue for String {
    fn render(&self) -> String {
        format!("{self:?}")
    }
}

impl CauseValue for &String {
    fn render(&self) -> String {
        format!("{self:?}")
    }
}

macro_rules! numeric_cause_value {
    ($($t:ty),*) => {$(
        impl CauseValue for $t {
            fn render(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numeric_cause_value!(i64, u64, u16, i32, &serde_json::Number);

/// One field-level problem of an invalid object (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// Human message, e.g. `Required value`.
    pub message: String,
    /// JSON path of the field, e.g. `spec.template.spec.containers[0].name`.
    pub field: String,
}

impl Cause {
    /// A missing required field.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    /// A field with a bad value (strings are quoted, numbers are not, as Kubernetes prints them).
    pub fn invalid(field: impl Into<String>, value: impl CauseValue, why: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {why}", value.render()),
            field: field.into(),
        }
    }

    /// A duplicated list entry.
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: \"{value}\""),
            field: field.into(),
        }
    }

    /// A value outside an enumeration.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    /// A change to an immutable field.
    pub fn immutable(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            message: "field is immutable".into(),
            field: field.into(),
        }
    }

    /// A forbidden field.
    pub fn forbidden(field: impl Into<String>, why: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {why}"),
            field: field.into(),
        }
    }

    /// The same cause with another message.
    pub fn with_message(mut self, message: impl Into<String>) -> Cause {
        self.message = message.into();
        self
    }

    /// `field: message` as Kubernetes prints it in the Status message.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// The machine-readable `reason` of a `Status` (Kubernetes' `metav1.StatusReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusReason {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no valid credentials.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: the object or path does not exist.
    NotFound,
    /// 405: the verb is not served on the resource.
    MethodNotAllowed,
    /// 409: the object already exists.
    AlreadyExists,
    /// 409: a precondition or a concurrent write failed.
    Conflict,
    /// 410: the resourceVersion or continue token is too old.
    Expired,
    /// 413: the body is too large.
    RequestEntityTooLarge,
    /// 415: the body's media type is not accepted.
    UnsupportedMediaType,
    /// 422: the object fails validation.
    Invalid,
    /// 500: the server failed.
    InternalError,
    /// 503: a dependency is unavailable.
    ServiceUnavailable,
    /// 504: the request could not be served in time (e.g. a future resourceVersion).
    Timeout,
}

impl StatusReason {
    /// The reason as Kubernetes writes it in `Status.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::BadRequest => "BadRequest",
            StatusReason::Unauthorized => "Unauthorized",
            StatusReason::Forbidden => "Forbidden",
            StatusReason::NotFound => "NotFound",
            StatusReason::MethodNotAllowed => "MethodNotAllowed",
            StatusReason::AlreadyExists => "AlreadyExists",
            StatusReason::Conflict => "Conflict",
            StatusReason::Expired => "Expired",
            StatusReason::RequestEntityTooLarge => "RequestEntityTooLarge",
            StatusReason::UnsupportedMediaType => "UnsupportedMediaType",
            StatusReason::Invalid => "Invalid",
            StatusReason::InternalError => "InternalError",
            StatusReason::ServiceUnavailable => "ServiceUnavailable",
            StatusReason::Timeout => "Timeout",
        }
    }
}

impl std::fmt::Display for StatusReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets callers and tests compare a reason with its wire spelling.
impl PartialEq<&str> for StatusReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error answered as a Kubernetes `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason.
    pub reason: StatusReason,
    /// Human message.
    pub message: String,
    /// `details` object (name, group, kind, causes), if any.
    pub details: Option<Value>,
    /// Whether the error is a lost race of a compare-and-swap write (the store's revision
    /// moved on, or a create met an object created meanwhile): reading again and retrying
    /// can succeed. Preconditions the client set are never retryable.
    pub write_race: bool,
}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": resource });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

/// `pods` or `deployments.apps`, as Kubernetes names a resource in messages.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: StatusReason, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            write_race: false,
        }
    }

    /// Whether the reason is `reason`.
    pub fn is(&self, reason: StatusReason) -> bool {
        self.reason == reason
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, StatusReason::BadRequest, message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, StatusReason::Unauthorized, message)
    }

    /// 403 Forbidden for a resource request.
    pub fn forbidden(
        group: &str,
        resource: &str,
        name: &str,
        message: impl Into<String>,
    ) -> ApiError {
        let mut e = ApiError::new(403, StatusReason::Forbidden, message);
        e.details = Some(details(group, resource, name));
        e
    }

    /// 404 NotFound `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(
            404,
            StatusReason::NotFound,
            format!("{} \"{name}\" not found", qualified(group, resource)),
        );
        e.details = Some(details(group, resource, name));
        e
    }

    /// 404 for a path that names no API.
    pub fn path_not_found(path: &str) -> ApiError {
        ApiError::new(
            404,
            StatusReason::NotFound,
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, StatusReason::MethodNotAllowed, message)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            StatusReason::AlreadyExists,
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        );
        e.details = Some(details(group, resource, name));
        e
    }

    /// 409 Conflict (stale resourceVersion, precondition failed, apply conflict).
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            StatusReason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        );
        e.details = Some(details(group, resource, name));
        e
    }

    /// 410 Expired (compacted resourceVersion or continue token).
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, StatusReason::Expired, message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(415, StatusReason::UnsupportedMediaType, message)
    }

    /// 422 Invalid with per-field causes.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let rendered: Vec<String> = causes.iter().map(Cause::render).collect();
        let message = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let mut e = ApiError::new(
            422,
            StatusReason::Invalid,
            format!(
                "{} \"{name}\" is invalid: {message}",
                qualified(group, kind)
            ),
        );
        let mut d = details(group, kind, name);
        d["causes"] = Value::Array(
            causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect(),
        );
        e.details = Some(d);
        e
    }

    /// 422 for a patch that cannot be applied (failed `test` op, missing merge key, ...).
    pub fn unprocessable_patch(message: impl Into<String>) -> ApiError {
        ApiError::new(
            422,
            StatusReason::Invalid,
            format!(
                "the server rejected our request due to an error in our request: {}",
                message.into()
            ),
        )
    }

    /// 413 RequestEntityTooLarge (bodies over 3 MiB).
    pub fn new_request_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            413,
            StatusReason::RequestEntityTooLarge,
            format!("the request body could not be read: {}", message.into()),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, StatusReason::InternalError, message)
    }

    /// 503 ServiceUnavailable.
    pub fn service_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, StatusReason::ServiceUnavailable, message)
    }

    /// Translates a store error about `name` of `resource` (in `group`).
    pub fn from_store(err: StoreError, group: &str, resource: &str, name: &str) -> ApiError {
        match err {
            StoreError::AlreadyExists { .. } => ApiError {
                write_race: true,
                ..ApiError::already_exists(group, resource, name)
            },
            StoreError::NotFound { .. } => ApiError::not_found(group, resource, name),
            StoreError::Conflict { .. } => ApiError {
                write_race: true,
                ..ApiError::conflict(
                    group,
                    resource,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            },
            StoreError::Compacted { requested, compacted } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => {
                let mut e = ApiError::new(
                    504,
                    StatusReason::Timeout,
                    format!("Too large resource version: {requested}, current: {current}"),
                );
                e.details = Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}));
                e
            }
            StoreError::Backend(m) => ApiError::internal(format!("storage error: {m}")),
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.code == 401 {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"kubernetes\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_matches_kubernetes() {
        let s = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["details"]["kind"], "deployments");
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "",
            "Pod",
            "p",
            vec![
                Cause::required("spec.containers"),
                Cause::duplicate("spec.containers[1].name", "a"),
            ],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"].as_array().unwrap().len(), 2);
        assert!(e
            .message
            .starts_with("Pod \"p\" is invalid: [spec.containers: Required value"));
    }

    #[test]
    fn store_conflict_maps_to_409() {
        let e = ApiError::from_store(
            StoreError::Conflict {
                key: "k".into(),
                expected: 1,
                current: 2,
            },
            "",
            "pods",
            "p",
        );
        assert_eq!(e.code, 409);
        assert_eq!(e.reason, "Conflict");
    }
}
