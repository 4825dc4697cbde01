//! Sandbox traffic on the daemon's port, routed the way E2B's edge proxy routes it
//! (`packages/shared/pkg/proxy/host.go` in e2b-dev/infra): by the `E2b-Sandbox-Id` +
//! `E2b-Sandbox-Port` headers when either is present, else by a Host of the form
//! `{port}-{sandboxId}.{domain}`. Requests that match neither go on to the daemon's own routes.
//!
//! Ports 49983 (envd) and 49999 (code interpreter) go to the sandbox's agent socket with the
//! path unchanged; any other port goes to that port on the sandbox's address on the host
//! bridge. Bodies stream both ways without buffering (chunked uploads, long-lived Connect
//! streams); the agent checks the caller's `X-Access-Token`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coppice_envd::client::BoxBody;
use coppice_runtime::Error;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{CODE_INTERPRETER_PORT, E2bState, ENVD_PORT};

const ID_HEADER: &str = "e2b-sandbox-id";
const PORT_HEADER: &str = "e2b-sandbox-port";

/// Where a request is headed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Not sandbox traffic: the daemon's own routes.
    Daemon,
    Sandbox {
        id: String,
        port: u16,
    },
    /// Sandbox traffic that cannot be routed (one header without the other, a bad port).
    Invalid(String),
}

pub(super) fn target(headers: &HeaderMap, domain: Option<&str>) -> Target {
    let id = headers.get(ID_HEADER).and_then(|v| v.to_str().ok());
    let port = headers.get(PORT_HEADER).and_then(|v| v.to_str().ok());
    match (id, port) {
        (Some(id), Some(port)) => {
            return match port.trim().parse::<u16>() {
                Ok(port) if valid_id(id.trim()) => Target::Sandbox {
                    id: id.trim().to_string(),
                    port,
                },
                Ok(_) => Target::Invalid(format!("invalid sandbox id '{id}'")),
                Err(_) => Target::Invalid(format!("invalid sandbox port '{port}'")),
            };
        }
        (Some(_), None) | (None, Some(_)) => {
            return Target::Invalid(
                "both E2b-Sandbox-Id and E2b-Sandbox-Port are required for sandbox traffic".into(),
            );
        }
        (None, None) => {}
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return Target::Daemon;
    };
    from_host(host, domain).map_or(Target::Daemon, |(id, port)| Target::Sandbox { id, port })
}

/// `{port}-{id}.{domain}[:listen port]` → (id, port). With a configured domain only hosts
/// under it count; without one, any host whose first label has that form.
fn from_host(host: &str, domain: Option<&str>) -> Option<(String, u16)> {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let (first, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    if let Some(d) = domain
        && !rest.eq_ignore_ascii_case(d)
    {
        return None;
    }
    let (port, id) = first.split_once('-')?;
    let port = port.parse::<u16>().ok()?;
    valid_id(id).then(|| (id.to_string(), port))
}

/// Sandbox ids are `[a-z0-9]+` (never a '-').
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Middleware in front of the whole TCP app.
pub(super) async fn route(State(s): State<Arc<E2bState>>, req: Request, next: Next) -> Response {
    match target(req.headers(), s.opts.domain.as_deref()) {
        Target::Daemon => match super::signed_files::signed_sandbox(&s.tools, &req) {
            None => next.run(req).await,
            Some(Err(refused)) => refused,
            Some(Ok(id)) => forward(&s, &id, ENVD_PORT, req)
                .await
                .unwrap_or_else(|resp| resp),
        },
        Target::Invalid(msg) => error(StatusCode::BAD_REQUEST, &msg, None),
        Target::Sandbox { id, port } => match forward(&s, &id, port, req).await {
            Ok(resp) => resp,
            Err(resp) => resp,
        },
    }
}

/// E2B's proxy answers 502 with JSON for a sandbox it cannot reach; the SDKs read 502 as
/// "not running" (e.g. `is_running()` → false) rather than as a missing file or process.
fn error(status: StatusCode, message: &str, id: Option<&str>) -> Response {
    let mut body = json!({ "code": status.as_u16(), "message": message });
    if let Some(id) = id {
        body["sandboxId"] = json!(id);
    }
    (status, axum::Json(body)).into_response()
}

async fn forward(s: &E2bState, id: &str, port: u16, req: Request) -> Result<Response, Response> {
    let unreachable = |e: Error| match e {
        Error::SandboxNotFound(_) => error(
            StatusCode::BAD_GATEWAY,
            &format!("The sandbox {id} was not found"),
            Some(id),
        ),
        Error::SandboxEnded { why, .. } => error(
            StatusCode::BAD_GATEWAY,
            &format!("The sandbox {id} was not found: it is gone ({why})"),
            Some(id),
        ),
        Error::PermissionDenied(m) => error(StatusCode::FORBIDDEN, &m, Some(id)),
        other => error(StatusCode::BAD_GATEWAY, &other.to_string(), Some(id)),
    };
    // Its own ports may be private; the agent's port has its own token (envd's).
    let ingress = match port {
        ENVD_PORT => Default::default(),
        _ => s.tools.ingress(id).map_err(unreachable)?,
    };
    if let Some(token) = &ingress.traffic_token {
        check_traffic_token(req.headers(), token)
            .map_err(|m| error(StatusCode::FORBIDDEN, m, Some(id)))?;
    }
    // A sandbox made with autoResume wakes up for its traffic.
    s.tools.resume_for_traffic(id).await.map_err(unreachable)?;
    if port == ENVD_PORT || port == CODE_INTERPRETER_PORT {
        let agent = s.tools.agent_for_proxy(id).map_err(unreachable)?;
        let resp = crate::agent_proxy::forward(&agent, req, None)
            .await
            .map_err(unreachable)?;
        return Ok(crate::stream_end::end_broken_streams(
            resp,
            s.tools.clone(),
            id.to_string(),
        ));
    }
    // A WebSocket (or other) upgrade: the handshake goes through, then the bytes are spliced.
    let mut req = req;
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    crate::agent_proxy::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
        parts.headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
    if let Some(host) = ingress.host_for(port) {
        let host = http::HeaderValue::from_str(&host).map_err(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "maskRequestHost is not a valid Host",
                Some(id),
            )
        })?;
        parts.headers.insert(http::header::HOST, host);
    }
    let body: BoxBody = body.map_err(std::io::Error::other).boxed_unsync();
    // Any other port: a service inside the sandbox, on its bridge address.
    let info = s.tools.sandbox_info(id).map_err(unreachable)?;
    if s.tools.is_paused(id).map_err(unreachable)? {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            &format!("sandbox {id} is paused: connect to it to resume it"),
            Some(id),
        ));
    }
    let Some(ip) = info.ip else {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            &format!("sandbox {id} has no network, so port {port} cannot be reached"),
            Some(id),
        ));
    };
    let stream = tokio::net::TcpStream::connect((ip.as_str(), port))
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                &format!("The sandbox is running but port {port} is not open: {e}"),
                Some(id),
            )
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                &format!("port {port}: {e}"),
                Some(id),
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("sandbox port connection ended: {e}");
        }
    });
    let mut resp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                &format!("port {port}: {e}"),
                Some(id),
            )
        })?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade
    {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(up), Ok(down)) = tokio::join!(upstream, client) {
                let (mut up, mut down) = (TokioIo::new(up), TokioIo::new(down));
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!("sandbox port upgrade ended: {e}");
                }
            }
        });
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The header E2B's proxy reads a private sandbox's traffic token from.
const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// E2B's two refusals of a private sandbox's traffic: no token, or another one.
fn check_traffic_token(headers: &HeaderMap, token: &str) -> Result<(), &'static str> {
    match headers.get(TRAFFIC_TOKEN_HEADER) {
        None => Err(
            "missing traffic access token: this sandbox's ports are private; send its \
                     trafficAccessToken in the e2b-traffic-access-token header",
        ),
        Some(sent) if coppice_envd::auth::constant_time_eq(sent.as_bytes(), token.as_bytes()) => {
            Ok(())
        }
        Some(_) => Err("invalid traffic access token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn header_routing() {
        let t = target(
            &h(&[("E2b-Sandbox-Id", "abc123"), ("E2b-Sandbox-Port", "49983")]),
            None,
        );
        assert_eq!(
            t,
            Target::Sandbox {
                id: "abc123".into(),
                port: 49983
            }
        );
        assert!(matches!(
            target(&h(&[("e2b-sandbox-id", "abc")]), None),
            Target::Invalid(_)
        ));
        assert!(matches!(
            target(
                &h(&[("e2b-sandbox-id", "a-b"), ("e2b-sandbox-port", "1")]),
                None
            ),
            Target::Invalid(_)
        ));
        assert!(matches!(
            target(
                &h(&[("e2b-sandbox-id", "ab"), ("e2b-sandbox-port", "x")]),
                None
            ),
            Target::Invalid(_)
        ));
        assert_eq!(
            target(&h(&[("host", "127.0.0.1:7070")]), None),
            Target::Daemon
        );
    }

    #[test]
    fn host_routing() {
        let t = |host: &str, d: Option<&str>| target(&h(&[("host", host)]), d);
        assert_eq!(
            t("8080-abc123.sbx.example.com", None),
            Target::Sandbox {
                id: "abc123".into(),
                port: 8080
            }
        );
        assert_eq!(
            t("49983-abc123.sbx.example.com:7070", Some("sbx.example.com")),
            Target::Sandbox {
                id: "abc123".into(),
                port: 49983
            }
        );
        assert_eq!(
            t("8080-abc123.other.com", Some("sbx.example.com")),
            Target::Daemon
        );
        assert_eq!(t("127-0-0-1.nip.io", None), Target::Daemon);
        assert_eq!(t("localhost:7070", None), Target::Daemon);
        assert_eq!(
            t("8080-abc123", None),
            Target::Daemon,
            "needs a domain part"
        );
        assert_eq!(t("99999-abc.x.y", None), Target::Daemon, "not a port");
    }
}
