//! MCP over a byte stream (stdin/stdout, or the daemon's `/mcp-stdio` upgrade) with a limit
//! on the size of one message.
//!
//! [`LineTransport`] stands in for rmcp's `AsyncRwTransport` on the reading side: that one
//! reads through an 8 KiB `BufReader` and finds newlines byte by byte, which (with the
//! size-limiting filter it needs in front) costs milliseconds on a 1 MiB `files_write`. This reads
//! straight into one buffer, finds newlines with `memchr` and parses each line in place with
//! serde_json, as rmcp does; a line that fails to parse is handed to rmcp's own codec, so
//! its rules (ignored notifications, `Invalid Request` replies) apply unchanged. Writing is
//! rmcp's codec as is.
//!
//! rmcp drops an incoming line over its limit without replying, so the client would wait
//! forever. Here a line over [`MAX_MESSAGE_BYTES`] is skipped without being buffered (only
//! its first and last bytes are kept, to find its id) and replaced by a small
//! `coppice/oversized_request` request carrying the original request's id. The handler
//! answers that with an error that says what to do instead, so the client's call fails at
//! once and the session carries on.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::SinkExt;
use rmcp::RoleServer;
use rmcp::ServiceExt;
use rmcp::model::ErrorData;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::{JsonRpcMessageCodec, JsonRpcMessageCodecError};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::{Decoder, FramedWrite};

use crate::session::CoppiceMcp;

pub use crate::limits::{MAX_MESSAGE_BYTES, OVERSIZED_METHOD};

/// Bytes kept from each end of an oversized line to find its id.
const KEEP: usize = 4096;

/// Smallest free room asked of one read (a megabyte message arrives in a few reads).
const READ_ROOM: usize = 256 << 10;

/// Serves `handler` over a reader and writer until the reader ends.
pub async fn serve<R, W>(handler: CoppiceMcp, read: R, write: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let service = handler
        .serve(LineTransport::new(read, write, MAX_MESSAGE_BYTES))
        .await
        .map_err(|e| anyhow::anyhow!("MCP session failed to start: {e}"))?;
    let reason = service.waiting().await;
    tracing::debug!("MCP session ended: {reason:?}");
    Ok(())
}

type Writer<W> = FramedWrite<W, JsonRpcMessageCodec<TxJsonRpcMessage<RoleServer>>>;

/// Newline-delimited JSON-RPC over a reader and a writer, with a limit on one incoming line
/// (see the module docs).
pub struct LineTransport<R, W> {
    read: R,
    limit: usize,
    /// Bytes read; `buf[pos..]` is not yet consumed.
    buf: Vec<u8>,
    pos: usize,
    /// `buf[pos..scanned]` holds no newline.
    scanned: usize,
    /// The line being skipped for being over the limit.
    over: Option<Oversized>,
    write: Arc<tokio::sync::Mutex<Option<Writer<W>>>>,
}

/// What is kept of a line over the limit: its length and both ends.
struct Oversized {
    len: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
}

impl Oversized {
    fn new(start: &[u8]) -> Self {
        let mut o = Self {
            len: 0,
            head: start[..start.len().min(KEEP)].to_vec(),
            tail: VecDeque::with_capacity(KEEP),
        };
        o.extend(start);
        o
    }

    fn extend(&mut self, part: &[u8]) {
        self.len += part.len();
        let part = &part[part.len().saturating_sub(KEEP)..];
        let excess = (self.tail.len() + part.len()).saturating_sub(KEEP);
        self.tail.drain(..excess);
        self.tail.extend(part);
    }

    /// The request standing in for this line, when its id can be found.
    fn stand_in(self, limit: usize) -> Option<RxJsonRpcMessage<RoleServer>> {
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let Some(id) = id_in_head(&self.head).or_else(|| id_in_tail(&tail)) else {
            tracing::warn!(
                bytes = self.len,
                "dropped an oversized MCP message with no request id"
            );
            return None;
        };
        tracing::warn!(
            bytes = self.len,
            limit,
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
                "bytes": self.len,
                "limit": limit,
            },
        });
        serde_json::from_value(stand_in)
            .inspect_err(|e| tracing::warn!("oversized request stand-in: {e}"))
            .ok()
    }
}

/// What one complete line amounts to.
enum Line {
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// Nothing to deliver (blank, ignored or unparsable).
    Skip,
    /// Well-formed JSON that is no JSON-RPC message: answered with `Invalid Request`.
    Invalid,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Lines from `read`, answers to `write`; lines over `limit` bytes are replaced.
    pub fn new(read: R, write: W, limit: usize) -> Self {
        Self {
            read,
            limit,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            over: None,
            write: Arc::new(tokio::sync::Mutex::new(Some(FramedWrite::new(
                write,
                JsonRpcMessageCodec::default(),
            )))),
        }
    }

    /// The next complete line's outcome; None at the end of the stream. Cancel-safe: the
    /// only await is a read into `buf`, and all progress lives in `self`.
    async fn next_line(&mut self) -> Option<Line> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + i;
                let line = match self.over.take() {
                    Some(mut over) => {
                        over.extend(&self.buf[self.pos..end]);
                        over.stand_in(self.limit)
                            .map_or(Line::Skip, |m| Line::Message(Box::new(m)))
                    }
                    None if end - self.pos > self.limit => Oversized::new(&self.buf[self.pos..end])
                        .stand_in(self.limit)
                        .map_or(Line::Skip, |m| Line::Message(Box::new(m))),
                    None => parse_line(&self.buf[self.pos..end]),
                };
                self.pos = end + 1;
                self.scanned = self.pos;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                    self.scanned = 0;
                }
                return Some(line);
            }
            // No newline yet: a line past the limit stops being buffered.
            let partial = &self.buf[self.pos..];
            if let Some(over) = self.over.as_mut() {
                over.extend(partial);
            } else if partial.len() > self.limit {
                self.over = Some(Oversized::new(partial));
            }
            if self.over.is_some() {
                self.buf.clear();
                self.pos = 0;
            } else if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.scanned = self.buf.len();
            if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
                self.buf.reserve(READ_ROOM);
            }
            match self.read.read_buf(&mut self.buf).await {
                // An unterminated last line is no message, as in rmcp.
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("Error reading from stream: {e}");
                    return None;
                }
            }
        }
    }
}

/// Parses one line (without its newline) as rmcp's transport does: serde_json in place, and
/// for a line that fails, rmcp's codec decides (it ignores some notifications and tells
/// unparsable input, which is ignored, from well-formed JSON of the wrong shape).
fn parse_line(line: &[u8]) -> Line {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Line::Skip;
    }
    let json = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if let Ok(msg) = serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(json) {
        return Line::Message(Box::new(msg));
    }
    let mut framed = bytes::BytesMut::with_capacity(line.len() + 1);
    framed.extend_from_slice(line);
    framed.extend_from_slice(b"\n");
    match JsonRpcMessageCodec::<RxJsonRpcMessage<RoleServer>>::default().decode(&mut framed) {
        Ok(Some(msg)) => Line::Message(Box::new(msg)),
        Ok(None) => Line::Skip,
        Err(JsonRpcMessageCodecError::Serde(e)) => match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                tracing::debug!("Ignoring unparsable incoming message: {e}");
                Line::Skip
            }
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                tracing::debug!("Protocol error on incoming message: {e}");
                Line::Invalid
            }
        },
        Err(e) => {
            tracing::debug!("Ignoring incoming message: {e}");
            Line::Skip
        }
    }
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move {
            match write.lock().await.as_mut() {
                Some(w) => w.send(item).await.map_err(Into::into),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "Transport is closed",
                )),
            }
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.next_line().await? {
                Line::Message(msg) => return Some(*msg),
                Line::Skip => {}
                Line::Invalid => {
                    let reply = TxJsonRpcMessage::<RoleServer>::error(
                        ErrorData::invalid_request("Invalid request", None),
                        None,
                    );
                    if self.send(reply).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        drop(self.write.lock().await.take());
        Ok(())
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
    use tokio::io::AsyncWriteExt;

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

    /// Feeds `input` through a small pipe (so lines arrive in many pieces) and returns the
    /// messages received, as JSON, and what the transport wrote back.
    async fn received(input: Vec<u8>, limit: usize) -> (Vec<Value>, String) {
        let (mut tx, rx) = tokio::io::duplex(1000);
        let (out, mut out_rx) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            tx.write_all(&input).await.unwrap();
        });
        let mut t = LineTransport::new(rx, out, limit);
        let mut got = Vec::new();
        while let Some(msg) = t.receive().await {
            got.push(serde_json::to_value(&msg).unwrap());
        }
        t.close().await.unwrap();
        drop(t);
        let mut written = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out_rx, &mut written)
            .await
            .unwrap();
        (got, written)
    }

    #[tokio::test]
    async fn lines_and_oversized_requests() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"x\",\"arguments\":{{\"x\":\"{}\"}}}}}}",
            "a".repeat(100_000)
        );
        let ping = |id: u32| format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}");
        let input = format!(
            "{}\n{big}\n\n\u{feff}{}\r\nnot json\n{}\n{{\"jsonrpc\":\"2.0\",\"id\":9}}\n{}",
            ping(1),
            ping(2),
            ping(4),
            ping(5)
        );
        let (got, written) = received(input.into_bytes(), 1000).await;
        let ids: Vec<&Value> = got.iter().map(|m| &m["id"]).collect();
        // 5 has no newline: an unterminated last line is no message.
        assert_eq!(
            ids,
            [1, 3, 2, 4].map(Value::from).iter().collect::<Vec<_>>(),
            "{got:?}"
        );
        assert_eq!(got[0]["method"], "ping");
        assert_eq!(got[1]["method"], OVERSIZED_METHOD);
        assert_eq!(got[1]["params"]["bytes"], big.len());
        assert_eq!(got[1]["params"]["limit"], 1000);
        // Well-formed JSON of no message's shape gets rmcp's Invalid Request; junk gets nothing.
        let reply: Value = serde_json::from_str(written.trim()).unwrap();
        assert_eq!(reply["error"]["code"], -32600, "{written}");
        assert_eq!(written.lines().count(), 1);
    }

    #[tokio::test]
    async fn lines_at_the_limit_pass() {
        let line = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
        let (got, _) = received(format!("{line}\n").into_bytes(), line.len()).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["method"], "ping");
        let (got, _) = received(format!("{line}\n").into_bytes(), line.len() - 1).await;
        assert_eq!(got[0]["method"], OVERSIZED_METHOD);
    }
}
