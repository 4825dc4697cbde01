//! Connect-RPC on axum: decoding unary and streaming requests, encoding responses.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coppice_envd::connect::{
    self, ConnectError, EnvelopeDecoder, STREAM_CONTENT_TYPE, UNARY_CONTENT_TYPE,
};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A Connect error as a unary (non-200 JSON) response.
pub struct RpcError(pub ConnectError);

impl From<ConnectError> for RpcError {
    fn from(e: ConnectError) -> Self {
        RpcError(e)
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, UNARY_CONTENT_TYPE)], body).into_response()
    }
}

/// A successful unary response.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response {
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    ([(header::CONTENT_TYPE, UNARY_CONTENT_TYPE)], body).into_response()
}

/// Parses a unary request body (plain JSON; an empty body is the empty message).
pub fn parse_unary<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        RpcError(ConnectError::invalid_argument(format!(
            "malformed request: {e}"
        )))
    })
}

/// Parses the single envelope of a server-streaming request (the body is already complete).
pub fn parse_stream_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    let mut dec = EnvelopeDecoder::default();
    dec.push(body);
    match dec.next_envelope().map_err(RpcError)? {
        Some(env) => parse_unary(&env.data),
        None => Err(RpcError(ConnectError::invalid_argument(
            "missing request envelope",
        ))),
    }
}

/// `connect-timeout-ms` as milliseconds, when present and non-zero.
pub fn timeout_ms(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
}

/// `keepalive-ping-interval` in seconds (SDKs send 50); envd's default is 90.
pub fn keepalive_interval(headers: &HeaderMap) -> std::time::Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(90);
    std::time::Duration::from_secs(secs)
}

/// A server-streaming response: each item becomes a data envelope; the stream's final
/// `Err` (if any) or a clean end becomes the end-of-stream envelope. Always exactly one end
/// envelope, because JS clients fail without it.
pub fn stream_response<T, S>(messages: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, ConnectError>> + Send + 'static,
{
    let body = async_stream_body(messages);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
        .body(Body::from_stream(body))
        .expect("static response")
}

fn async_stream_body<T, S>(
    messages: S,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, ConnectError>> + Send + 'static,
{
    let state = (Box::pin(messages), false);
    futures::stream::unfold(state, |(mut messages, ended)| async move {
        if ended {
            return None;
        }
        match messages.next().await {
            Some(Ok(msg)) => Some((Ok(connect::encode_message(&msg)), (messages, false))),
            Some(Err(e)) => Some((Ok(connect::encode_end_stream(Some(e))), (messages, true))),
            None => Some((Ok(connect::encode_end_stream(None)), (messages, true))),
        }
    })
}
