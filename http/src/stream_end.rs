//! A Connect stream from a sandbox's agent that breaks off (the sandbox was killed or reached
//! its end of life, its agent died) ends with an end-of-stream envelope saying so, as E2B's
//! proxy ends it: code `unavailable` and, once the sandbox is gone, "The sandbox … was not
//! found", which the E2B SDKs raise as "not running". Without it the client sees a body cut
//! mid-stream and waits for a timeout.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use coppice_envd::connect::{FLAG_END_STREAM, STREAM_CONTENT_TYPE, encode_end_stream};
use coppice_envd::{Code, ConnectError};
use coppice_tools::Tools;
use futures::{StreamExt, stream};

/// Where a stream's bytes stand in its envelopes, so an end envelope is only ever appended
/// between two envelopes, and only when the agent sent none.
#[derive(Debug, Default)]
struct Framing {
    header: Vec<u8>,
    remaining: usize,
    ended: bool,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if self.header.len() == 5 {
                self.ended |= self.header[0] & FLAG_END_STREAM != 0;
                let len = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.remaining = u32::from_be_bytes(len) as usize;
                self.header.clear();
            }
        }
    }

    /// Whether an end envelope may follow: between envelopes and none sent yet.
    fn may_end(&self) -> bool {
        !self.ended && self.remaining == 0 && self.header.is_empty()
    }
}

/// Why the stream of sandbox `id` broke: gone (it is not visible any more within a moment:
/// a kill removes it while its processes die), or the connection to its agent was lost.
async fn why_broken(tools: Tools, id: String) -> ConnectError {
    for _ in 0..40 {
        if tools.check_visible(&id).is_err() {
            return ConnectError::new(
                Code::Unavailable,
                format!("The sandbox {id} was not found: it was killed or reached its end of life"),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ConnectError::new(
        Code::Unavailable,
        format!("the connection to sandbox {id}'s agent was lost"),
    )
}

/// `resp` unchanged unless it is a Connect stream; then its body, ended by an error envelope
/// when the agent's side breaks off or closes without one.
pub(crate) fn end_broken_streams(resp: Response, tools: Tools, id: String) -> Response {
    let connect_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(STREAM_CONTENT_TYPE.as_bytes()));
    if !connect_stream {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let state = (
        body.into_data_stream(),
        Framing::default(),
        Some((tools, id)),
    );
    let body = stream::unfold(state, |(mut body, mut framing, mut on_break)| async move {
        match body.next().await {
            Some(Ok(chunk)) => {
                framing.feed(&chunk);
                Some((
                    Ok::<Bytes, std::io::Error>(chunk),
                    (body, framing, on_break),
                ))
            }
            // An end after a cut envelope would corrupt the framing: stop there.
            _ if !framing.may_end() => None,
            _ => {
                let (tools, id) = on_break.take()?;
                let end = encode_end_stream(Some(why_broken(tools, id).await));
                framing.ended = true;
                Some((Ok(end), (body, framing, None)))
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coppice_envd::connect::encode_envelope;

    #[test]
    fn framing_follows_envelopes_across_chunks() {
        let mut f = Framing::default();
        let a = encode_envelope(0, b"{\"x\":1}");
        f.feed(&a[..3]);
        assert!(!f.may_end(), "inside a header");
        f.feed(&a[3..7]);
        assert!(!f.may_end(), "inside a payload");
        f.feed(&a[7..]);
        assert!(f.may_end(), "between envelopes");
        f.feed(&encode_envelope(FLAG_END_STREAM, b"{}"));
        assert!(!f.may_end(), "the agent ended the stream itself");
    }
}
