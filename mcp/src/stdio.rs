//! MCP over a byte stream (stdin/stdout, or the daemon's `/mcp-stdio` upgrade) with a limit
//! on the size of one message.
//!
//! rmcp drops an incoming line over its limit without replying, so the client would wait
//! forever. [`LimitLines`] sits in front of rmcp's reader: it passes lines through while
//! they are under [`MAX_MESSAGE_BYTES`]; once a line goes over, it ends what rmcp has
//! received of it (rmcp ignores the unparsable stub), skips the rest without buffering it,
//! and then hands rmcp a small `coppice/oversized_request` request carrying the original
//! request's id. The handler answers that with an error that says what to do instead, so the
//! client's call fails at once and the session carries on.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use rmcp::ServiceExt;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::CoppiceMcp;

/// Largest MCP message accepted, over stdio and as an HTTP request body.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Method of the request that stands in for an oversized one.
pub const OVERSIZED_METHOD: &str = "coppice/oversized_request";

/// Bytes kept from each end of an oversized line to find its id.
const KEEP: usize = 4096;

/// Serves `handler` over a reader and writer until the reader ends.
pub async fn serve<R, W>(handler: CoppiceMcp, read: R, write: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let read = LimitLines::new(read, MAX_MESSAGE_BYTES);
    let service = handler
        .serve((read, write))
        .await
        .map_err(|e| anyhow::anyhow!("MCP session failed to start: {e}"))?;
    let reason = service.waiting().await;
    tracing::debug!("MCP session ended: {reason:?}");
    Ok(())
}

/// An [`AsyncRead`] of newline-delimited messages that replaces each line over `limit` bytes
/// with a short `coppice/oversized_request` message (see the module docs).
pub struct LimitLines<R> {
    inner: R,
    limit: usize,
    /// Bytes of the current line seen so far.
    line_len: usize,
    /// The first bytes of the current line.
    head: Vec<u8>,
    /// The last bytes of the current line, once it is over the limit.
    tail: VecDeque<u8>,
    /// Processed bytes not yet handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
}

impl<R> LimitLines<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            limit,
            line_len: 0,
            head: Vec::new(),
            tail: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Processes one chunk from the inner reader into `out`.
    fn process(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (part, ends_line) = match newline {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            chunk = &chunk[part.len() + usize::from(ends_line)..];
            let was_over = self.line_len > self.limit;
            if self.head.len() < KEEP {
                let n = (KEEP - self.head.len()).min(part.len());
                self.head.extend_from_slice(&part[..n]);
            }
            self.line_len += part.len();
            if !was_over && self.line_len <= self.limit {
                self.out.extend_from_slice(part);
            } else {
                if !was_over {
                    // The line just went over: end the stub rmcp has, which it will ignore.
                    self.out.push(b'\n');
                }
                self.tail.extend(part);
                let excess = self.tail.len().saturating_sub(KEEP);
                self.tail.drain(..excess);
            }
            if ends_line {
                if self.line_len > self.limit {
                    self.replace_oversized();
                } else {
                    self.out.push(b'\n');
                }
                self.line_len = 0;
                self.head.clear();
                self.tail.clear();
            }
        }
    }

    fn replace_oversized(&mut self) {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let Some(id) = id_in_head(&self.head).or_else(|| id_in_tail(&tail)) else {
            tracing::warn!(
                bytes = self.line_len,
                "dropped an oversized MCP message with no request id"
            );
            return;
        };
        tracing::warn!(
            bytes = self.line_len,
            limit = self.limit,
            "rejecting an oversized MCP request"
        );
        let stand_in = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": OVERSIZED_METHOD,
            "params": {
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
                "bytes": self.line_len,
                "limit": self.limit,
            },
        });
        self.out.extend_from_slice(stand_in.to_string().as_bytes());
        self.out.push(b'\n');
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LimitLines<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 64 << 10];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.process(read.filled()),
                other => return other,
            }
        }
    }
}

/// The top-level `"id"` of a JSON-RPC message whose start is `head`.
fn id_in_head(head: &[u8]) -> Option<Value> {
    let mut depth = 0i32;
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let end = string_end(head, i)?;
                if depth == 1 && &head[i..=end] == b"\"id\"" {
                    let rest = head[end + 1..].trim_ascii_start().strip_prefix(b":")?;
                    return scalar(rest.trim_ascii_start()).map(|(v, _)| v);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The top-level `"id"` of a JSON-RPC message whose end is `tail`: the last `"id"` whose
/// value is followed only by the closing brace (and perhaps other scalar members).
fn id_in_tail(tail: &[u8]) -> Option<Value> {
    let at = tail.windows(4).rposition(|w| w == b"\"id\"")?;
    let rest = tail[at + 4..].trim_ascii_start().strip_prefix(b":")?;
    let (value, after) = scalar(rest.trim_ascii_start())?;
    let closes = after.iter().filter(|&&b| b == b'}').count();
    let nests = after.iter().any(|b| matches!(b, b'{' | b'[' | b']'));
    (closes == 1 && !nests).then_some(value)
}

/// A JSON string or number at the start of `s`, and what follows it.
fn scalar(s: &[u8]) -> Option<(Value, &[u8])> {
    let len = match s.first()? {
        b'"' => string_end(s, 0)? + 1,
        b'-' | b'0'..=b'9' => s
            .iter()
            .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .unwrap_or(s.len()),
        _ => return None,
    };
    let value: Value = serde_json::from_slice(&s[..len]).ok()?;
    Some((value, &s[len..]))
}

/// Index of the quote closing the JSON string that opens at `start`.
fn string_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn ids() {
        let head = br#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"arguments":{"id":"x","content":"aaaa"#;
        assert_eq!(id_in_head(head), Some(Value::from(17)));
        let head = br#"{"method":"tools/call","params":{"id":5,"content":"a\"id\":9 aaaa"#;
        assert_eq!(id_in_head(head), None);
        let tail = br#"aaaa"}},"jsonrpc":"2.0","id":"req-3"}"#;
        assert_eq!(id_in_tail(tail), Some(Value::from("req-3")));
        let tail = br#"aaaa","id":4}}"#;
        assert_eq!(id_in_tail(tail), None);
        let tail = br#"aaaa"}},"id": 8 ,"jsonrpc":"2.0"}"#;
        assert_eq!(id_in_tail(tail), Some(Value::from(8)));
    }

    async fn filtered(input: Vec<u8>, limit: usize) -> String {
        let mut r = LimitLines::new(&input[..], limit);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn replaces_oversized_lines() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"x\":\"{}\"}}}}",
            "a".repeat(100_000)
        );
        let input = format!("{{\"id\":1}}\n{big}\n{{\"id\":2}}\n").into_bytes();
        let out = filtered(input, 1000).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out:.200}");
        assert_eq!(lines[0], r#"{"id":1}"#);
        assert!(lines[1].len() <= 1000, "the stub rmcp ignores");
        let stand_in: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(stand_in["id"], 3);
        assert_eq!(stand_in["method"], OVERSIZED_METHOD);
        assert_eq!(stand_in["params"]["bytes"], big.len());
        assert_eq!(lines[3], r#"{"id":2}"#);
        // Lines at the limit pass untouched.
        let exact = "b".repeat(1000) + "\n";
        assert_eq!(filtered(exact.clone().into_bytes(), 1000).await, exact);
    }
}
