//! `GET /loopback/{port}` with `Upgrade: tcp`: after the 101, the connection is a byte pipe to
//! `127.0.0.1:{port}` in the sandbox's network namespace. This is how the host reaches
//! services that listen on the sandbox's loopback only, Chromium's DevTools port first (it
//! binds 127.0.0.1 and nothing else). Behind the agent's access-token check like every route.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

/// The protocol name in `Upgrade`.
pub const UPGRADE: &str = "tcp";

pub async fn open(Path(port): Path<u16>, mut req: Request) -> Response {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    if !wants {
        return (
            StatusCode::BAD_REQUEST,
            format!("send Connection: upgrade and Upgrade: {UPGRADE}"),
        )
            .into_response();
    }
    let mut upstream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("nothing listens on 127.0.0.1:{port} in the sandbox: {e}"),
            )
                .into_response();
        }
    };
    let _ = upstream.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(port, "loopback tunnel ended: {e}");
                }
            }
            Err(e) => tracing::debug!(port, "loopback upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE)
        .body(Body::empty())
        .expect("static response")
}
