//! `process.Process` end to end: the real agent binary on a unix socket, real processes.
//! Tests run as root (the agent switches users and becomes a child subreaper).

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coppice_envd::connect::{EndStream, EnvelopeDecoder, STREAM_CONTENT_TYPE, encode_envelope};
use coppice_envd::process::{EndEvent, ProcessEvent, ProcessEventMessage};
use coppice_envd::{Code, ConnectError};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

const ROOT: &str = "Basic cm9vdDo="; // base64("root:")
const USER: &str = "Basic dXNlcjo="; // base64("user:")

#[path = "../common/mod.rs"]
mod common;
use common::Agent;

mod sessions;
mod start;

impl Agent {
    /// A server-streaming call with extra headers; Err is a unary-style error (status, error).
    async fn stream(
        &self,
        method: &str,
        msg: Value,
        headers: &[(&str, &str)],
    ) -> Result<Events, (u16, ConnectError)> {
        let mut req = Request::post(format!("/process.Process/{method}"))
            .header("host", "agent")
            .header("content-type", STREAM_CONTENT_TYPE)
            .header("connect-protocol-version", "1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = encode_envelope(0, &serde_json::to_vec(&msg).unwrap());
        let resp = self
            .client
            .send(req.body(coppice_envd::client::full_body(body)).unwrap())
            .await
            .expect("agent answers");
        let status = resp.status().as_u16();
        if status != 200 {
            assert_eq!(resp.headers()["content-type"], "application/json");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        // Python's connectrpc accepts nothing but this exact content type on streams.
        assert_eq!(resp.headers()["content-type"], STREAM_CONTENT_TYPE);
        Ok(Events {
            body: resp.into_body(),
            decoder: EnvelopeDecoder::default(),
            done: false,
            started: false,
        })
    }

    async fn start(&self, msg: Value) -> Events {
        self.stream("Start", msg, &[])
            .await
            .expect("Start succeeds")
    }

    /// Starts `bash -c script` and collects everything it does.
    async fn run(&self, script: &str) -> Outcome {
        self.start(json!({"process": {"cmd": "/bin/bash", "args": ["-c", script]}}))
            .await
            .collect()
            .await
    }

    async fn unary(&self, method: &str, msg: Value) -> Result<Value, ConnectError> {
        self.client
            .unary(&format!("process.Process/{method}"), &msg)
            .await
    }
}

/// The messages of one event stream.
struct Events {
    body: Incoming,
    decoder: EnvelopeDecoder,
    done: bool,
    /// Whether the start event has been read (it must come first).
    started: bool,
}

#[derive(Debug)]
enum Item {
    Event(ProcessEvent, Bytes),
    /// The end-of-stream envelope's error, if any.
    End(Option<ConnectError>),
}

impl Events {
    /// The next envelope; None after the end-of-stream envelope.
    async fn next(&mut self) -> Option<Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(env) = self.decoder.next_envelope().unwrap() {
                if env.is_end_stream() {
                    self.done = true;
                    let end: EndStream = serde_json::from_slice(&env.data).unwrap();
                    return Some(Item::End(end.error));
                }
                let msg: ProcessEventMessage = serde_json::from_slice(&env.data).unwrap();
                let is_start = matches!(msg.event, ProcessEvent::Start { .. });
                assert_eq!(is_start, !self.started, "start must come first, and once");
                self.started = true;
                return Some(Item::Event(msg.event, env.data));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                other => panic!("stream broke off without an end-of-stream envelope: {other:?}"),
            }
        }
    }

    /// The next process event, skipping keepalives; panics if the stream ends.
    async fn event(&mut self) -> ProcessEvent {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.next()).await {
                Ok(Some(Item::Event(ProcessEvent::Keepalive {}, _))) => continue,
                Ok(Some(Item::Event(e, _))) => return e,
                Ok(other) => panic!("expected an event, got {other:?}"),
                Err(_) => panic!("no event within 20 s"),
            }
        }
    }

    async fn expect_start(&mut self) -> u32 {
        match self.event().await {
            ProcessEvent::Start { pid } => pid,
            other => panic!("expected start first, got {other:?}"),
        }
    }

    /// Reads output until `needle` shows up in stdout or pty output.
    async fn wait_for_output(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.event().await {
                ProcessEvent::Data(d) => {
                    seen.extend_from_slice(data_bytes(&d));
                    let text = String::from_utf8_lossy(&seen).into_owned();
                    if text.contains(needle) {
                        return text;
                    }
                }
                other => panic!(
                    "waiting for {needle:?}, got {other:?} after {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    }

    async fn collect(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some(item) = tokio::time::timeout(Duration::from_secs(30), self.next())
            .await
            .expect("stream finishes")
        {
            match item {
                Item::Event(ProcessEvent::Start { pid }, _) => out.pid = pid,
                Item::Event(ProcessEvent::Data(d), _) => {
                    assert!(out.end.is_none(), "data after end");
                    match d {
                        coppice_envd::process::DataEvent::Stdout(b) => out.stdout.extend(b),
                        coppice_envd::process::DataEvent::Stderr(b) => out.stderr.extend(b),
                        coppice_envd::process::DataEvent::Pty(b) => out.pty.extend(b),
                    }
                }
                Item::Event(ProcessEvent::End(end), raw) => {
                    assert!(out.end.is_none(), "exactly one end event");
                    out.end = Some(end);
                    out.end_json = String::from_utf8(raw.to_vec()).unwrap();
                }
                Item::Event(ProcessEvent::Keepalive {}, _) => out.keepalives += 1,
                Item::End(err) => out.stream_error = err,
            }
        }
        out
    }
}

fn data_bytes(d: &coppice_envd::process::DataEvent) -> &[u8] {
    match d {
        coppice_envd::process::DataEvent::Stdout(b)
        | coppice_envd::process::DataEvent::Stderr(b)
        | coppice_envd::process::DataEvent::Pty(b) => b,
    }
}

#[derive(Debug, Default)]
struct Outcome {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Vec<u8>,
    end: Option<EndEvent>,
    end_json: String,
    keepalives: usize,
    stream_error: Option<ConnectError>,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn end(&self) -> &EndEvent {
        self.end.as_ref().expect("an end event")
    }
}

fn ensure_user_exists() {
    if nix::unistd::User::from_name("user").unwrap().is_none() {
        let status = Command::new("useradd")
            .args(["-m", "user"])
            .status()
            .unwrap();
        // Another test binary may have created it meanwhile.
        assert!(status.success() || nix::unistd::User::from_name("user").unwrap().is_some());
    }
}

fn proc_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Fields of /proc/<pid>/stat after the command name: (state, ppid).
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
