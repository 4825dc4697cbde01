//! A Chrome DevTools Protocol connection: JSON-RPC over one WebSocket (tokio-tungstenite),
//! flat sessions (`sessionId` on each message) for the pages. Calls are typed by the
//! [`Command`] trait (`protocol.rs` declares the few dozen methods the tools use); events fan
//! out to subscribers. Written here rather than taken from chromiumoxide, which pulls a
//! generated crate covering every CDP domain and launches browsers only itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A CDP method with its parameters (the implementing struct) and its result.
pub trait Command: Serialize {
    const METHOD: &'static str;
    type Response: DeserializeOwned;
}

/// How a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CdpError {
    /// The browser answered with an error.
    #[error("{message}")]
    Protocol { code: i64, message: String },
    /// The connection to the browser ended (it crashed, was closed, or the sandbox ended).
    #[error("the browser connection closed")]
    Closed,
    #[error("the browser did not answer {method} within {secs} s")]
    Timeout { method: &'static str, secs: u64 },
    #[error("unexpected answer to {method}: {why}")]
    Decode { method: &'static str, why: String },
}

/// One event, e.g. `Page.loadEventFired`, with the session it came from.
#[derive(Debug)]
pub struct Event {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, CdpError>>>>;

/// A cheap-to-clone handle on one connection.
#[derive(Clone)]
pub struct Cdp {
    out: mpsc::UnboundedSender<String>,
    pending: Arc<Pending>,
    next_id: Arc<AtomicU64>,
    events: broadcast::Sender<Arc<Event>>,
    closed: Arc<AtomicBool>,
}

/// The default bound on one call's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Cdp {
    /// Speaks CDP on `io`, a byte stream to the DevTools server, at the browser target `path`.
    pub async fn connect<S>(io: S, path: &str) -> Result<Self, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Host: localhost, or Chromium refuses the handshake (it guards against DNS rebinding).
        let url = format!("ws://localhost{path}");
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, io, Some(config))
            .await
            .map_err(|e| format!("CDP handshake: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<String>();
        let pending: Arc<Pending> = Default::default();
        let (events, _) = broadcast::channel(4096);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let cdp = Self {
            out,
            pending: pending.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            events: events.clone(),
            closed: closed.clone(),
        };
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                dispatch(v, &pending, &events);
            }
            closed.store(true, Ordering::Release);
            for (_, tx) in pending.lock().drain() {
                let _ = tx.send(Err(CdpError::Closed));
            }
        });
        Ok(cdp)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Subscribes to every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Calls `cmd` on `session` (None: the browser target) within [`CALL_TIMEOUT`].
    pub async fn call<C: Command>(
        &self,
        session: Option<&str>,
        cmd: &C,
    ) -> Result<C::Response, CdpError> {
        self.call_within(session, cmd, CALL_TIMEOUT).await
    }

    pub async fn call_within<C: Command>(
        &self,
        session: Option<&str>,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Response, CdpError> {
        let params = serde_json::to_value(cmd).map_err(|e| CdpError::Decode {
            method: C::METHOD,
            why: e.to_string(),
        })?;
        let value = self.raw(session, C::METHOD, params, timeout).await?;
        serde_json::from_value(value).map_err(|e| CdpError::Decode {
            method: C::METHOD,
            why: e.to_string(),
        })
    }

    async fn raw(
        &self,
        session: Option<&str>,
        method: &'static str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CdpError> {
        if self.is_closed() {
            return Err(CdpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_string());
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        if self.out.send(msg.to_string()).is_err() {
            self.pending.lock().remove(&id);
            return Err(CdpError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CdpError::Closed),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(CdpError::Timeout {
                    method,
                    secs: timeout.as_secs().max(1),
                })
            }
        }
    }
}

/// Routes one incoming message: an answer to its caller, an event to the subscribers.
fn dispatch(v: Value, pending: &Pending, events: &broadcast::Sender<Arc<Event>>) {
    if let Some(id) = v.get("id").and_then(Value::as_u64) {
        let Some(tx) = pending.lock().remove(&id) else {
            return;
        };
        let answer = match v.get("error") {
            Some(e) => Err(CdpError::Protocol {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
            }),
            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        };
        let _ = tx.send(answer);
        return;
    }
    if let Some(method) = v.get("method").and_then(Value::as_str) {
        let _ = events.send(Arc::new(Event {
            method: method.to_string(),
            params: v.get("params").cloned().unwrap_or(Value::Null),
            session_id: v
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_string),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_caller_and_events_the_subscribers() {
        let pending: Pending = Default::default();
        let (events, mut rx) = broadcast::channel(4);
        let (tx, answer) = oneshot::channel();
        pending.lock().insert(7, tx);
        dispatch(
            serde_json::json!({"id": 7, "error": {"code": -32000, "message": "No node"}}),
            &pending,
            &events,
        );
        match answer.await.unwrap() {
            Err(CdpError::Protocol { code, message }) => {
                assert_eq!((code, message.as_str()), (-32000, "No node"));
            }
            other => panic!("{other:?}"),
        }
        dispatch(
            serde_json::json!({"method": "Page.loadEventFired", "params": {"timestamp": 1.0}, "sessionId": "S"}),
            &pending,
            &events,
        );
        let e = rx.recv().await.unwrap();
        assert_eq!(e.method, "Page.loadEventFired");
        assert_eq!(e.session_id.as_deref(), Some("S"));
    }
}
