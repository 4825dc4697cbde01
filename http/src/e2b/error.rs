//! Errors in E2B's shape (`{"code": <status>, "message": "..."}`), mapped once from the
//! runtime's typed errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coppice_runtime::Error;
use serde_json::json;

/// An error in E2B's shape: `{"code": <status>, "message": "..."}`.
#[derive(Debug)]
pub(super) struct E2bError(pub StatusCode, pub String);

impl From<Error> for E2bError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::SandboxNotFound(_)
            | Error::SandboxEnded { .. }
            | Error::TemplateNotFound(_)
            | Error::SnapshotNotFound(_)
            | Error::ContextNotFound(_)
            | Error::TerminalNotFound { .. } => StatusCode::NOT_FOUND,
            // E2B answers 400 for a snapshot kind not enabled (memory snapshots without CRIU).
            Error::InvalidArgument(_) | Error::UnknownLanguage(_) | Error::HostUnsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::AlreadyExists(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            // E2B's answer past a concurrency limit; the SDKs raise RateLimitException.
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            // Never 503 for these: the SDKs retry 502/503/504 with backoff.
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        E2bError(status, e.to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.0.as_u16(), "message": self.1 });
        (self.0, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for E2bError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        E2bError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

pub(super) fn bad(msg: impl Into<String>) -> E2bError {
    E2bError(StatusCode::BAD_REQUEST, msg.into())
}
