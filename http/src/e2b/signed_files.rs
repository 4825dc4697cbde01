//! Signed `/files` URLs on the daemon's own address. The SDKs build `download_url()` and
//! `upload_url()` on `E2B_SANDBOX_URL`, which names no sandbox; the signature is made with one
//! sandbox's access token, so the sandbox it matches is the one the URL is for. The request
//! then goes to that sandbox's agent unchanged, which checks the signature again (and its
//! expiry, answering envd's 401 when it has passed).

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use coppice_envd::auth::{constant_time_eq, url_signature};
use coppice_tools::Tools;
use serde::Deserialize;

#[derive(Deserialize)]
struct SignedQuery {
    path: Option<String>,
    username: Option<String>,
    signature: String,
    signature_expiration: Option<u64>,
}

/// For a signed `/files` request: `Some(Ok(id))` of the sandbox whose token made the
/// signature, `Some(Err(401))` when none did; `None` when the request is not a signed URL.
pub(super) fn signed_sandbox(tools: &Tools, req: &Request) -> Option<Result<String, Response>> {
    if req.uri().path() != "/files" {
        return None;
    }
    let q: SignedQuery = serde_urlencoded::from_str(req.uri().query()?).ok()?;
    let op = match *req.method() {
        Method::GET => "read",
        Method::POST => "write",
        _ => return None,
    };
    let path = q.path.as_deref().unwrap_or_default();
    let user = q.username.as_deref().unwrap_or_default();
    let sandboxes = tools.list_sandboxes().unwrap_or_default();
    let found = sandboxes.into_iter().find(|sb| {
        tools.traffic_token(&sb.id).is_some_and(|token| {
            let want = url_signature(path, op, user, &token, q.signature_expiration);
            constant_time_eq(want.as_bytes(), q.signature.as_bytes())
        })
    });
    Some(found.map(|sb| sb.id).ok_or_else(|| {
        let body = serde_json::json!({ "code": 401, "message": "invalid signature" });
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    }))
}
