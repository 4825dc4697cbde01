//! MCP on the daemon's axum app: streamable HTTP at `/mcp` (both protocol eras) and
//! `/mcp-stdio`, an HTTP upgrade to a raw MCP stdio stream that `coppice-mcp` uses to join
//! the daemon over its unix socket.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::session::{CoppiceMcp, McpState};

/// The `Upgrade:` protocol name of `/mcp-stdio`.
pub const STDIO_UPGRADE: &str = "coppice-mcp-stdio";

/// How one listener exposes MCP.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Required `Authorization: Bearer` token; None = no auth (loopback or the root-only
    /// unix socket).
    pub bearer_token: Option<String>,
    /// Allowed `Host` values; empty = not checked (only when a bearer token is required).
    pub allowed_hosts: Vec<String>,
}

impl HttpOptions {
    /// Options for a TCP listener on `listen`: loopback gets Host checks and may run without
    /// a token; anything else requires one.
    pub fn for_tcp(listen: &str, token: Option<String>) -> anyhow::Result<Self> {
        let host = listen
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(listen)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip: Option<IpAddr> = host.parse().ok();
        let loopback = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
        let token = token.filter(|t| !t.is_empty());
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(String::from)
            .collect();
        if loopback {
            if let Some(ip) = ip.map(|ip| ip.to_string())
                && !hosts.contains(&ip)
            {
                hosts.push(ip);
            }
        } else {
            if token.is_none() {
                anyhow::bail!(
                    "listen address {listen} is not loopback: MCP over HTTP needs a bearer token there; set `token` under [listener] in the config file or pass --mcp-token (or COPPICE_MCP_TOKEN)"
                );
            }
            // A required token already defeats DNS rebinding; the server's own names are not
            // known here, so Host is not restricted.
            hosts.clear();
        }
        Ok(Self {
            bearer_token: token,
            allowed_hosts: hosts,
        })
    }
}

/// Browser origins allowed to call `/mcp` (loopback pages only); requests with no Origin
/// (every non-browser client) pass.
fn allowed_origins() -> Vec<String> {
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
        .collect()
}

/// `/mcp` and `/mcp-stdio`, ready to merge into the daemon's app.
pub fn router(state: McpState, opts: HttpOptions) -> Router {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        // Stateless (2026-07-28) replies with no progress in between come back as one JSON
        // body rather than an event stream: cheaper for both ends, and what clients expect.
        .with_json_response(true)
        .with_allowed_origins(allowed_origins())
        .with_max_request_body_bytes(crate::stdio::MAX_MESSAGE_BYTES);
    config = if opts.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(opts.allowed_hosts.clone())
    };
    let factory_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(CoppiceMcp::new(factory_state.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn(session_deleted))
        .route("/mcp-stdio", axum::routing::post(stdio_upgrade))
        .with_state(state)
}

/// A session's DELETE answers 204 No Content (rmcp says 202 Accepted, which the official
/// Python client logs as "Session termination failed: 202"): the session is gone when it
/// returns, nothing is pending.
async fn session_deleted(req: Request, next: Next) -> Response {
    let delete = req.method() == axum::http::Method::DELETE;
    let resp = next.run(req).await;
    if delete && resp.status() == StatusCode::ACCEPTED {
        let (mut parts, _) = resp.into_parts();
        parts.status = StatusCode::NO_CONTENT;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    resp
}

/// `POST /mcp-stdio` with `Upgrade: coppice-mcp-stdio`: after `101 Switching Protocols` the
/// connection carries MCP's stdio framing (newline-delimited JSON-RPC) both ways, served by a
/// fresh handler whose session is the connection.
async fn stdio_upgrade(State(state): State<McpState>, mut req: Request<Body>) -> Response {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STDIO_UPGRADE));
    if !wants {
        return (
            StatusCode::UPGRADE_REQUIRED,
            format!("send `Connection: upgrade` and `Upgrade: {STDIO_UPGRADE}`"),
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::warn!("mcp-stdio upgrade failed: {e}");
                return;
            }
        };
        tracing::info!("mcp stdio session joined over the socket");
        let (read, write) = tokio::io::split(io);
        match crate::stdio::serve(CoppiceMcp::new(state), read, write).await {
            Ok(()) => tracing::info!("mcp stdio session ended"),
            Err(e) => tracing::warn!("mcp stdio session: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STDIO_UPGRADE)
        .body(Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_options() {
        let o = HttpOptions::for_tcp("127.0.0.1:7070", None).unwrap();
        assert!(o.bearer_token.is_none() && o.allowed_hosts.contains(&"localhost".into()));
        assert!(HttpOptions::for_tcp("localhost:7070", None).is_ok());
        assert!(HttpOptions::for_tcp("[::1]:7070", None).is_ok());
        let err = HttpOptions::for_tcp("0.0.0.0:7070", None).unwrap_err();
        assert!(err.to_string().contains("[listener]"));
        let o = HttpOptions::for_tcp("0.0.0.0:7070", Some("t".into())).unwrap();
        assert_eq!(o.bearer_token.as_deref(), Some("t"));
        assert!(o.allowed_hosts.is_empty());
    }
}
