//! The access token, enforced as envd does: once `/init` sets one, every route needs
//! `X-Access-Token` except `/health`; `/files` also accepts a signed URL (`?signature=`),
//! which is how the SDKs' `download_url()`/`upload_url()` work. The code-interpreter
//! `/contexts` routes stay open because the SDKs never send the token there (E2B's port-49999
//! server has no auth of its own); `/execute` needs it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::env::Env;

pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Middleware over every route of the agent.
pub async fn guard(State(state): State<Arc<Env>>, req: Request, next: Next) -> Response {
    let token = state.access_token.read().expect("token lock").clone();
    let Some(token) = token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/health" || path == "/contexts" || path.starts_with("/contexts/") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    if path == "/files" && given.is_none() {
        let op = match *req.method() {
            Method::GET => "read",
            Method::POST => "write",
            _ => return unauthorized("unauthorized access, please provide a valid access token"),
        };
        return match check_signature(req.uri().query().unwrap_or(""), op, &token, now_secs()) {
            Ok(()) => next.run(req).await,
            Err(msg) => unauthorized(msg),
        };
    }
    unauthorized(
        "unauthorized access, please provide a valid access token or method signing if supported",
    )
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "code": 401, "message": message }).to_string(),
    )
        .into_response()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

use coppice_envd::auth::url_signature as signature;

/// The signing fields of a `/files` query.
#[derive(Debug, Default, serde::Deserialize)]
struct SignedQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<String>,
}

fn check_signature(query: &str, op: &str, token: &str, now: u64) -> Result<(), &'static str> {
    let q: SignedQuery = axum::extract::Query::try_from_uri(
        &format!("/files?{query}")
            .parse()
            .map_err(|_| "invalid query")?,
    )
    .map(|axum::extract::Query(q)| q)
    .map_err(|_| "invalid query")?;
    let sig = q.signature.ok_or(
        "unauthorized access, please provide a valid access token or method signing if supported",
    )?;
    let exp = match q.signature_expiration {
        Some(e) => Some(
            e.parse::<u64>()
                .map_err(|_| "invalid signature expiration")?,
        ),
        None => None,
    };
    if exp.is_some_and(|e| e < now) {
        return Err("signature is already expired");
    }
    let want = signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        token,
        exp,
    );
    if constant_time_eq(sig.as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err("invalid signature")
    }
}

use coppice_envd::auth::constant_time_eq;

#[cfg(test)]
mod tests {
    use super::*;

    /// The query encoding the SDKs apply ('+' and '/' are not literal in a query).
    fn enc(s: &str) -> String {
        s.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    }

    #[test]
    fn signatures_match_the_sdk() {
        // From the Python SDK: get_signature("/home/user/a.txt", "read", None, "tok")
        let s = signature("/home/user/a.txt", "read", "", "tok", None);
        // The value e2b 2.63's get_signature("/home/user/a.txt", "read", None, "tok") gives.
        assert_eq!(s, "v1_Zkbb3914oLJLvMBzCAHQhm2ydBLxbSx2eQUR/kLdvIY");
        let q = format!("path=%2Fhome%2Fuser%2Fa.txt&signature={}", enc(&s));
        assert_eq!(check_signature(&q, "read", "tok", 0), Ok(()));
        assert!(
            check_signature(&q, "write", "tok", 0).is_err(),
            "op is signed"
        );
        assert!(
            check_signature(&q, "read", "other", 0).is_err(),
            "token is signed"
        );
        let s = signature("a.txt", "write", "root", "tok", Some(100));
        let q = format!(
            "path=a.txt&username=root&signature={}&signature_expiration=100",
            enc(&s)
        );
        assert_eq!(check_signature(&q, "write", "tok", 50), Ok(()));
        assert!(check_signature(&q, "write", "tok", 101).is_err(), "expired");
        assert!(check_signature("path=a.txt", "read", "tok", 0).is_err());
    }
}
