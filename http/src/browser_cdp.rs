//! The sandbox browser's CDP endpoint for external clients, such as Playwright's
//! `chromium.connect_over_cdp("http://127.0.0.1:7070/api/v1/sandboxes/{id}/cdp")`:
//!
//! - `GET …/cdp/json/version` (and with the trailing slash Playwright asks for): Chromium's
//!   discovery document, its `webSocketDebuggerUrl` pointing back here;
//! - `GET …/cdp` with a WebSocket upgrade: the browser target, the bytes spliced both ways
//!   through the agent's loopback tunnel after Chromium's own handshake. Chromium sees
//!   `Host: localhost` and no `Origin` (it refuses other hosts, and origins not on its list).
//!
//! Behind the listener's bearer token, and the sandbox's access token when it has one.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coppice_tools::Tools;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::ApiError;

pub(crate) fn routes() -> Router<Arc<Tools>> {
    Router::new()
        .route("/api/v1/sandboxes/{id}/cdp", get(websocket))
        .route("/api/v1/sandboxes/{id}/cdp/json/version", get(version))
        .route("/api/v1/sandboxes/{id}/cdp/json/version/", get(version))
}

/// Chromium's `/json/version`, with the WebSocket URL of this endpoint.
async fn version(
    State(t): State<Arc<Tools>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ep = t.browser_cdp_endpoint(&id).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7070");
    let v = &ep.version;
    Ok(Json(json!({
        "Browser": v["product"],
        "Protocol-Version": v["protocolVersion"],
        "User-Agent": v["userAgent"],
        "V8-Version": v["jsVersion"],
        "webSocketDebuggerUrl": format!("ws://{host}/api/v1/sandboxes/{id}/cdp"),
    })))
}

/// The WebSocket handshake headers that pass to Chromium, and the ones that come back.
const REQUEST_HEADERS: [&str; 4] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
];
const RESPONSE_HEADERS: [&str; 3] = [
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
];

async fn websocket(
    State(t): State<Arc<Tools>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({
                "code": "invalid_argument",
                "message": "this is a CDP WebSocket endpoint: connect with a WebSocket client, or \
                            read …/cdp/json/version for its URL",
            })),
        )
            .into_response());
    }
    let (stream, ws_path) = t.browser_devtools_stream(&id).await?;
    let bad_gateway = |what: String| {
        (
            StatusCode::BAD_GATEWAY,
            Json(json!({"code": "unavailable", "message": what})),
        )
            .into_response()
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return Ok(bad_gateway(format!("the browser's DevTools server: {e}"))),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("CDP upstream connection ended: {e}");
        }
    });
    let mut upstream = http::Request::get(ws_path)
        .header(header::HOST, "localhost")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket");
    for name in REQUEST_HEADERS {
        if let Some(v) = req.headers().get(name) {
            upstream = upstream.header(name, v.clone());
        }
    }
    let upstream = upstream
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(coppice_runtime::Error::internal)?;
    let resp = match sender.send_request(upstream).await {
        Ok(r) => r,
        Err(e) => return Ok(bad_gateway(format!("the browser's DevTools server: {e}"))),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(bad_gateway(format!(
            "the browser refused the WebSocket: {}",
            resp.status()
        )));
    }
    let mut answer = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket");
    for name in RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(name) {
            answer = answer.header(name, v.clone());
        }
    }
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (browser, client) = match tokio::join!(hyper::upgrade::on(resp), client) {
            (Ok(b), Ok(c)) => (b, c),
            _ => return,
        };
        let (mut browser, mut client) = (TokioIo::new(browser), TokioIo::new(client));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut browser).await {
            tracing::debug!("CDP proxy ended: {e}");
        }
    });
    Ok(answer
        .body(Body::empty())
        .map_err(coppice_runtime::Error::internal)?)
}
