//! `GET /api/v1/sandboxes/{id}/terminals/{tid}/ws`: one client attached to a terminal. Binary
//! frames carry terminal bytes (to the server: input; to the client: an 8-byte big-endian
//! output offset, then output), text frames carry JSON control. docs/terminals.md is the
//! protocol. Each client reads the terminal's ring at its own pace, so a slow or stalled one
//! only falls behind (and is told of the gap) while the PTY and the other clients go on.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use coppice_runtime::Error;
use coppice_tools::terminals::{Attachment, Control, Role, Size, Slice, Terminal};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::guard::ShareTokenOnly;
use crate::{ApiError, AppState};

/// Output bytes per binary frame at most.
const FRAME_BYTES: usize = 64 << 10;
/// Largest message a client may send; a bigger one closes the connection (1009).
const MAX_MESSAGE: usize = 1 << 20;
/// A client has this long to send its hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// A client whose socket takes longer than this to accept one frame is dropped.
const SEND_WAIT: Duration = Duration::from_secs(30);
/// Server pings keep intermediaries from cutting idle terminals.
const PING_EVERY: Duration = Duration::from_secs(20);

#[derive(Deserialize)]
pub(crate) struct AttachQuery {
    /// A share token (writer or viewer) instead of the daemon's bearer token.
    token: Option<String>,
    /// With the bearer token: attach as a viewer.
    role: Option<Role>,
}

/// Upgrades to the terminal's WebSocket after checking who may attach and as what.
pub(crate) async fn attach(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
    Query(q): Query<AttachQuery>,
    share_only: Option<Extension<ShareTokenOnly>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (term, role) = match q.token.as_deref() {
        Some(token) => t
            .terminal_by_token(&tid, token)
            .filter(|(term, _)| term.sandbox == id)
            .ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "the token does not open terminal '{tid}' of sandbox '{id}'"
                ))
            })?,
        None if share_only.is_some() => {
            return Err(Error::PermissionDenied("a share token is required".into()).into());
        }
        None => (t.terminal(&id, &tid)?, q.role.unwrap_or(Role::Writer)),
    };
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(socket, term, role).await {
                tracing::debug!("terminal client: {e}");
            }
        }))
}

/// What a client sends as text.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Hello {
        /// The offset just past the last output byte it has (a reconnect), if any.
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        cols: Option<u16>,
        #[serde(default)]
        rows: Option<u16>,
        #[serde(default)]
        name: Option<String>,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
    Ping,
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

async fn send(tx: &mut Sink, msg: Message) -> anyhow::Result<()> {
    tokio::time::timeout(SEND_WAIT, tx.send(msg))
        .await
        .map_err(|_| anyhow::anyhow!("client stopped reading; dropped"))??;
    Ok(())
}

async fn send_json(tx: &mut Sink, v: serde_json::Value) -> anyhow::Result<()> {
    send(tx, Message::Text(v.to_string().into())).await
}

fn output_frame(offset: u64, bytes: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(8 + bytes.len());
    frame.extend_from_slice(&offset.to_be_bytes());
    frame.extend_from_slice(bytes);
    Message::Binary(frame.into())
}

async fn close(tx: &mut Sink, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send(tx, Message::Close(Some(frame))).await;
}

async fn session(socket: WebSocket, term: Arc<Terminal>, role: Role) -> anyhow::Result<()> {
    let (mut tx, mut rx) = socket.split();
    let (since, size, name) = match tokio::time::timeout(HELLO_WAIT, rx.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str(&text) {
            Ok(ClientMsg::Hello {
                since,
                cols,
                rows,
                name,
            }) => {
                let size = match (cols, rows) {
                    (Some(c), Some(r)) => Some(Size::checked(c, r)?),
                    _ => None,
                };
                (since, size, name.unwrap_or_default())
            }
            _ => {
                close(
                    &mut tx,
                    4400,
                    "the first message must be {\"type\":\"hello\"}",
                )
                .await;
                return Ok(());
            }
        },
        _ => {
            close(&mut tx, 4400, "send {\"type\":\"hello\"} first").await;
            return Ok(());
        }
    };
    // Subscribe before reading offsets so nothing falls between replay and live output.
    let mut control = term.watch_control();
    let mut output = term.watch_output();
    let attachment = term.attach(&name, role, size);
    let (ring_start, end) = term.offsets();
    let screen = term.screen();
    let mut offset = match since {
        Some(s) if s <= end => s,
        Some(_) => {
            // Offsets restarted (a restarted daemon adopted the terminal): start afresh.
            send_json(&mut tx, json!({"type": "reset"})).await?;
            ring_start
        }
        None if screen.alternate_screen => end,
        None => ring_start,
    };
    let now = term.size();
    send_json(
        &mut tx,
        json!({
            "type": "hello",
            "terminal": term.id,
            "client": attachment.client(),
            "role": role,
            "cols": now.cols,
            "rows": now.rows,
            "offset": offset,
            "ring_start": ring_start,
            "end": end,
            "clients": term.clients(),
        }),
    )
    .await?;
    if since.is_none() && screen.alternate_screen {
        // A full-screen program: seed with the screen model, not a replay of stale frames.
        let (at, seed) = term.screen_formatted();
        offset = at;
        let data = String::from_utf8_lossy(&seed).into_owned();
        send_json(&mut tx, json!({"type": "seed", "offset": at, "data": data})).await?;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        loop {
            match term.read(offset, FRAME_BYTES) {
                Slice::Data { offset: at, bytes } => {
                    offset = at + bytes.len() as u64;
                    send(&mut tx, output_frame(at, &bytes)).await?;
                }
                Slice::Gap { from, to } => {
                    send_json(&mut tx, json!({"type": "gap", "from": from, "to": to})).await?;
                    offset = to;
                }
                Slice::Empty => break,
            }
        }
        if let Some(exit) = term.exit() {
            if offset >= term.offsets().1 {
                let msg =
                    json!({"type": "exit", "exit_code": exit.exit_code, "status": exit.status});
                send_json(&mut tx, msg).await?;
                close(&mut tx, 1000, "the terminal's process ended").await;
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            _ = output.changed() => {}
            ev = control.recv() => match ev {
                Ok(Control::Exit { .. }) => {}
                // Its own arrival is in the hello already.
                Ok(Control::Joined { client }) if client.id == attachment.client() => {}
                Ok(ev) => send_json(&mut tx, serde_json::to_value(ev)?).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Ok(()),
            },
            msg = rx.next() => match msg {
                Some(Ok(msg)) => handle(&mut tx, &term, &attachment, role, msg).await?,
                Some(Err(e)) if e.to_string().contains("too long") => {
                    close(&mut tx, 1009, "message too big: the limit is 1 MiB").await;
                    return Ok(());
                }
                _ => return Ok(()),
            },
            _ = ping.tick() => send(&mut tx, Message::Ping(Vec::new().into())).await?,
        }
    }
}

/// One message from the client.
async fn handle(
    tx: &mut Sink,
    term: &Terminal,
    attachment: &Attachment,
    role: Role,
    msg: Message,
) -> anyhow::Result<()> {
    let refuse = |what: &str| json!({"type": "error", "message": format!("read-only client: {what} ignored")});
    match msg {
        Message::Binary(bytes) if role == Role::Writer => {
            if let Err(e) = term.write(bytes.to_vec()).await {
                send_json(tx, json!({"type": "error", "message": e.to_string()})).await?;
            }
        }
        Message::Binary(_) => send_json(tx, refuse("input")).await?,
        Message::Text(text) => match serde_json::from_str::<ClientMsg>(&text) {
            Ok(ClientMsg::Resize { .. }) if role == Role::Viewer => {
                send_json(tx, refuse("resize")).await?
            }
            Ok(ClientMsg::Resize { cols, rows }) => match Size::checked(cols, rows) {
                Ok(size) => {
                    attachment.resize(size);
                }
                Err(e) => send_json(tx, json!({"type": "error", "message": e.to_string()})).await?,
            },
            Ok(ClientMsg::Ping) => send_json(tx, json!({"type": "pong"})).await?,
            Ok(ClientMsg::Hello { .. }) => {
                send_json(
                    tx,
                    json!({"type": "error", "message": "hello was already received"}),
                )
                .await?
            }
            Err(e) => {
                let message = format!("bad control message: {e} (see docs/terminals.md)");
                send_json(tx, json!({"type": "error", "message": message})).await?
            }
        },
        _ => {}
    }
    Ok(())
}
