//! Errors: Intercom's `error.list` responses, and the errors a caller of the library sees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}

/// One Intercom error answer: a status and the single entry of its `error.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// 400 `parameter_invalid`, Intercom's answer to most bad values.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", message)
    }

    /// 400 `parameter_not_found`: a required parameter is missing.
    pub fn missing(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "parameter_not_found", message)
    }

    /// 400 `bad_request` "bad 'x' parameter": an unknown top-level field.
    pub fn bad_parameter(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad '{name}' parameter"),
        )
    }

    /// 404 `not_found` with Intercom's message for the resource.
    pub fn not_found(message: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 `company_not_found` "Company Not Found".
    pub fn company_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "company_not_found",
            "Company Not Found",
        )
    }

    /// 409 `conflict` naming the contact that already holds the identity.
    pub fn conflict(existing_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("A contact matching those details already exists with id={existing_id}"),
        )
    }

    /// 400 for a body that is not JSON (or not a JSON object).
    pub fn invalid_json() -> ApiError {
        ApiError::invalid("There was a problem in the JSON you submitted")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_list(self.status, &self.code, &self.message)
    }
}

/// An `error.list` envelope with a fresh request id.
pub(crate) fn error_list(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "type": "error.list",
        "request_id": request_id(),
        "errors": [{"code": code, "message": message}],
    });
    json_response(status, &body)
}

/// A JSON response with Intercom's content type.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A UUID-shaped request id, unique within the process.
pub(crate) fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("5a4db0c1-0000-4000-8000-{n:012x}")
}
