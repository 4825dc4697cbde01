//! Forwarding one request to a sandbox's agent, streamed both ways: the one path the native
//! `envd/...` routes and E2B's envd and code-interpreter ports share, so both treat headers the
//! same way.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use coppice_envd::AgentClient;
use coppice_envd::client::BoxBody;
use coppice_runtime::Error;
use http_body_util::BodyExt;

/// Removes the hop-by-hop headers: they describe the client's connection to the daemon, not
/// the request (RFC 9110 §7.6.1), and must not reach the agent.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
}

/// Sends `req` to `agent` with its path replaced by `path_and_query` when given; the answer
/// comes back as it is, body streamed.
pub(crate) async fn forward(
    agent: &AgentClient,
    req: Request,
    path_and_query: Option<String>,
) -> Result<Response, Error> {
    let (mut parts, body) = req.into_parts();
    if let Some(p) = path_and_query {
        parts.uri = p
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("bad path: {e}")))?;
    }
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, http::HeaderValue::from_static("agent"));
    let body: BoxBody = body.map_err(std::io::Error::other).boxed_unsync();
    let resp = agent.send(http::Request::from_parts(parts, body)).await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("x-access-token", "t"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-access-token"]);
    }
}
