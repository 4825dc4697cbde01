//! Running commands in a sandbox, with output streamed as it comes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use coppice_envd::process::Signal;
use coppice_envd::process::{
    CloseStdinRequest, DataEvent, Empty, ListResponse, ProcessConfig, ProcessEvent,
    ProcessEventMessage, ProcessInput, ProcessSelector, SendInputRequest, SendSignalRequest,
    StartRequest,
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

pub(crate) use self::shell::exit_code_of;
use self::shell::{shell_start, timeout_ms};
use crate::{Error, Result, Tools};

mod run;
mod shell;
pub use run::{
    DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT_SECS, HeadTail, MAX_OUTPUT_CAP, OutputStream, RunCommand,
    RunResult, SAVED_OUTPUT_BYTES, SAVED_OUTPUT_DIR,
};

/// Run `cmd` (argv, no shell) in a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// User to run as: "user" (default) or "root".
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds (none = no limit).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// One event of a running command; output bytes travel as base64 in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The process started.
    Start {
        /// Process id inside the sandbox.
        pid: u32,
    },
    /// Output on stdout.
    Stdout {
        /// The bytes, as they came.
        #[serde(with = "coppice_envd::wire::b64")]
        data: Vec<u8>,
    },
    /// Output on stderr.
    Stderr {
        /// The bytes, as they came.
        #[serde(with = "coppice_envd::wire::b64")]
        data: Vec<u8>,
    },
    /// The process ended.
    Exit {
        /// Exit code (-1 for a signal death).
        exit_code: i32,
        /// How it ended, e.g. "exit status 0" or "signal: killed".
        status: String,
        /// Why the agent could not run it to the end, if it could not.
        error: Option<String>,
    },
}

impl Tools {
    /// Starts a command; the stream yields its events until it exits.
    pub async fn exec(
        &self,
        id: &str,
        req: Exec,
    ) -> Result<impl Stream<Item = Result<ExecEvent>> + Send + 'static + use<>> {
        let (cmd, args) = req
            .cmd
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("cmd must name a program".into()))?;
        let agent = self.rt.agent(id)?;
        let start = StartRequest {
            process: ProcessConfig {
                cmd: cmd.clone(),
                args: args.to_vec(),
                envs: req.env,
                cwd: req.cwd,
            },
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let timeout_ms = req.timeout_secs.map(|s| (s * 1000.0).max(1.0) as u64);
        let user = req.user.unwrap_or_default();
        let stream = agent
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &start,
                timeout_ms,
                &user,
            )
            .await?;
        Ok(stream.filter_map(|msg| async move {
            match msg {
                Err(e) => Some(Err(Error::from(e))),
                Ok(ProcessEventMessage { event }) => match event {
                    ProcessEvent::Start { pid } => Some(Ok(ExecEvent::Start { pid })),
                    ProcessEvent::Data(DataEvent::Stdout(data))
                    | ProcessEvent::Data(DataEvent::Pty(data)) => {
                        Some(Ok(ExecEvent::Stdout { data }))
                    }
                    ProcessEvent::Data(DataEvent::Stderr(data)) => {
                        Some(Ok(ExecEvent::Stderr { data }))
                    }
                    ProcessEvent::End(end) => Some(Ok(ExecEvent::Exit {
                        exit_code: end.exit_code,
                        status: end.status,
                        error: end.error,
                    })),
                    ProcessEvent::Keepalive {} => None,
                },
            }
        }))
    }
}

impl Tools {
    /// Sends SIGTERM or SIGKILL to a process's whole process group.
    pub async fn signal_process(&self, id: &str, pid: u32, signal: Signal) -> Result<()> {
        self.rt
            .agent(id)?
            .unary::<_, Empty>(
                "process.Process/SendSignal",
                &SendSignalRequest {
                    process: ProcessSelector::Pid(pid),
                    signal,
                },
            )
            .await?;
        Ok(())
    }

    /// Writes to a running process's stdin, then closes it when asked.
    pub async fn write_stdin(&self, id: &str, pid: u32, data: &[u8], close: bool) -> Result<()> {
        let agent = self.rt.agent(id)?;
        if !data.is_empty() {
            agent
                .unary::<_, Empty>(
                    "process.Process/SendInput",
                    &SendInputRequest {
                        process: ProcessSelector::Pid(pid),
                        input: ProcessInput::Stdin(data.to_vec()),
                    },
                )
                .await?;
        }
        if close {
            let closed = agent
                .unary::<_, Empty>(
                    "process.Process/CloseStdin",
                    &CloseStdinRequest {
                        process: ProcessSelector::Pid(pid),
                    },
                )
                .await;
            match closed {
                // The input just written ended the process (e.g. `read x; ...; exit`) before
                // the close arrived: its stdin is as closed as it gets.
                Err(e) if !data.is_empty() && e.code == coppice_envd::Code::NotFound => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

/// The pid from a Start or Connect stream's first event.
pub(crate) async fn first_pid(
    events: &mut coppice_envd::client::MessageStream<ProcessEventMessage>,
) -> Result<u32> {
    match events.next().await {
        Some(Ok(ProcessEventMessage {
            event: ProcessEvent::Start { pid },
        })) => Ok(pid),
        Some(Err(e)) => Err(e.into()),
        _ => Err(Error::Unavailable(
            "the agent did not report the process start".into(),
        )),
    }
}

/// The background tools' requests.
mod requests;
pub use requests::{ReadCommand, SignalCommand, SignalName, StartCommand, WriteStdin};

/// Bytes kept per stream of a background process; older output is dropped first.
pub const BACKGROUND_BUFFER_BYTES: usize = 1 << 20;

/// Output of a stream since the caller's offset.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamRead {
    /// Output from the requested offset (UTF-8, invalid bytes replaced).
    pub text: String,
    /// Pass this as the offset next time to get only newer output.
    pub next_offset: u64,
    /// Bytes between the requested offset and the oldest byte still buffered, if any were
    /// dropped (the buffer keeps the last 1 MiB) or cut by max_bytes.
    pub skipped_bytes: u64,
}

/// The state and new output of a background process.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandOutput {
    /// Process id inside the sandbox.
    pub pid: u32,
    /// The command line given to commands_start.
    pub cmd: String,
    /// True until the process has exited.
    pub running: bool,
    /// Exit code once it has ended (-1 for a signal death).
    pub exit_code: Option<i32>,
    /// How it ended, e.g. "exit status 0" or "signal: killed".
    pub status: Option<String>,
    /// Standard output since the requested offset.
    pub stdout: StreamRead,
    /// Standard error since the requested offset.
    pub stderr: StreamRead,
}

#[derive(Default)]
struct Buffered {
    /// Absolute offset of `data[0]`.
    base: u64,
    data: std::collections::VecDeque<u8>,
}

impl Buffered {
    fn push(&mut self, d: &[u8]) {
        self.data.extend(d);
        let excess = self.data.len().saturating_sub(BACKGROUND_BUFFER_BYTES);
        if excess > 0 {
            self.data.drain(..excess);
            self.base += excess as u64;
        }
    }

    fn read(&self, offset: u64, max: usize) -> StreamRead {
        let end = self.base + self.data.len() as u64;
        let from = offset.clamp(self.base, end);
        // When more than `max` is new, keep the newest part.
        let from = from.max(end.saturating_sub(max as u64));
        let skipped = from.saturating_sub(offset.min(end));
        let start = (from - self.base) as usize;
        let bytes: Vec<u8> = self.data.range(start..).copied().collect();
        StreamRead {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            next_offset: end,
            skipped_bytes: skipped,
        }
    }
}

#[derive(Default)]
struct BgState {
    stdout: Buffered,
    stderr: Buffered,
    end: Option<(i32, String)>,
    finished_at: Option<std::time::Instant>,
}

/// A background process whose Start stream the tool layer holds open.
pub(crate) struct Background {
    sandbox: String,
    pid: u32,
    cmd: String,
    state: parking_lot::Mutex<BgState>,
    changed: tokio::sync::Notify,
}

/// Background processes by (sandbox, pid).
#[derive(Default)]
pub(crate) struct Registry {
    procs: parking_lot::Mutex<HashMap<(String, u32), Arc<Background>>>,
}

/// Finished background processes are forgotten this long after they end.
const FINISHED_TTL: Duration = Duration::from_secs(3600);

impl Registry {
    fn get(&self, sandbox: &str, pid: u32) -> Option<Arc<Background>> {
        self.procs.lock().get(&(sandbox.to_string(), pid)).cloned()
    }

    fn prune(&self) {
        self.procs.lock().retain(|_, p| {
            p.state
                .lock()
                .finished_at
                .is_none_or(|t| t.elapsed() < FINISHED_TTL)
        });
    }
}

/// One process in a sandbox, as `commands_list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandInfo {
    /// Process id inside the sandbox.
    pub pid: u32,
    /// The command line (for shell commands, the string given to bash).
    pub cmd: String,
    /// True until the process has exited.
    pub running: bool,
    /// True for processes started with commands_start (their output can be read).
    pub background: bool,
    /// Exit code of a finished background command (-1 for a signal death).
    pub exit_code: Option<i32>,
}

fn command_line(cfg: &ProcessConfig) -> String {
    match cfg.args.as_slice() {
        [l, c, line] if cfg.cmd == "/bin/bash" && l == "-l" && c == "-c" => line.clone(),
        args => std::iter::once(cfg.cmd.as_str())
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl Tools {
    /// Starts a shell command line in the background and returns its pid at once. The output
    /// is collected by a task holding the process's Start stream; read it with
    /// `read_command`.
    pub async fn start_command(&self, id: &str, req: StartCommand) -> Result<u32> {
        if req.cmd.trim().is_empty() {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let agent = self.rt.agent(id)?;
        let start = shell_start(&req.cmd, req.cwd, req.env, true);
        let mut stream = agent
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &start,
                timeout_ms(req.timeout_secs)?,
                req.user.as_deref().unwrap_or_default(),
            )
            .await?;
        let pid = first_pid(&mut stream).await?;
        self.registry.prune();
        let bg = Arc::new(Background {
            sandbox: id.to_string(),
            pid,
            cmd: req.cmd,
            state: Default::default(),
            changed: tokio::sync::Notify::new(),
        });
        self.registry
            .procs
            .lock()
            .insert((id.to_string(), pid), bg.clone());
        tokio::spawn(async move {
            let mut end = None;
            while let Some(msg) = stream.next().await {
                let mut st = bg.state.lock();
                match msg {
                    Ok(ProcessEventMessage { event }) => match event {
                        ProcessEvent::Data(DataEvent::Stdout(d) | DataEvent::Pty(d)) => {
                            st.stdout.push(&d)
                        }
                        ProcessEvent::Data(DataEvent::Stderr(d)) => st.stderr.push(&d),
                        ProcessEvent::End(e) => end = Some((exit_code_of(&e), e.status)),
                        _ => continue,
                    },
                    Err(e) if end.is_some() => {
                        tracing::debug!(pid = bg.pid, "background stream ended: {e}")
                    }
                    Err(e) => end = Some((-1, format!("lost track of the process: {e}"))),
                }
                drop(st);
                bg.changed.notify_waiters();
            }
            let mut st = bg.state.lock();
            st.end = Some(end.unwrap_or((-1, "the output stream ended".into())));
            st.finished_at = Some(std::time::Instant::now());
            drop(st);
            bg.changed.notify_waiters();
            tracing::debug!(sandbox = %bg.sandbox, pid = bg.pid, "background process ended");
        });
        Ok(pid)
    }

    /// Output of a background process since the given offsets; with `wait` > 0, first waits
    /// up to that long for the process to exit.
    pub async fn read_command(
        &self,
        id: &str,
        pid: u32,
        stdout_offset: u64,
        stderr_offset: u64,
        wait: Duration,
        max_bytes: usize,
    ) -> Result<CommandOutput> {
        self.rt.info(id)?;
        let bg = self.registry.get(id, pid).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no background command with pid {pid} in sandbox '{id}' (only commands started with commands_start can be read; see commands_list)"
            ))
        })?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = bg.changed.notified();
            if bg.state.lock().end.is_some() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let st = bg.state.lock();
        Ok(CommandOutput {
            pid,
            cmd: bg.cmd.clone(),
            running: st.end.is_none(),
            exit_code: st.end.as_ref().map(|e| e.0),
            status: st.end.as_ref().map(|e| e.1.clone()),
            stdout: st.stdout.read(stdout_offset, max_bytes),
            stderr: st.stderr.read(stderr_offset, max_bytes),
        })
    }

    /// Running processes of a sandbox, plus background ones that have finished.
    pub async fn list_commands(&self, id: &str) -> Result<Vec<CommandInfo>> {
        let agent = self.rt.agent(id)?;
        let listed: ListResponse = agent.unary("process.Process/List", &Empty {}).await?;
        self.registry.prune();
        let procs = self.registry.procs.lock();
        let mut out: Vec<CommandInfo> = listed
            .processes
            .iter()
            .map(|p| CommandInfo {
                pid: p.pid,
                cmd: command_line(&p.config),
                running: true,
                background: procs.contains_key(&(id.to_string(), p.pid)),
                exit_code: None,
            })
            .collect();
        for ((sb, pid), bg) in procs.iter() {
            let st = bg.state.lock();
            if sb == id && st.end.is_some() && !out.iter().any(|c| c.pid == *pid) {
                out.push(CommandInfo {
                    pid: *pid,
                    cmd: bg.cmd.clone(),
                    running: false,
                    background: true,
                    exit_code: st.end.as_ref().map(|e| e.0),
                });
            }
        }
        out.sort_by_key(|c| c.pid);
        Ok(out)
    }
}
