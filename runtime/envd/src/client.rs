//! Client for an agent's envd API over its unix socket: unary calls, server streams and raw
//! requests (for proxies). Requests reuse idle keep-alive HTTP/1.1 connections to the same
//! agent (a fresh connect + handshake was a third of a `/health` round trip); a request finding
//! none idle opens one, so long-lived streams never hold up other calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::connect::{
    self, Code, ConnectError, EndStream, EnvelopeDecoder, STREAM_CONTENT_TYPE, UNARY_CONTENT_TYPE,
};

/// A body type that any proxied request can be turned into.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A [`BoxBody`] holding `bytes` in one frame.
pub fn full_body(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Client for one agent's envd API at its unix socket; idle connections are pooled per socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
    /// The agent's access token (envd's `X-Access-Token`), added to requests that carry none.
    access_token: Option<Arc<str>>,
    /// Bounds on waiting for an answer; None: wait as long as it takes.
    deadline: Option<crate::deadline::Deadline>,
    /// The network namespace new connections' sockets are made in (see `netns_socket`).
    netns: Option<PathBuf>,
}

/// The header envd's access token travels in.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

impl AgentClient {
    /// A client for the agent listening on `socket`, without token or deadline.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            access_token: None,
            deadline: None,
            netns: None,
        }
    }

    /// A client whose connections are made in the network namespace of process `pid` (the
    /// agent's), so that everything the agent holds lives in its sandbox's namespace.
    pub fn in_netns_of(mut self, pid: Option<i32>) -> Self {
        self.netns = pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net")));
        self
    }

    /// A client whose calls fail with `DeadlineExceeded` when the agent's process is stopped
    /// or no answer starts within the deadline (the host's clients; see `deadline`).
    pub fn with_deadline(mut self, deadline: crate::deadline::Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A client that authenticates with `token` (the host's own calls to a sandbox whose
    /// agent enforces one). Proxies forward their callers' headers instead.
    pub fn with_access_token(mut self, token: Option<String>) -> Self {
        self.access_token = token.map(Arc::from);
        self
    }

    /// As `with_access_token`, sharing the caller's copy of the token.
    pub fn with_shared_access_token(mut self, token: Option<Arc<str>>) -> Self {
        self.access_token = token;
        self
    }

    /// The agent's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> std::io::Result<UnixStream> {
        #[cfg(target_os = "linux")]
        if let Some(netns) = &self.netns {
            // A gone namespace (the agent ended) is reported by connect below.
            if let Ok(fd) = crate::netns_socket::stream_socket_in(netns) {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: a fresh, owned, non-blocking unix stream socket.
                let socket = unsafe { tokio::net::UnixSocket::from_raw_fd(fd.into_raw_fd()) };
                return socket.connect(&self.socket).await;
            }
        }
        UnixStream::connect(&self.socket).await
    }

    /// Sends one request, on an idle connection to the agent when there is one, and returns
    /// the streaming response. The connection goes back to the idle ones once the response
    /// body has been read to its end (a body dropped early closes it).
    pub async fn send(
        &self,
        mut req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, ConnectError> {
        if let Some(token) = &self.access_token
            && !req.headers().contains_key(ACCESS_TOKEN_HEADER)
            && let Ok(v) = http::HeaderValue::from_str(token)
        {
            req.headers_mut().insert(ACCESS_TOKEN_HEADER, v);
        }
        let Some(deadline) = self.deadline else {
            return self.send_now(req).await;
        };
        let (parts, body) = req.into_parts();
        let (body, done) = crate::deadline::watch_body(body);
        deadline
            .bound(done, self.send_now(Request::from_parts(parts, body)))
            .await
    }

    async fn send_now(
        &self,
        mut req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, ConnectError> {
        while let Some(mut sender) = idle::take(&self.socket) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    idle::give_back_when_ready(self.socket.clone(), sender);
                    return Ok(resp);
                }
                // Closed while idle (the agent restarted or ended): the request was not
                // sent, so it can go on another connection.
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        // Its siblings are most likely dead too.
                        idle::drop_all(&self.socket);
                        return Err(ConnectError::new(
                            Code::Unavailable,
                            format!("agent request failed: {}", e.error()),
                        ));
                    }
                },
            }
        }
        let stream = self.connect().await.map_err(|e| {
            ConnectError::new(Code::Unavailable, format!("sandbox agent unreachable: {e}"))
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::new(Code::Unavailable, format!("agent handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("agent connection ended: {e}");
            }
        });
        let resp = sender.send_request(req).await.map_err(|e| {
            ConnectError::new(Code::Unavailable, format!("agent request failed: {e}"))
        })?;
        idle::give_back_when_ready(self.socket.clone(), sender);
        Ok(resp)
    }

    /// A byte stream to `127.0.0.1:port` inside the sandbox (the agent's `/loopback/{port}`
    /// route), on a connection of its own. Bounded by the deadline like any call's answer.
    pub async fn tunnel(
        &self,
        port: u16,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ConnectError> {
        let open = async {
            let stream = self.connect().await.map_err(|e| {
                ConnectError::new(Code::Unavailable, format!("sandbox agent unreachable: {e}"))
            })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| {
                    ConnectError::new(Code::Unavailable, format!("agent handshake: {e}"))
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("agent tunnel connection ended: {e}");
                }
            });
            let mut req = Request::get(format!("/loopback/{port}"))
                .header(http::header::HOST, "agent")
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "tcp")
                .body(full_body(Bytes::new()))
                .expect("static request");
            if let Some(token) = &self.access_token
                && let Ok(v) = http::HeaderValue::from_str(token)
            {
                req.headers_mut().insert(ACCESS_TOKEN_HEADER, v);
            }
            let resp = sender.send_request(req).await.map_err(|e| {
                ConnectError::new(Code::Unavailable, format!("agent request failed: {e}"))
            })?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(ConnectError::new(
                    Code::from_http_status(status.as_u16()),
                    format!(
                        "port {port} in the sandbox: {}",
                        String::from_utf8_lossy(&bytes).trim()
                    ),
                ));
            }
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|e| ConnectError::new(Code::Unavailable, format!("agent tunnel: {e}")))?;
            Ok(TokioIo::new(upgraded))
        };
        match self.deadline {
            Some(d) => {
                // No body: the deadline runs from now.
                let (_, sent) = crate::deadline::watch_body(full_body(Bytes::new()));
                d.bound(sent, open).await
            }
            None => open.await,
        }
    }

    /// `GET /health` answered with 2xx.
    pub async fn healthy(&self) -> bool {
        let req = Request::get("/health")
            .header(http::header::HOST, "agent")
            .body(full_body(Bytes::new()))
            .expect("static request");
        matches!(self.send(req).await, Ok(r) if r.status().is_success())
    }

    /// A unary Connect call, e.g. `unary("filesystem.Filesystem/Stat", &req)`.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ConnectError> {
        let body = serde_json::to_vec(req).map_err(|e| ConnectError::internal(e.to_string()))?;
        let req = Request::post(format!("/{method}"))
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, UNARY_CONTENT_TYPE)
            .header("connect-protocol-version", "1")
            .body(full_body(body))
            .map_err(|e| ConnectError::internal(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ConnectError::new(Code::Unavailable, e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(error_from_body(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ConnectError::internal(format!("bad response from agent: {e}")))
    }

    /// A server-streaming Connect call. `timeout_ms` becomes `connect-timeout-ms`.
    pub async fn server_stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        timeout_ms: Option<u64>,
    ) -> Result<MessageStream<Resp>, ConnectError> {
        self.server_stream_as(method, req, timeout_ms, "").await
    }

    /// As `server_stream`, run as `user` (envd's `Authorization: Basic user:`); "" = default.
    pub async fn server_stream_as<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
        timeout_ms: Option<u64>,
        user: &str,
    ) -> Result<MessageStream<Resp>, ConnectError> {
        let json = serde_json::to_vec(req).map_err(|e| ConnectError::internal(e.to_string()))?;
        let mut builder = Request::post(format!("/{method}"))
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
            .header("connect-protocol-version", "1");
        if let Some(ms) = timeout_ms {
            builder = builder.header("connect-timeout-ms", ms.to_string());
        }
        if !user.is_empty() {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            builder = builder.header(http::header::AUTHORIZATION, format!("Basic {token}"));
        }
        let req = builder
            .body(full_body(connect::encode_envelope(0, &json)))
            .map_err(|e| ConnectError::internal(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(error_from_body(status, &bytes));
        }
        Ok(MessageStream {
            body: resp.into_body(),
            decoder: EnvelopeDecoder::default(),
            done: false,
            _marker: std::marker::PhantomData,
        })
    }
}

/// Idle keep-alive connections, per agent socket, shared by every `AgentClient` (clones and
/// new clients for the same sandbox alike).
mod idle {
    use super::*;

    /// Idle connections kept per agent; more are closed.
    const MAX_IDLE: usize = 4;

    type Pool = HashMap<PathBuf, Vec<SendRequest<BoxBody>>>;

    fn pool() -> std::sync::MutexGuard<'static, Pool> {
        static POOL: std::sync::LazyLock<Mutex<Pool>> = std::sync::LazyLock::new(Default::default);
        POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `socket` that can take a request now.
    pub(super) fn take(socket: &Path) -> Option<SendRequest<BoxBody>> {
        let mut pool = pool();
        let list = pool.get_mut(socket)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        pool.remove(socket);
        None
    }

    pub(super) fn drop_all(socket: &Path) {
        pool().remove(socket);
    }

    /// Puts `sender` back once its connection is ready for another request (its response
    /// has been read); a connection that closes instead is dropped.
    pub(super) fn give_back_when_ready(socket: PathBuf, mut sender: SendRequest<BoxBody>) {
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut pool = pool();
            // Sockets of ended sandboxes leave closed connections behind: drop them now and then.
            if pool.len() > 64 {
                pool.retain(|_, list| {
                    list.retain(|s| !s.is_closed());
                    !list.is_empty()
                });
            }
            let list = pool.entry(socket).or_default();
            if list.len() < MAX_IDLE {
                list.push(sender);
            }
        });
    }

    /// How many idle connections to `socket` are kept (for tests).
    pub fn count(socket: &Path) -> usize {
        pool().get(socket).map_or(0, |l| l.len())
    }
}

pub use idle::count as idle_connections;

/// Decodes a non-200 Connect (or plain) error body.
pub fn error_from_body(status: StatusCode, bytes: &[u8]) -> ConnectError {
    serde_json::from_slice::<ConnectError>(bytes).unwrap_or_else(|_| {
        ConnectError::new(
            Code::from_http_status(status.as_u16()),
            String::from_utf8_lossy(bytes).into_owned(),
        )
    })
}

/// Messages of a server stream; ends after the end-of-stream envelope, yielding its error.
pub struct MessageStream<T> {
    body: Incoming,
    decoder: EnvelopeDecoder,
    done: bool,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for MessageStream<T> {
    type Item = Result<T, ConnectError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.next_envelope() {
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(env)) if env.is_end_stream() => {
                    this.done = true;
                    let end: EndStream = serde_json::from_slice(&env.data).unwrap_or_default();
                    return Poll::Ready(end.error.map(Err));
                }
                Ok(Some(env)) => {
                    return Poll::Ready(Some(serde_json::from_slice(&env.data).map_err(|e| {
                        ConnectError::internal(format!("bad stream message from agent: {e}"))
                    })));
                }
                Ok(None) => {}
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ConnectError::new(
                        Code::Unavailable,
                        "agent stream ended without an end-of-stream message",
                    ))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ConnectError::new(
                        Code::Unavailable,
                        e.to_string(),
                    ))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                    }
                }
            }
        }
    }
}
