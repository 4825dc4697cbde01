//! `process.Process`: starting commands (with pipes or a PTY), streaming their output to one or
//! more watchers, input, signals, resizes. Semantics follow envd's process service.

mod spawn;
mod status;
mod table;
mod vfork;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use coppice_envd::connect::EnvelopeDecoder;
use coppice_envd::process::{
    CloseStdinRequest, ConnectRequest, Empty, ListRequest, ListResponse, ProcessEvent,
    ProcessEventMessage, SendInputRequest, SendSignalRequest, Signal, StartRequest,
    StreamInputRequest, UpdateRequest,
};
use coppice_envd::{Code, ConnectError};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

pub use spawn::{child_env, prepare_as_user};
use table::Msg;
pub use table::Processes;

use crate::connect_axum::{
    RpcError, keepalive_interval, parse_stream_request, parse_unary, stream_response, timeout_ms,
    unary_ok,
};
use crate::env::Env;
use crate::users;

/// What the process service works with: the sandbox's environment and its process table.
pub struct ProcessService {
    pub env: Arc<Env>,
    pub processes: Processes,
}

pub fn router() -> Router<Arc<ProcessService>> {
    Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/Update", post(update))
        .route("/process.Process/StreamInput", post(stream_input))
}

/// `Start`: spawns the process, then streams start, output and end. Errors before the start
/// event (bad user, bad cwd, exec failure) are unary-style responses, as envd's are.
async fn start(
    State(state): State<Arc<ProcessService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: StartRequest = parse_stream_request(&body)?;
    let user = users::lookup(&users::requested_user(
        &headers,
        None,
        &state.env.default_user,
    ))?;
    let cwd = spawn::child_cwd(req.process.cwd.as_deref(), &user)?;
    let env = spawn::child_env(&user, &state.env.env_snapshot(), &req.process.envs);
    let spawned = spawn::spawn(&req, &user, &env, &cwd)?;
    // connect-timeout-ms bounds the process's lifetime, not just this stream.
    let timeout = timeout_ms(&headers).map(Duration::from_millis);
    let (proc, watcher) = state
        .processes
        .launch(req.process, req.tag, spawned, timeout);
    tracing::debug!(pid = proc.pid, cmd = %proc.config.cmd, user = %user.name, "process started");
    Ok(event_stream(
        proc.pid,
        watcher,
        keepalive_interval(&headers),
        None,
        true,
    ))
}

/// `Connect`: watches a running process from now on, or gets the end of a finished one.
async fn connect(
    State(state): State<Arc<ProcessService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: ConnectRequest = parse_stream_request(&body)?;
    let proc = state.processes.find(&req.process, true)?;
    // Here connect-timeout-ms only bounds this stream (the process keeps running).
    let deadline = timeout_ms(&headers).map(|ms| Instant::now() + Duration::from_millis(ms));
    Ok(event_stream(
        proc.pid,
        proc.subscribe(),
        keepalive_interval(&headers),
        deadline,
        false,
    ))
}

async fn list(State(state): State<Arc<ProcessService>>, body: Bytes) -> Result<Response, RpcError> {
    let req: ListRequest = parse_unary(&body)?;
    Ok(unary_ok(&ListResponse {
        processes: state.processes.list(req.pty_sizes),
    }))
}

async fn send_input(
    State(state): State<Arc<ProcessService>>,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: SendInputRequest = parse_unary(&body)?;
    let proc = state.processes.find(&req.process, false)?;
    proc.write_input(&req.input).await?;
    Ok(unary_ok(&Empty {}))
}

async fn send_signal(
    State(state): State<Arc<ProcessService>>,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: SendSignalRequest = parse_unary(&body)?;
    let proc = state.processes.find(&req.process, false)?;
    let signal = match req.signal {
        Signal::Sigterm => nix::sys::signal::Signal::SIGTERM,
        Signal::Sigkill => nix::sys::signal::Signal::SIGKILL,
        Signal::Unspecified => {
            return Err(ConnectError::invalid_argument("invalid signal SIGNAL_UNSPECIFIED").into());
        }
    };
    // The whole process group, so `bash -c` children go too.
    if !crate::reaper::signal_group(proc.pid, signal) {
        return Err(
            ConnectError::not_found(format!("process with pid {} not found", proc.pid)).into(),
        );
    }
    Ok(unary_ok(&Empty {}))
}

async fn close_stdin(
    State(state): State<Arc<ProcessService>>,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: CloseStdinRequest = parse_unary(&body)?;
    let proc = state.processes.find(&req.process, false)?;
    proc.close_stdin().await?;
    Ok(unary_ok(&Empty {}))
}

async fn update(
    State(state): State<Arc<ProcessService>>,
    body: Bytes,
) -> Result<Response, RpcError> {
    let req: UpdateRequest = parse_unary(&body)?;
    let proc = state.processes.find(&req.process, false)?;
    if let Some(size) = req.pty.and_then(|p| p.size) {
        proc.resize(size).await?;
    }
    Ok(unary_ok(&Empty {}))
}

/// `StreamInput` (client streaming): each envelope is acted on as soon as it arrives; the
/// answer, one `{}` message or an error, comes once the request body ends.
async fn stream_input(State(state): State<Arc<ProcessService>>, body: Body) -> Response {
    let outcome = consume_input(&state, body).await.map(|()| Empty {});
    if let Err(e) = &outcome {
        tracing::debug!("StreamInput failed: {e}");
    }
    stream_response(futures::stream::iter([outcome]))
}

async fn consume_input(state: &ProcessService, body: Body) -> Result<(), ConnectError> {
    let mut chunks = body.into_data_stream();
    let mut decoder = EnvelopeDecoder::default();
    let mut target = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|e| ConnectError::new(Code::Unknown, format!("error streaming input: {e}")))?;
        decoder.push(&chunk);
        while let Some(envelope) = decoder.next_envelope()? {
            if envelope.is_end_stream() {
                return Ok(());
            }
            let msg: StreamInputRequest = parse_unary(&envelope.data).map_err(|e| e.0)?;
            match msg {
                StreamInputRequest::Start { process } => {
                    target = Some(state.processes.find(&process, false)?);
                }
                StreamInputRequest::Data { input } => {
                    let proc = target.as_ref().ok_or_else(|| {
                        ConnectError::new(Code::FailedPrecondition, "input before start")
                    })?;
                    proc.write_input(&input).await?;
                }
                StreamInputRequest::Keepalive {} => {}
            }
        }
    }
    Ok(())
}

/// A process event stream: `start{pid}`, then output as it comes (keepalives in silences),
/// then the end event. A `deadline` ends the stream with `deadline_exceeded`. So does, for the
/// `Start` stream (`is_start`), a process killed by its own `connect-timeout-ms`, after its end
/// event: the SDKs then raise their timeout error, as with envd.
fn event_stream(
    pid: u32,
    watcher: mpsc::Receiver<Msg>,
    keepalive: Duration,
    deadline: Option<Instant>,
    is_start: bool,
) -> Response {
    enum Phase {
        Start,
        Events,
        Fail(ConnectError),
        Done,
    }
    let message = |event| ProcessEventMessage { event };
    let deadline_exceeded =
        || ConnectError::new(Code::DeadlineExceeded, "context deadline exceeded");

    let messages = futures::stream::unfold(
        (Phase::Start, watcher),
        move |(phase, mut watcher)| async move {
            let (item, next) = match phase {
                Phase::Start => (Ok(message(ProcessEvent::Start { pid })), Phase::Events),
                Phase::Events => {
                    let deadline = async {
                        match deadline {
                            Some(at) => sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        msg = watcher.recv() => match msg {
                            Some(Msg::Data(data)) => {
                                (Ok(message(ProcessEvent::Data(data))), Phase::Events)
                            }
                            Some(Msg::End { end, timed_out }) => {
                                let next = if timed_out && is_start {
                                    Phase::Fail(deadline_exceeded())
                                } else {
                                    Phase::Done
                                };
                                (Ok(message(ProcessEvent::End(end))), next)
                            }
                            None => (
                                Err(ConnectError::new(
                                    Code::Unknown,
                                    "end event channel closed before sending end event",
                                )),
                                Phase::Done,
                            ),
                        },
                        _ = deadline => (Err(deadline_exceeded()), Phase::Done),
                        _ = sleep(keepalive) => {
                            (Ok(message(ProcessEvent::Keepalive {})), Phase::Events)
                        }
                    }
                }
                Phase::Fail(e) => (Err(e), Phase::Done),
                Phase::Done => return None,
            };
            Some((item, (next, watcher)))
        },
    );
    stream_response(messages)
}
