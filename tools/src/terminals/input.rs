//! Input to a terminal's PTY, in order: keys go down one long-lived `StreamInput` request to
//! the agent (one envelope per batch, no request per key), resizes as `Update` calls. If the
//! stream cannot be opened or breaks, keys fall back to one `SendInput` call per batch.

use std::convert::Infallible;

use bytes::Bytes;
use coppice_envd::AgentClient;
use coppice_envd::client::BoxBody;
use coppice_envd::connect::{STREAM_CONTENT_TYPE, encode_envelope};
use coppice_envd::process::{
    Empty, ProcessInput, ProcessSelector, Pty, PtySize, SendInputRequest, StreamInputRequest,
    UpdateRequest,
};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use super::size::Size;

/// Work for the input task, done in order.
pub(super) enum Input {
    Bytes(Vec<u8>),
    Resize(Size),
}

/// Largest batch of keys sent as one envelope.
const BATCH: usize = 64 << 10;

/// Writes queued input and resizes to the agent in order; chunks waiting together go as one.
pub(super) async fn write_inputs(pid: u32, agent: AgentClient, mut rx: mpsc::Receiver<Input>) {
    let mut stream = open_stream(&agent, pid);
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Input::Bytes(b) => batch.extend_from_slice(&b),
                Input::Resize(size) => {
                    flush(&agent, pid, &mut stream, &mut batch).await;
                    resize(&agent, pid, size).await;
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        flush(&agent, pid, &mut stream, &mut batch).await;
    }
}

/// Opens the `StreamInput` request: its body is fed envelopes through the returned sender.
fn open_stream(agent: &AgentClient, pid: u32) -> Option<mpsc::Sender<Bytes>> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
    });
    let body: BoxBody = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = http::Request::post("/process.Process/StreamInput")
        .header(http::header::HOST, "agent")
        .header(http::header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
        .header("connect-protocol-version", "1")
        .body(body)
        .ok()?;
    let start = StreamInputRequest::Start {
        process: ProcessSelector::Pid(pid),
    };
    tx.try_send(envelope(&start)).ok()?;
    let agent = agent.clone();
    tokio::spawn(async move {
        // Answered when the stream ends (the terminal's input task is gone or the process ended).
        match agent.send(req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(pid, "terminal input stream: {}", e.message),
        }
    });
    Some(tx)
}

fn envelope(msg: &StreamInputRequest) -> Bytes {
    encode_envelope(0, &serde_json::to_vec(msg).unwrap_or_default())
}

async fn flush(
    agent: &AgentClient,
    pid: u32,
    stream: &mut Option<mpsc::Sender<Bytes>>,
    batch: &mut Vec<u8>,
) {
    if batch.is_empty() {
        return;
    }
    let bytes = std::mem::take(batch);
    if let Some(tx) = stream {
        let msg = StreamInputRequest::Data {
            input: ProcessInput::Pty(bytes.clone()),
        };
        if tx.send(envelope(&msg)).await.is_ok() {
            return;
        }
        *stream = None;
    }
    let req = SendInputRequest {
        process: ProcessSelector::Pid(pid),
        input: ProcessInput::Pty(bytes),
    };
    if let Err(e) = agent
        .unary::<_, Empty>("process.Process/SendInput", &req)
        .await
    {
        tracing::debug!(pid, "terminal input: {e}");
    }
}

async fn resize(agent: &AgentClient, pid: u32, size: Size) {
    let req = UpdateRequest {
        process: ProcessSelector::Pid(pid),
        pty: Some(Pty {
            size: Some(PtySize {
                cols: size.cols.into(),
                rows: size.rows.into(),
            }),
        }),
    };
    if let Err(e) = agent
        .unary::<_, Empty>("process.Process/Update", &req)
        .await
    {
        tracing::debug!(pid, "terminal resize: {e}");
    }
}
