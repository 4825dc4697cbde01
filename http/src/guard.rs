//! Checks in front of the TCP listener that are not about one route (docs/security.md):
//!
//! - [`require_bearer`]: every route but `/health` needs the daemon's bearer token.
//! - [`host_guard`]: on a loopback listener every request's `Host`, and `Origin` when a browser
//!   sends one, must name this host (loopback names, `*.localhost`, the E2B domain). A page on
//!   any other name that rebinds its DNS to 127.0.0.1 gets a 403 before any route runs.
//! - [`access_token_guard`]: the native sandbox-traffic routes (`exec`, `envd/...`) of a
//!   sandbox that has an access token (E2B's `envdAccessToken`) need it in `X-Access-Token`
//!   on TCP, as the E2B routes do; the root-only unix socket is not wrapped.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use coppice_tools::Tools;
use serde_json::json;

/// The names a loopback listener answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Exact names (lower case, no port, IPv6 without brackets).
    names: Vec<String>,
    /// The E2B domain: it and its subdomains (`{port}-{id}.{domain}`) are allowed too.
    domain: Option<String>,
}

impl AllowedHosts {
    /// A guard accepting these host names (and `{port}-{id}.{e2b_domain}` when a domain is set).
    pub fn new(names: &[String], e2b_domain: Option<&str>) -> Self {
        Self {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            domain: e2b_domain.map(|d| d.trim_matches('.').to_ascii_lowercase()),
        }
    }

    /// Whether `host` (a Host header value, with or without its port) names this listener.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host.trim()).to_ascii_lowercase();
        let under = |d: &str| name == d || name.ends_with(&format!(".{d}"));
        !name.is_empty()
            && (self.names.contains(&name)
                || under("localhost")
                || self.domain.as_deref().is_some_and(under))
    }

    /// Whether an `Origin` value (`scheme://host[:port]`) is a page of this host.
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .is_some_and(|(_, host)| !host.contains('/') && self.allows(host))
    }
}

/// `name:port` → `name`, `[v6]:port` and `[v6]` → `v6`; a bare IPv6 address is kept whole.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn forbidden(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "code": "permission_denied", "message": message })),
    )
        .into_response()
}

/// Wraps `app` in the Host and Origin check.
pub fn host_guard(app: Router, allowed: AllowedHosts) -> Router {
    app.layer(middleware::from_fn_with_state(
        Arc::new(allowed),
        check_host,
    ))
}

async fn check_host(
    State(allowed): State<Arc<AllowedHosts>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(reason) = refusal(&allowed, req.headers()) {
        return forbidden(reason);
    }
    next.run(req).await
}

fn refusal(allowed: &AllowedHosts, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    match host {
        None => return Some("a Host header is required".into()),
        Some(h) if !allowed.allows(h) => {
            return Some(format!(
                "Host '{h}' is not a name of this loopback listener (use localhost or 127.0.0.1)"
            ));
        }
        Some(_) => {}
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    (!allowed.allows_origin(origin))
        .then(|| format!("Origin '{origin}' may not call this daemon (only pages on this host)"))
}

/// The header the per-sandbox access token travels in (E2B's envd header).
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Wraps the native sandbox-traffic routes of `app` (`/api/v1/sandboxes/{id}/exec`,
/// `/api/v1/sandboxes/{id}/envd/...` and the browser's `.../cdp`) in the access-token check.
pub fn access_token_guard(app: Router, tools: Tools) -> Router {
    app.layer(middleware::from_fn_with_state(
        Arc::new(tools),
        check_access_token,
    ))
}

async fn check_access_token(State(t): State<Arc<Tools>>, req: Request, next: Next) -> Response {
    let Some(id) = traffic_sandbox(req.uri().path()) else {
        return next.run(req).await;
    };
    // No token: the listener's own credential is all it needs. An unknown id is the
    // route's to report.
    let Some(want) = t.traffic_token(id) else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(|g| coppice_envd::auth::constant_time_eq(g.as_bytes(), want.as_bytes())) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "code": "unauthenticated",
            "message": format!("sandbox '{id}' has an access token (E2B's envdAccessToken): send it in X-Access-Token")
        })),
    )
        .into_response()
}

/// The sandbox id of a native sandbox-traffic path.
fn traffic_sandbox(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/sandboxes/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == "exec" || tail.starts_with("envd/") || tail == "cdp" || tail.starts_with("cdp/"))
        .then_some(id)
}

/// Marks a request let past the bearer check because it carries a terminal share token: its
/// handler must accept nothing but a valid token.
#[derive(Debug, Clone, Copy)]
pub struct ShareTokenOnly;

/// The routes a terminal share token opens: `/terminals/{tid}` (the page) and the terminal
/// WebSocket `/api/v1/sandboxes/{id}/terminals/{tid}/ws`.
fn is_share_route(path: &str) -> bool {
    if let Some(tid) = path.strip_prefix("/terminals/") {
        return !tid.is_empty() && !tid.contains('/');
    }
    path.strip_prefix("/api/v1/sandboxes/")
        .and_then(|r| r.strip_suffix("/ws"))
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, r)| r.strip_prefix("terminals/"))
        .is_some_and(|tid| !tid.is_empty() && !tid.contains('/'))
}

fn has_token_param(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")))
}

/// Wraps every route of `app` in the bearer-token check when the listener requires one.
pub fn require_bearer(app: Router, opts: &coppice_mcp::http::HttpOptions) -> Router {
    match &opts.bearer_token {
        Some(token) => app.layer(middleware::from_fn_with_state(
            Arc::new(token.clone()),
            bearer,
        )),
        None => app,
    }
}

/// Rejects requests without the bearer token: 401 with `WWW-Authenticate: Bearer`.
async fn bearer(State(token): State<Arc<String>>, mut req: Request, next: Next) -> Response {
    // A terminal's page and WebSocket may carry a share token instead; their handlers check it.
    if is_share_route(req.uri().path()) && has_token_param(req.uri().query()) {
        req.extensions_mut().insert(ShareTokenOnly);
        return next.run(req).await;
    }
    // The terminal page's scripts and styles are public static files.
    if req.uri().path().starts_with("/terminals/assets/") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if given.is_some_and(|g| coppice_envd::auth::constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    let error = if given.is_some() {
        "error=\"invalid_token\", "
    } else {
        ""
    };
    let challenge = format!("Bearer realm=\"coppice\", {error}scope=\"mcp\"");
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({
            "code": "unauthenticated",
            "message": "missing or wrong bearer token: send `Authorization: Bearer <token>` (the daemon's [listener] token: when set, every route of its TCP listener but /health needs it)"
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> AllowedHosts {
        let names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        AllowedHosts::new(&names, Some("sandbox.example.org"))
    }

    #[test]
    fn hosts_of_this_listener() {
        let h = hosts();
        for ok in [
            "localhost",
            "127.0.0.1:7070",
            "[::1]:7070",
            "[::1]",
            "LOCALHOST:1",
            "49983-abc.sandbox.localhost:7070",
            "sandbox.example.org",
            "8080-abc.sandbox.example.org:443",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7070",
            "localhost.attacker.example",
            "127.0.0.2",
            "evilsandbox.example.org",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let h = hosts();
        assert!(h.allows_origin("http://localhost:3000"));
        assert!(h.allows_origin("https://127.0.0.1"));
        assert!(!h.allows_origin("null"));
        assert!(!h.allows_origin("http://attacker.example"));
        assert!(!h.allows_origin("file://localhost"));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:7070".parse().unwrap());
        assert!(refusal(&h, &headers).is_none());
        headers.insert(header::ORIGIN, "http://attacker.example".parse().unwrap());
        assert!(refusal(&h, &headers).unwrap().contains("attacker.example"));
        headers.remove(header::HOST);
        assert!(refusal(&h, &headers).is_some());
    }

    #[test]
    fn share_routes() {
        assert!(is_share_route("/terminals/term-abc"));
        assert!(is_share_route("/api/v1/sandboxes/sb/terminals/term-abc/ws"));
        assert!(!is_share_route("/api/v1/sandboxes/sb/terminals/term-abc"));
        assert!(!is_share_route("/api/v1/sandboxes/sb/terminals/a/b/ws"));
        assert!(!is_share_route("/terminals/a/b"));
        assert!(!is_share_route("/api/v1/sandboxes/sb/exec"));
        assert!(has_token_param(Some("a=1&token=x")) && !has_token_param(Some("xtoken=1")));
    }

    #[test]
    fn traffic_paths() {
        assert_eq!(traffic_sandbox("/api/v1/sandboxes/abc/exec"), Some("abc"));
        assert_eq!(
            traffic_sandbox("/api/v1/sandboxes/abc/envd/files"),
            Some("abc")
        );
        assert_eq!(traffic_sandbox("/api/v1/sandboxes/abc"), None);
        assert_eq!(traffic_sandbox("/api/v1/sandboxes/abc/network"), None);
    }
}
