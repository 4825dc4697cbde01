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

mod common;
use common::Agent;

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

#[tokio::test]
async fn start_streams_output_and_exit_codes() {
    let agent = Agent::launch("root", "debug").await;

    let ok = agent.run("echo hi").await;
    assert!(ok.pid > 0);
    assert_eq!(ok.stdout(), "hi\n");
    assert_eq!(
        ok.end_json,
        r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#
    );
    assert!(ok.stream_error.is_none());

    let failed = agent.run("echo oops >&2; exit 3").await;
    assert_eq!(String::from_utf8_lossy(&failed.stderr), "oops\n");
    assert!(failed.stdout.is_empty());
    let end = failed.end();
    assert_eq!((end.exit_code, end.exited), (3, true));
    assert_eq!(end.status, "exit status 3");
    assert_eq!(end.error.as_deref(), Some("exit status 3"));

    // Large output arrives complete and in order.
    let big = agent.run("seq 1 100000").await;
    let expected: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(big.stdout(), expected);

    // The shared client works against the agent as well.
    let mut stream = agent
        .client
        .server_stream::<_, ProcessEventMessage>(
            "process.Process/Start",
            &json!({"process": {"cmd": "/bin/echo", "args": ["via", "client"]}}),
            Some(60_000),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let mut events = Vec::new();
    while let Some(msg) = stream.next().await {
        events.push(msg.unwrap().event);
    }
    assert!(matches!(events[0], ProcessEvent::Start { .. }));
    assert!(matches!(events.last(), Some(ProcessEvent::End(e)) if e.exited && e.exit_code == 0));
}

#[tokio::test]
async fn output_streams_before_the_process_ends() {
    let agent = Agent::launch("root", "debug").await;
    let started = Instant::now();
    let mut events = agent
        .start(json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo first; sleep 2; echo second >&2"]}}))
        .await;
    events.expect_start().await;
    match events.event().await {
        ProcessEvent::Data(coppice_envd::process::DataEvent::Stdout(b)) => {
            assert_eq!(b, b"first\n")
        }
        other => panic!("expected stdout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "first output must not wait for the process to end"
    );
    let rest = events.collect().await;
    assert_eq!(String::from_utf8_lossy(&rest.stderr), "second\n");
    assert_eq!(rest.end().exit_code, 0);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn env_vars_layer_sandbox_and_request() {
    let agent = Agent::launch("root", "debug").await;
    // Sandbox-wide env, as the host sets it through /init.
    let req = Request::post("/init")
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(coppice_envd::client::full_body(
            r#"{"envVars":{"SANDBOX_VAR":"from-sandbox","BOTH":"sandbox"}}"#,
        ))
        .unwrap();
    assert!(agent.client.send(req).await.unwrap().status().is_success());

    let out = agent
        .start(json!({"process": {
            "cmd": "/bin/bash",
            "args": ["-c", "echo $SANDBOX_VAR $BOTH $REQ_VAR $HOME $USER $LOGNAME; echo $PATH"],
            "envs": {"BOTH": "request", "REQ_VAR": "r"}
        }}))
        .await
        .collect()
        .await;
    let stdout = out.stdout();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        "from-sandbox request r /root root root"
    );
    assert!(lines.next().unwrap().contains("/usr/bin"));
}

#[tokio::test]
async fn cwd_defaults_to_home_and_bad_cwd_is_rejected() {
    let agent = Agent::launch("root", "debug").await;
    assert_eq!(agent.run("pwd").await.stdout(), "/root\n");

    let out = agent
        .start(json!({"process": {"cmd": "/bin/pwd", "cwd": "/tmp"}}))
        .await
        .collect()
        .await;
    assert_eq!(out.stdout(), "/tmp\n");

    let Err((status, err)) = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/pwd", "cwd": "/no/such/dir"}}),
            &[],
        )
        .await
    else {
        panic!("a bad cwd must fail")
    };
    assert_eq!(status, 400);
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.message, "cwd '/no/such/dir' does not exist");
}

#[tokio::test]
async fn runs_as_the_default_user_or_root_when_asked() {
    ensure_user_exists();
    let agent = Agent::launch("user", "debug").await;
    let script = json!({"process": {"cmd": "/bin/bash", "args": ["-c", "id -un; id -u; id -G; echo $HOME; pwd"]}});

    let as_default = agent
        .stream("Start", script.clone(), &[])
        .await
        .unwrap()
        .collect()
        .await;
    let user = nix::unistd::User::from_name("user").unwrap().unwrap();
    let home = user.dir.display().to_string();
    let stdout = as_default.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user");
    assert_eq!(lines[1], user.uid.to_string());
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "root's groups must be dropped: {}",
        lines[2]
    );
    assert_eq!(lines[3], home);
    assert_eq!(lines[4], home);

    let as_user = agent
        .stream("Start", script.clone(), &[("authorization", USER)])
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(as_user.stdout(), as_default.stdout());

    let as_root = agent
        .stream("Start", script, &[("authorization", ROOT)])
        .await
        .unwrap()
        .collect()
        .await;
    let stdout = as_root.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["root", "0"]);
    assert_eq!(lines[3], "/root");
}

#[tokio::test]
async fn stdin_takes_input_and_closes() {
    let agent = Agent::launch("root", "debug").await;
    let mut cat = agent
        .start(json!({"process": {"cmd": "/bin/cat"}, "tag": "cat"}))
        .await;
    let pid = cat.expect_start().await;
    agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}),
        )
        .await
        .unwrap();
    cat.wait_for_output("hello\n").await;
    // By tag as well.
    agent
        .unary(
            "SendInput",
            json!({"process": {"tag": "cat"}, "input": {"stdin": "YWdhaW4K"}}),
        )
        .await
        .unwrap();
    cat.wait_for_output("again\n").await;
    agent
        .unary("CloseStdin", json!({"process": {"pid": pid}}))
        .await
        .unwrap();
    let rest = cat.collect().await;
    assert_eq!(rest.end().exit_code, 0);
    assert!(rest.end().exited);

    // stdin: false gives the process EOF at once.
    let out = agent
        .start(json!({"process": {"cmd": "/bin/cat"}, "stdin": false}))
        .await
        .collect()
        .await;
    assert_eq!(out.end().status, "exit status 0");

    let err = agent
        .unary(
            "SendInput",
            json!({"process": {"pid": 999999}, "input": {"stdin": "YQ=="}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn stream_input_writes_each_envelope_as_it_arrives() {
    let agent = Agent::launch("root", "debug").await;
    let mut cat = agent.start(json!({"process": {"cmd": "/bin/cat"}})).await;
    let pid = cat.expect_start().await;

    // A chunked request body fed over time, like Python's client sends it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("/process.Process/StreamInput")
        .header("host", "agent")
        .header("content-type", STREAM_CONTENT_TYPE)
        .header("connect-protocol-version", "1")
        .body(http_body_util::BodyExt::boxed_unsync(body))
        .unwrap();
    let client = agent.client.clone();
    let call = tokio::spawn(async move { client.send(req).await });

    let envelope = |v: Value| Ok(Frame::data(encode_envelope(0, v.to_string().as_bytes())));
    tx.send(envelope(json!({"start": {"process": {"pid": pid}}})))
        .await
        .unwrap();
    tx.send(envelope(json!({"data": {"input": {"stdin": "YQ=="}}})))
        .await
        .unwrap();
    // The input reaches the process while the request body is still open.
    cat.wait_for_output("a").await;
    tx.send(envelope(json!({"keepalive": {}}))).await.unwrap();
    tx.send(envelope(json!({"data": {"input": {"stdin": "Yg=="}}})))
        .await
        .unwrap();
    cat.wait_for_output("b").await;
    drop(tx);

    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], STREAM_CONTENT_TYPE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut decoder = EnvelopeDecoder::default();
    decoder.push(&body);
    let first = decoder.next_envelope().unwrap().unwrap();
    assert_eq!((first.flags, &first.data[..]), (0, &b"{}"[..]));
    let end = decoder.next_envelope().unwrap().unwrap();
    assert!(end.is_end_stream());
    assert_eq!(&end.data[..], b"{}");

    agent
        .unary("CloseStdin", json!({"process": {"pid": pid}}))
        .await
        .unwrap();
    assert_eq!(cat.collect().await.end().exit_code, 0);
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let agent = Agent::launch("root", "debug").await;
    let mut sleeper = agent
        .start(json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}}))
        .await;
    let pid = sleeper.expect_start().await;
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
        )
        .await
        .unwrap();
    let out = sleeper.collect().await;
    assert_eq!(
        out.end_json,
        r#"{"event":{"end":{"exitCode":-1,"status":"signal: terminated","error":"signal: terminated"}}}"#
    );

    // SIGKILL takes the shell's children with it.
    let mut shell = agent
        .start(json!({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 30 & echo $!; wait"]}}))
        .await;
    let pid = shell.expect_start().await;
    let text = shell.wait_for_output("\n").await;
    let grandchild: u32 = text.trim().parse().unwrap();
    assert!(proc_exists(grandchild));
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let out = shell.collect().await;
    assert_eq!(out.end().status, "signal: killed");
    assert!(!out.end().exited);
    eventually("the backgrounded sleep is killed and reaped", || {
        !proc_exists(grandchild)
    })
    .await;

    let err = agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(err.message, "process with pid 999999 not found");
}

#[tokio::test]
async fn connect_watches_a_running_or_finished_process() {
    let agent = Agent::launch("root", "debug").await;
    let mut first = agent
        .start(json!({
            "process": {"cmd": "/bin/bash", "args": ["-c", "read line; echo got $line; sleep 0.3; echo bye"]},
            "tag": "watched"
        }))
        .await;
    let pid = first.expect_start().await;

    // Two more watchers, by pid and by tag.
    let mut second = agent
        .stream("Connect", json!({"process": {"pid": pid}}), &[])
        .await
        .unwrap();
    assert_eq!(second.expect_start().await, pid);
    let mut third = agent
        .stream("Connect", json!({"process": {"tag": "watched"}}), &[])
        .await
        .unwrap();
    assert_eq!(third.expect_start().await, pid);

    agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "eAo="}}),
        )
        .await
        .unwrap();
    for watcher in [first, second, third] {
        let out = watcher.collect().await;
        assert_eq!(out.stdout(), "got x\nbye\n");
        assert_eq!(out.end().exit_code, 0);
    }

    // A late Connect gets the start and the retained end.
    let late = agent
        .stream("Connect", json!({"process": {"pid": pid}}), &[])
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(late.pid, pid);
    assert!(late.stdout.is_empty());
    assert_eq!(late.end().status, "exit status 0");

    let Err((status, err)) = agent
        .stream("Connect", json!({"process": {"pid": 999999}}), &[])
        .await
    else {
        panic!("unknown pid must fail")
    };
    assert_eq!((status, err.code), (404, Code::NotFound));
}

#[tokio::test]
async fn list_shows_running_processes_with_tags_and_survives_disconnects() {
    let agent = Agent::launch("root", "debug").await;
    let mut events = agent
        .start(json!({
            "process": {"cmd": "/bin/sleep", "args": ["30"], "envs": {"K": "V"}},
            "tag": "sleeper"
        }))
        .await;
    let pid = events.expect_start().await;
    // The client goes away; the process must keep running.
    drop(events);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let list = agent.unary("List", json!({})).await.unwrap();
    let procs = list["processes"].as_array().unwrap();
    let entry = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("listed while running");
    assert_eq!(entry["tag"], "sleeper");
    assert_eq!(
        entry["config"],
        json!({"cmd": "/bin/sleep", "args": ["30"], "envs": {"K": "V"}})
    );
    assert!(proc_exists(pid));

    agent
        .unary(
            "SendSignal",
            json!({"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let agent_ref = &agent;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = agent_ref.unary("List", json!({})).await.unwrap();
        if !list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid)
        {
            break;
        }
        assert!(Instant::now() < deadline, "killed process still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pty_sessions_take_input_and_resize() {
    let agent = Agent::launch("root", "debug").await;
    let mut shell = agent
        .start(json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["--norc", "--noprofile", "-i"],
                "envs": {"TERM": "xterm-256color", "PS1": "$ "}
            },
            "pty": {"size": {"cols": 80, "rows": 24}}
        }))
        .await;
    let pid = shell.expect_start().await;
    let input = |text: &str| {
        use base64::Engine;
        json!({"process": {"pid": pid}, "input": {"pty": base64::engine::general_purpose::STANDARD.encode(text)}})
    };

    agent
        .unary("SendInput", input("tty; echo result=$((6*7))\n"))
        .await
        .unwrap();
    let text = shell.wait_for_output("result=42").await;
    assert!(text.contains("/dev/pts/"), "stdin is a terminal: {text}");

    agent
        .unary(
            "Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 40}}}),
        )
        .await
        .unwrap();
    agent
        .unary("SendInput", input("echo size=$(stty size)\n"))
        .await
        .unwrap();
    shell.wait_for_output("size=40 100").await;

    // Stdin input and CloseStdin are for pipes, not PTYs.
    let err = agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "YQ=="}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Internal);

    agent.unary("SendInput", input("exit 5\n")).await.unwrap();
    let out = shell.collect().await;
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(out.end().exit_code, 5);
}

#[tokio::test]
async fn connect_timeout_kills_the_process() {
    let agent = Agent::launch("root", "debug").await;
    let started = Instant::now();
    let mut events = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 30 & sleep 30"]}}),
            &[("connect-timeout-ms", "1000")],
        )
        .await
        .unwrap();
    let pid = events.expect_start().await;
    let out = events.collect().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.end().status, "signal: killed");
    assert_eq!(out.end().exit_code, -1);
    // The SDKs raise their timeout error from this.
    assert_eq!(
        out.stream_error.as_ref().map(|e| e.code),
        Some(Code::DeadlineExceeded)
    );
    assert!(!proc_exists(pid));

    // 0 means no limit.
    let out = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["1.2"]}}),
            &[("connect-timeout-ms", "0")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(out.end().exit_code, 0);
    assert!(out.stream_error.is_none());
}

#[tokio::test]
async fn keepalives_fill_silences() {
    let agent = Agent::launch("root", "debug").await;
    let out = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["2.5"]}}),
            &[("keepalive-ping-interval", "1")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert!(out.keepalives >= 1, "got {} keepalives", out.keepalives);
    assert_eq!(out.end().exit_code, 0);
}

#[tokio::test]
async fn a_missing_binary_fails_the_start() {
    let agent = Agent::launch("root", "debug").await;
    let Err((status, err)) = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/no/such/binary", "args": ["x"]}}),
            &[],
        )
        .await
    else {
        panic!("exec of a missing binary must fail")
    };
    assert_eq!(status, 400);
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(
        err.message
            .starts_with("error starting process '/no/such/binary x'"),
        "{}",
        err.message
    );
    // The agent is fine afterwards.
    assert_eq!(agent.run("echo still here").await.stdout(), "still here\n");
}

#[tokio::test]
async fn orphans_are_reaped() {
    let agent = Agent::launch("root", "debug").await;
    // The shell exits at once; its background sleep is orphaned and comes to the agent.
    let out = agent.run("sleep 2 & echo $!").await;
    let orphan: u32 = out.stdout().trim().parse().unwrap();
    assert_eq!(out.end().exit_code, 0);
    let (_, ppid) = proc_state(orphan).expect("the orphan is still sleeping");
    assert_eq!(ppid, agent.pid(), "orphans are reparented to the agent");
    eventually("the orphan is reaped, not left a zombie", || {
        !proc_exists(orphan)
    })
    .await;
    // No zombies are left among the agent's children.
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_state(*pid) == Some(('Z', agent.pid())))
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
}

#[tokio::test]
async fn connect_timeout_on_connect_ends_only_the_stream() {
    let agent = Agent::launch("root", "debug").await;
    let mut events = agent
        .start(json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}}))
        .await;
    let pid = events.expect_start().await;
    let watched = agent
        .stream(
            "Connect",
            json!({"process": {"pid": pid}}),
            &[("connect-timeout-ms", "500")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert!(watched.end.is_none());
    assert_eq!(
        watched.stream_error.map(|e| e.code),
        Some(Code::DeadlineExceeded)
    );
    // The process is untouched.
    assert!(proc_exists(pid));
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let out = events.collect().await;
    assert_eq!(out.end().status, "signal: killed");
    assert!(out.stream_error.is_none());
}

#[tokio::test]
async fn idle_connections_are_reused_and_a_killed_agent_fails_cleanly() {
    let mut agent = Agent::launch("root", "warn").await;
    let socket = agent.client.socket().to_path_buf();
    let pooled = || coppice_envd::client::idle_connections(&socket);
    eventually("the health check's connection is idle", || pooled() == 1).await;
    // Sequential calls, from the client and from a new client for the same agent, go on the
    // one idle connection: there is never a second one.
    for _ in 0..5 {
        assert_eq!(agent.run("true").await.end.unwrap().exit_code, 0);
        assert!(agent.unary("List", json!({})).await.is_ok());
        assert!(coppice_envd::AgentClient::new(&socket).healthy().await);
        eventually("the connection is idle again", || pooled() == 1).await;
    }
    // While a stream holds a connection, another call opens a second one; both end up idle.
    let events = agent.start(json!({"process": {"cmd": "/bin/sleep", "args": ["0.3"]}}));
    let events = events.await;
    assert!(agent.unary("List", json!({})).await.is_ok());
    assert_eq!(events.collect().await.end.unwrap().exit_code, 0);
    eventually("both connections idle", || pooled() == 2).await;

    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let t0 = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), agent.unary("List", json!({})))
        .await
        .expect("a call to a dead agent returns instead of hanging")
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(pooled(), 0, "closed connections are dropped");
}
