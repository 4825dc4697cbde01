//! CLI commands: HTTP requests to the daemon's unix socket, printed for people or as JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use coppice_envd::AgentClient;
use coppice_envd::client::{BoxBody, full_body};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use coppice_envd::filesystem::ListDirRequest;
use coppice_kernel::wire::ExecuteRequest;
use coppice_tools::commands::Exec;
use coppice_tools::sandboxes::{CreateSandbox, SetTimeout};

use crate::Command;

pub mod lifecycle;
pub mod network;
pub mod snapshots;
pub mod templates;
pub mod terminal;

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox and print its id.
    Create {
        #[arg(long)]
        template: Option<String>,
        #[command(flatten)]
        spec: SandboxSpec,
        /// Network policy from the start: JSON text, a file holding it, or - (see
        /// `coppice network set --help`).
        #[arg(long = "network-policy")]
        network_policy: Option<String>,
        /// What its writable layer may hold, e.g. 2G (default 10G).
        #[arg(long)]
        disk: Option<String>,
        /// Setuid programs (sudo, su) cannot raise privileges in it (no_new_privs).
        #[arg(long)]
        no_new_privs: bool,
        #[arg(long)]
        json: bool,
    },
    /// List running sandboxes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Info {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Kill a sandbox.
    Kill {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Fork 1-100 new sandboxes from a live sandbox or a snapshot; prints their ids.
    Fork(snapshots::ForkArgs),
    /// Roll a sandbox back to one of its snapshots (same id; its processes restart).
    Restore {
        id: String,
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Ancestors and descendants of a sandbox or snapshot.
    Lineage {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pause a sandbox: its memory kept (frozen, and checkpointed to disk where the host has
    /// CRIU) or, with --filesystem, only its files.
    Pause(lifecycle::PauseArgs),
    /// Resume a paused sandbox.
    Resume(lifecycle::ResumeArgs),
    /// A sandbox's lifecycle events (created, paused, resumed, ...), oldest first.
    Events(lifecycle::EventsArgs),
    /// Set a sandbox's remaining lifetime, e.g. 10m.
    SetTimeout {
        id: String,
        #[arg(value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ExecArgs {
    id: String,
    /// Run as this user (default: the sandbox's default user).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    cwd: Option<String>,
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Kill the command after this long, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Subcommand)]
pub enum FilesCmd {
    /// Upload a local file.
    Put {
        id: String,
        local: PathBuf,
        remote: String,
    },
    /// Download a file.
    Get {
        id: String,
        remote: String,
        local: PathBuf,
    },
    /// List a directory.
    Ls {
        id: String,
        path: String,
        #[arg(long, default_value_t = 1)]
        depth: u32,
        #[arg(long)]
        json: bool,
    },
}

/// Limits, lifetime, environment and metadata of a new sandbox: `sandbox create` and
/// `sandbox fork` take the same flags and send the same request fields.
#[derive(Args)]
pub struct SandboxSpec {
    /// Memory limit, e.g. 512M or 2G.
    #[arg(long)]
    memory: Option<String>,
    /// CPU quota in cores, e.g. 0.5 or 2.
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of tasks.
    #[arg(long)]
    pids: Option<u64>,
    /// Lifetime, e.g. 300s or 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Environment for every process, K=V (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Metadata, k=v (repeatable).
    #[arg(long = "meta", value_parser = key_value)]
    meta: Vec<(String, String)>,
}

impl SandboxSpec {
    /// A create request with these settings (the rest at their defaults).
    fn create_request(self) -> CreateSandbox {
        CreateSandbox {
            memory: self.memory,
            cpus: self.cpus,
            pids: self.pids,
            timeout_secs: self.timeout.map(|t| t.as_secs_f64()),
            env: self.env.into_iter().collect(),
            metadata: self.meta.into_iter().collect(),
            ..Default::default()
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
}

/// A failed command: message for stderr and the process exit code.
struct Failure(String, i32);

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s, 1)
    }
}

pub fn run(cmd: Command, socket: PathBuf) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = Daemon {
        http: AgentClient::new(socket),
    };
    let result = rt.block_on(dispatch(cmd, &client));
    // A blocking stdin read (terminal attach) must not hold the exit.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(Failure(msg, code)) => {
            eprintln!("coppice: {msg}");
            code
        }
    }
}

async fn dispatch(cmd: Command, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        Command::Serve(_) => unreachable!("handled in main"),
        Command::Sandbox(cmd) => sandbox(cmd, d).await,
        Command::Exec(args) => exec(args, d).await,
        Command::Files(cmd) => files(cmd, d).await,
        Command::Template(cmd) => templates::template(cmd, d).await,
        Command::Snapshot(cmd) => snapshots::snapshot(cmd, d).await,
        Command::Network(cmd) => network::run(cmd, d).await,
        Command::RunCode(args) => run_code(args, d).await,
        Command::Terminal(cmd) => terminal::run(cmd, d).await,
        Command::Token => {
            let v = d.json("GET", "/api/v1/token", NO_BODY).await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            Ok(0)
        }
    }
}

async fn sandbox(cmd: SandboxCmd, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        SandboxCmd::Fork(args) => return snapshots::fork(args, d).await,
        SandboxCmd::Restore { id, snapshot, json } => {
            return snapshots::restore(id, snapshot, json, d).await;
        }
        SandboxCmd::Lineage { id, json } => return snapshots::lineage(id, json, d).await,
        SandboxCmd::Pause(a) => return lifecycle::pause(a, d).await,
        SandboxCmd::Resume(a) => return lifecycle::resume(a, d).await,
        SandboxCmd::Events(a) => return lifecycle::events(a, d).await,
        SandboxCmd::Create {
            template,
            spec,
            network_policy,
            disk,
            no_new_privs,
            json,
        } => {
            let network_policy = network_policy
                .as_deref()
                .map(network::read_policy)
                .transpose()?;
            let body = CreateSandbox {
                template,
                network_policy,
                disk,
                no_new_privs: no_new_privs.then_some(true),
                ..spec.create_request()
            };
            let info = d.json("POST", "/api/v1/sandboxes", Some(&body)).await?;
            print_value(&info, json, |v| {
                println!("{}", v["id"].as_str().unwrap_or_default())
            });
        }
        SandboxCmd::List { json } => {
            let list = d.json("GET", "/api/v1/sandboxes", NO_BODY).await?;
            print_value(&list, json, |v| {
                println!(
                    "{:<22} {:<12} {:<9} {:<14} EXPIRES",
                    "ID", "TEMPLATE", "STATE", "IP"
                );
                for s in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<22} {:<12} {:<9} {:<14} {}",
                        s["id"].as_str().unwrap_or(""),
                        s["template"].as_str().unwrap_or(""),
                        s["state"].as_str().unwrap_or(""),
                        s["ip"].as_str().unwrap_or("-"),
                        s["expires_at"].as_str().unwrap_or("")
                    );
                }
            });
        }
        SandboxCmd::Info { id, json } => {
            let info = d
                .json("GET", &format!("/api/v1/sandboxes/{id}"), NO_BODY)
                .await?;
            print_value(&info, json, |v| {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
            });
        }
        SandboxCmd::Kill { id, json } => {
            d.json("DELETE", &format!("/api/v1/sandboxes/{id}"), NO_BODY)
                .await?;
            print_value(&json!({"id": id, "killed": true}), json, |_| {
                println!("killed {id}")
            });
        }
        SandboxCmd::SetTimeout { id, timeout, json } => {
            let body = SetTimeout {
                timeout_secs: timeout.as_secs_f64(),
            };
            let info = d
                .json(
                    "POST",
                    &format!("/api/v1/sandboxes/{id}/timeout"),
                    Some(&body),
                )
                .await?;
            print_value(&info, json, |v| {
                println!("expires at {}", v["expires_at"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(0)
}

async fn exec(args: ExecArgs, d: &Daemon) -> Result<i32, Failure> {
    let body = Exec {
        cmd: args.cmd,
        user: args.user,
        cwd: args.cwd,
        env: args.env.into_iter().collect(),
        timeout_secs: args.timeout.map(|t| t.as_secs_f64()),
    };
    let resp = d
        .request(
            "POST",
            &format!("/api/v1/sandboxes/{}/exec", args.id),
            json_body(&body),
        )
        .await?;
    // A command that cannot start (missing binary, bad cwd) exits 127 like a shell's.
    let resp = check(resp)
        .await
        .map_err(|Failure(msg, code)| Failure(msg, if code == 2 { 2 } else { 127 }))?;
    let mut lines = ndjson_lines(resp.into_body());
    let mut code = 1;
    while let Some(line) = lines.next().await {
        let ev: Value =
            serde_json::from_slice(&line?).map_err(|e| format!("bad event from daemon: {e}"))?;
        let data = || {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(ev["data"].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        match ev["type"].as_str() {
            Some("stdout") => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&data());
                let _ = out.flush();
            }
            Some("stderr") => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&data());
                let _ = err.flush();
            }
            Some("exit") => {
                code = ev["exit_code"].as_i64().unwrap_or(1) as i32;
                // A signal death has exit code -1: report it like a shell does.
                if code < 0 {
                    code = 128 + signal_number(ev["status"].as_str().unwrap_or_default());
                }
            }
            Some("error") => {
                return Err(Failure(
                    ev["message"]
                        .as_str()
                        .unwrap_or("command failed")
                        .to_string(),
                    127,
                ));
            }
            _ => {}
        }
    }
    Ok(code)
}

#[derive(Args)]
pub struct RunCodeArgs {
    id: String,
    /// Language of the default context to use: python (default), bash, ...
    #[arg(long)]
    language: Option<String>,
    /// A context created through the API (its own kernel and state).
    #[arg(long)]
    context: Option<String>,
    /// Interrupt the code after this long, e.g. 30s (the context keeps its state).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The code; `-` reads it from stdin.
    code: String,
}

/// `run-code`: the sandbox's /execute stream; stdout and stderr as they come, then the text of
/// each result, the error's traceback on stderr. Exits 1 when the code raised.
async fn run_code(args: RunCodeArgs, d: &Daemon) -> Result<i32, Failure> {
    let code = if args.code == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("reading code from stdin: {e}"))?;
        s
    } else {
        args.code
    };
    let body = ExecuteRequest {
        code,
        language: args.language,
        context_id: args.context,
        env_vars: None,
        timeout: args.timeout.map(|t| t.as_secs_f64()),
    };
    let resp = d
        .request(
            "POST",
            &format!("/api/v1/sandboxes/{}/envd/execute", args.id),
            json_body(&body),
        )
        .await?;
    let resp = check(resp).await?;
    let mut lines = ndjson_lines(resp.into_body());
    let mut status = 0;
    while let Some(line) = lines.next().await {
        let ev: Value = serde_json::from_slice(&line?)
            .map_err(|e| format!("bad line from the sandbox: {e}"))?;
        let text = |k: &str| ev[k].as_str().unwrap_or_default().to_string();
        match ev["type"].as_str() {
            Some("stdout") => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text("text").as_bytes());
                let _ = out.flush();
            }
            Some("stderr") => {
                let _ = std::io::stderr().lock().write_all(text("text").as_bytes());
            }
            Some("result") => {
                let formats: Vec<&str> = ev
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                match ev["text"].as_str() {
                    Some(t) => println!("{t}"),
                    None => println!("<result: {}>", formats.join(", ")),
                }
            }
            Some("error") => {
                status = 1;
                let tb = text("traceback");
                if tb.is_empty() {
                    eprintln!("{}: {}", text("name"), text("value"));
                } else {
                    eprintln!("{tb}");
                }
            }
            _ => {}
        }
    }
    Ok(status)
}

fn signal_number(status: &str) -> i32 {
    match status {
        s if s.contains("killed") => 9,
        s if s.contains("terminated") => 15,
        s if s.contains("interrupt") => 2,
        _ => 1,
    }
}

async fn files(cmd: FilesCmd, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        FilesCmd::Put { id, local, remote } => {
            let file = tokio::fs::File::open(&local)
                .await
                .map_err(|e| format!("{}: {e}", local.display()))?;
            let stream = tokio_util_stream(file);
            let body =
                http_body_util::StreamBody::new(stream.map(|r| r.map(http_body::Frame::data)));
            let path = format!("/api/v1/sandboxes/{id}/envd/files?path={}", encode(&remote));
            let req = http::Request::post(path)
                .header(http::header::HOST, "coppice")
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(BodyExt::boxed_unsync(body))
                .map_err(|e| e.to_string())?;
            let resp = d.send(req).await?;
            check(resp).await?;
        }
        FilesCmd::Get { id, remote, local } => {
            let path = format!("/api/v1/sandboxes/{id}/envd/files?path={}", encode(&remote));
            let resp = check(d.request("GET", &path, full_body(Bytes::new())).await?).await?;
            write_body_to(resp.into_body(), &local).await?;
        }
        FilesCmd::Ls {
            id,
            path,
            depth,
            json,
        } => {
            let body = ListDirRequest { path, depth };
            let list = d
                .json(
                    "POST",
                    &format!("/api/v1/sandboxes/{id}/envd/filesystem.Filesystem/ListDir"),
                    Some(&body),
                )
                .await?;
            print_value(&list["entries"], json, |v| {
                for e in v.as_array().into_iter().flatten() {
                    println!(
                        "{} {:>8} {:<8} {}",
                        e["permissions"].as_str().unwrap_or(""),
                        e["size"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e["size"].to_string().replace("null", "0")),
                        e["owner"].as_str().unwrap_or(""),
                        e["path"].as_str().unwrap_or("")
                    );
                }
            });
        }
    }
    Ok(0)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

fn print_value(v: &Value, json: bool, human: impl FnOnce(&Value)) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        human(v);
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a JSON call that sends none.
const NO_BODY: Option<&()> = None;

fn json_body(v: &impl serde::Serialize) -> BoxBody {
    full_body(serde_json::to_vec(v).unwrap_or_default())
}

struct Daemon {
    http: AgentClient,
}

impl Daemon {
    async fn send(
        &self,
        req: http::Request<BoxBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        self.http.send(req).await.map_err(|e| {
            Failure(
                format!(
                    "cannot reach the daemon at {} ({}); is `coppice serve` running?",
                    self.http.socket().display(),
                    e.message
                ),
                1,
            )
        })
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: BoxBody,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "coppice")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        self.send(req).await
    }

    /// A JSON request whose JSON answer (or error) is returned.
    /// A JSON call: the body is a typed request (so a renamed field breaks the build, not
    /// the call), the answer any JSON.
    async fn json<B: serde::Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, Failure> {
        let body = body
            .map(json_body)
            .unwrap_or_else(|| full_body(Bytes::new()));
        let resp = check(self.request(method, path, body).await?).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("bad answer from daemon: {e}").into())
    }
}

/// Turns a non-2xx answer into its error message.
async fn check(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    Err(Failure(
        format!("{msg} ({status})"),
        if status == 404 { 2 } else { 1 },
    ))
}

/// Splits a streamed body into lines.
fn ndjson_lines(
    body: hyper::body::Incoming,
) -> impl futures::Stream<Item = Result<Vec<u8>, Failure>> {
    let mut buf = Vec::new();
    let mut frames = body.into_data_stream();
    async_stream(move |mut yield_line| async move {
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| Failure(format!("stream from daemon broke: {e}"), 1))?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.len() > 1 {
                    yield_line(line[..line.len() - 1].to_vec()).await;
                }
            }
        }
        Ok(())
    })
}

/// A tiny generator: runs `f` with a callback that yields items into a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Vec<u8>, Failure>>
where
    F: FnOnce(Box<dyn FnMut(Vec<u8>) -> futures::future::BoxFuture<'static, ()> + Send>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, Failure>>(64);
    let tx2 = tx.clone();
    let fut = f(Box::new(move |line| {
        let tx = tx2.clone();
        Box::pin(async move {
            let _ = tx.send(Ok(line)).await;
        })
    }));
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

async fn write_body_to(body: hyper::body::Incoming, local: &Path) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    let tmp = local.with_extension("coppice-partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut frames = body.into_data_stream();
    while let Some(chunk) = frames.next().await {
        let chunk = chunk.map_err(|e| format!("download broke: {e}"))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, local)
        .await
        .map_err(|e| format!("{}: {e}", local.display()))?;
    Ok(())
}
