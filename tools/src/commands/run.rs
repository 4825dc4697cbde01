//! Running a shell command to completion: the request with its defaults, the result with
//! head-and-tail output, overflow saved in the sandbox, the sandbox kept alive meanwhile.

use std::collections::BTreeMap;

use coppice_envd::process::{
    CloseStdinRequest, DataEvent, Empty, ProcessEvent, ProcessEventMessage, ProcessInput,
    ProcessSelector, SendInputRequest,
};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::shell::{exit_code_of, shell_start, timeout_ms};
use crate::{Error, Result, Tools};
use coppice_envd::process::Signal;

/// Run a shell command line (`/bin/bash -lc CMD`, as E2B does) to completion. The doc
/// comments are the field descriptions every surface's schema shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// Shell command line, run as `/bin/bash -lc CMD` (pipes, redirections, && work).
    pub cmd: String,
    /// Working directory; default: the user's home (/home/user, or /root for root).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User to run as: "user" (default) or "root" (root inside the sandbox only).
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the command (its whole process group) after this many seconds; default 600.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Text written to the command's standard input, which is then closed. Without it the
    /// command's stdin is closed at once.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Cap in bytes on each of stdout and stderr in the result; the start and the end are
    /// kept and a marker shows what was cut. Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

/// Default of `RunCommand::timeout_secs`.
pub const DEFAULT_TIMEOUT_SECS: f64 = 600.0;
/// Default per-stream cap of a result's output.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 10;
/// Upper bound on caller-chosen output caps.
pub const MAX_OUTPUT_CAP: usize = 4 << 20;
/// Output beyond the cap is saved in the sandbox up to this many bytes per stream (head and
/// tail beyond that).
pub const SAVED_OUTPUT_BYTES: usize = 8 << 20;
/// Where output too long to return is saved.
pub const SAVED_OUTPUT_DIR: &str = "/tmp/coppice-output";

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The outcome of a finished (or stopped) command.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunResult {
    /// Process id inside the sandbox.
    pub pid: u32,
    /// Exit code; -1 when the command was killed by a signal (see `status`).
    pub exit_code: i32,
    /// How it ended, e.g. "exit status 0" or "signal: killed".
    pub status: String,
    /// Standard output as UTF-8 (invalid bytes replaced); see `stdout_truncated`.
    pub stdout: String,
    /// Standard error as UTF-8 (invalid bytes replaced); see `stderr_truncated`.
    pub stderr: String,
    /// True when stdout was longer than the cap: the middle was cut and a marker inserted.
    pub stdout_truncated: bool,
    /// True when stderr was longer than the cap, as for stdout.
    pub stderr_truncated: bool,
    /// Total bytes the command wrote to each stream.
    pub stdout_bytes: u64,
    /// Total bytes the command wrote to stderr.
    pub stderr_bytes: u64,
    /// True when the command was killed because its timeout passed.
    pub timed_out: bool,
    /// True when the caller cancelled the call and the process group was killed.
    pub cancelled: bool,
    /// When stdout was truncated: a file in the sandbox holding all of it (its first and last
    /// 4 MiB when longer than 8 MiB). Read it with files_read (offset/limit) or files_search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    /// When stderr was truncated: a file holding all of it, as for stdout_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_file: Option<String>,
}

/// Keeps the first and last `cap/2` bytes of a stream, counting everything.
#[derive(Debug, Default)]
pub struct HeadTail {
    cap: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl HeadTail {
    /// Keeps at most `cap` bytes: the first and the last half.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Default::default()
        }
    }

    /// Counts `data` and keeps what fits in the head or the tail.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let head_cap = self.cap / 2;
        if self.head.len() < head_cap {
            let n = (head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        let tail_cap = self.cap - head_cap;
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(tail_cap);
        self.tail.drain(..excess);
    }

    /// Whether anything was dropped from the middle.
    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// Every byte pushed, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The text, with `[... N bytes truncated ...]` where the middle was cut.
    pub fn render(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.truncated() {
            let cut = self.total - (self.head.len() + self.tail.len()) as u64;
            out.push_str(&format!(
                "\n[... {cut} bytes truncated; raise max_output_bytes or redirect output to a file and read it with files_read ...]\n"
            ));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = a.to_vec();
        tail.extend_from_slice(b);
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

impl Tools {
    /// Runs a shell command line to completion. Each output chunk is passed to `on_output` as
    /// it arrives; cancelling `cancel` kills the process group and returns what was seen.
    /// The sandbox is kept alive for the command's whole timeout; output over the cap is cut
    /// in the middle and saved whole in a file in the sandbox (`stdout_file`, `stderr_file`).
    pub async fn run_command(
        &self,
        id: &str,
        req: RunCommand,
        mut on_output: impl FnMut(OutputStream, &[u8]) + Send,
        cancel: CancellationToken,
    ) -> Result<RunResult> {
        if req.cmd.trim().is_empty() {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let timeout_secs = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        let cap = req
            .max_output_bytes
            .unwrap_or(DEFAULT_MAX_OUTPUT)
            .clamp(64, MAX_OUTPUT_CAP);
        let agent = self.rt.agent(id)?;
        self.keep_alive_for(id, timeout_secs)?;
        let start = shell_start(&req.cmd, req.cwd, req.env, req.stdin.is_some());
        let mut stream = agent
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &start,
                timeout_ms(Some(timeout_secs))?,
                req.user.as_deref().unwrap_or_default(),
            )
            .await?;
        let mut out = HeadTail::new(cap);
        let mut err = HeadTail::new(cap);
        // Everything up to SAVED_OUTPUT_BYTES, for the overflow files.
        let mut saved = (
            HeadTail::new(SAVED_OUTPUT_BYTES),
            HeadTail::new(SAVED_OUTPUT_BYTES),
        );
        let mut pid = 0;
        let mut end = None;
        let mut timed_out = false;
        let mut cancelled = false;
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    if pid != 0 {
                        tracing::info!(sandbox = id, pid, "call cancelled: killing the process group");
                        let _ = self.signal_process(id, pid, Signal::Sigkill).await;
                    }
                    // Keep reading: the end event follows the kill.
                    continue;
                }
            };
            match msg {
                None => break,
                Some(Ok(ProcessEventMessage { event })) => match event {
                    ProcessEvent::Start { pid: p } => {
                        pid = p;
                        if cancelled {
                            let _ = self.signal_process(id, pid, Signal::Sigkill).await;
                        } else if let Some(input) = &req.stdin {
                            let sel = ProcessSelector::Pid(pid);
                            agent
                                .unary::<_, Empty>(
                                    "process.Process/SendInput",
                                    &SendInputRequest {
                                        process: sel.clone(),
                                        input: ProcessInput::Stdin(input.as_bytes().to_vec()),
                                    },
                                )
                                .await?;
                            agent
                                .unary::<_, Empty>(
                                    "process.Process/CloseStdin",
                                    &CloseStdinRequest { process: sel },
                                )
                                .await?;
                        }
                    }
                    ProcessEvent::Data(DataEvent::Stdout(d) | DataEvent::Pty(d)) => {
                        out.push(&d);
                        saved.0.push(&d);
                        on_output(OutputStream::Stdout, &d);
                    }
                    ProcessEvent::Data(DataEvent::Stderr(d)) => {
                        err.push(&d);
                        saved.1.push(&d);
                        on_output(OutputStream::Stderr, &d);
                    }
                    ProcessEvent::End(e) => end = Some(e),
                    ProcessEvent::Keepalive {} => {}
                },
                Some(Err(e)) if e.code == coppice_envd::Code::DeadlineExceeded => {
                    timed_out = true;
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let end = end.ok_or_else(|| {
            Error::Unavailable("the command's output stream ended before it exited".into())
        })?;
        let mut result = RunResult {
            pid,
            exit_code: exit_code_of(&end),
            status: end.status,
            stdout: out.render(),
            stderr: err.render(),
            stdout_truncated: out.truncated(),
            stderr_truncated: err.truncated(),
            stdout_bytes: out.total(),
            stderr_bytes: err.total(),
            timed_out,
            cancelled,
            stdout_file: None,
            stderr_file: None,
        };
        if !cancelled {
            if result.stdout_truncated {
                result.stdout_file = self
                    .save_output(id, &format!("{pid}-stdout.log"), &saved.0)
                    .await;
            }
            if result.stderr_truncated {
                result.stderr_file = self
                    .save_output(id, &format!("{pid}-stderr.log"), &saved.1)
                    .await;
            }
        }
        Ok(result)
    }

    /// Saves a command's whole output (what `saved` kept of it) as `name` in the sandbox's
    /// [`SAVED_OUTPUT_DIR`]; returns its path. Best effort: a sandbox where it cannot be
    /// written just gets no file.
    async fn save_output(&self, id: &str, name: &str, saved: &HeadTail) -> Option<String> {
        let path = format!("{SAVED_OUTPUT_DIR}/{name}");
        match self
            .write_file(id, &path, saved.render().into_bytes())
            .await
        {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::debug!(sandbox = id, "command output not saved to {path}: {e}");
                None
            }
        }
    }
}
