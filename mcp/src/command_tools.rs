//! MCP tools for commands: run to completion (streamed, cancellable, overflow saved in the
//! sandbox), start in the background, read, write stdin, signal, list.

use std::collections::BTreeMap;
use std::time::Duration;

use coppice_tools::commands::{
    CommandInfo, DEFAULT_MAX_OUTPUT, OutputStream, RunCommand, RunResult, Signal, StartCommand,
    StreamRead,
};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam, Resource};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::resources;
use crate::sandbox_tools::SandboxArgs;
use crate::session::CoppiceMcp;

/// Run's arguments: the tool layer's request and the sandbox it acts on.
pub type RunArgs = InSandbox<RunCommand>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// Sandbox to run in; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Shell command line, run as `/bin/bash -lc CMD` in the background.
    pub cmd: String,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User to run as: "user" (default) or "root".
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the command after this many seconds; default: no limit (it ends with the sandbox).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Pid returned by commands_start.
    pub pid: u32,
    /// Return stdout from this byte offset (the previous call's stdout.next_offset); default 0.
    #[serde(default)]
    pub stdout_offset: u64,
    /// Return stderr from this byte offset (the previous call's stderr.next_offset); default 0.
    #[serde(default)]
    pub stderr_offset: u64,
    /// Wait up to this many seconds for the process to exit before answering (returns as soon
    /// as it exits); default 0 = answer at once. At most 300.
    #[serde(default)]
    pub wait_secs: f64,
    /// Most bytes returned per stream (the newest are kept); default 65536.
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Pid returned by commands_start.
    pub pid: u32,
    /// Text to write to the process's standard input (include "\n" to end a line).
    #[serde(default)]
    pub data: String,
    /// Close stdin after writing, so the process reads end-of-file.
    #[serde(default)]
    pub close: bool,
}

/// A signal the sandbox agent can deliver.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum SignalName {
    /// Ask the process to stop.
    #[serde(rename = "SIGTERM")]
    Sigterm,
    /// Stop it at once.
    #[serde(rename = "SIGKILL")]
    Sigkill,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Pid of the process (from commands_start or commands_list); its whole process group
    /// receives the signal.
    pub pid: u32,
    /// "SIGTERM" (default) or "SIGKILL".
    #[serde(default)]
    pub signal: Option<SignalName>,
}

// Results. Every one is an object that names the sandbox it acted on.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub result: RunResult,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StartOutput {
    pub sandbox_id: String,
    /// Handle of the background process: pass it to commands_read, commands_write_stdin and
    /// commands_signal. Output is kept (last 1 MiB per stream) for an hour after it exits.
    pub pid: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutput {
    pub sandbox_id: String,
    pub pid: u32,
    pub cmd: String,
    pub running: bool,
    /// Exit code once it has ended (-1 for death by signal).
    pub exit_code: Option<i32>,
    /// How it ended, e.g. "exit status 0" or "signal: killed".
    pub status: Option<String>,
    pub stdout: StreamRead,
    pub stderr: StreamRead,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DoneOutput {
    pub sandbox_id: String,
    pub pid: u32,
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandsListOutput {
    pub sandbox_id: String,
    pub processes: Vec<CommandInfo>,
}

impl CoppiceMcp {
    /// A resource link to an overflow file the tool layer saved (best effort: none when the
    /// file cannot be read back).
    async fn output_link(&self, id: &str, path: Option<&str>) -> Option<Resource> {
        let entry = self.tools().stat(id, path?).await.ok()?;
        Some(resources::file_link(
            id,
            &entry.path,
            entry.size,
            Some("text/plain"),
        ))
    }
}

fn signal_of(s: Option<SignalName>) -> Signal {
    match s {
        Some(SignalName::Sigkill) => Signal::Sigkill,
        _ => Signal::Sigterm,
    }
}

#[tool_router(router = command_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Run a shell command to completion and return its exit code, stdout and stderr. Output
    /// streams as progress notifications when the call carries a progress token; cancelling
    /// the call kills the command. Output over the cap is cut in the middle and saved whole
    /// in a file (stdout_file, stderr_file). For servers and other long-running work use
    /// commands_start.
    #[tool(
        annotations(
            title = "Run command",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        ),
        output_schema = schema_for_output::<RunOutput>()
    )]
    async fn commands_run(
        &self,
        Parameters(a): Parameters<RunArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let req = a.request;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OutputStream, Vec<u8>)>();
        let token = ctx.meta.get_progress_token();
        let on_output = move |stream: OutputStream, data: &[u8]| {
            let _ = tx.send((stream, data.to_vec()));
        };
        let peer = ctx.peer.clone();
        // Progress: one notification per output chunk, `progress` = bytes so far.
        let forward = async move {
            let mut total = 0u64;
            while let Some((stream, data)) = rx.recv().await {
                total += data.len() as u64;
                let Some(token) = &token else { continue };
                let mut text = String::from_utf8_lossy(&data).into_owned();
                if text.len() > 8192 {
                    let mut cut = 8192;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                let label = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                let note = ProgressNotificationParam::new(token.clone(), total as f64)
                    .with_message(format!("[{label}] {text}"));
                if let Err(e) = peer.notify_progress(note).await {
                    tracing::debug!("progress notification not sent: {e}");
                }
            }
        };
        let run = self
            .tools()
            .run_command(&id, req, on_output, ctx.ct.clone());
        let (result, ()) = tokio::join!(run, forward);
        let result = result.map_err(|e| explain(e, About::Process))?;
        let mut links = Vec::new();
        for path in [&result.stdout_file, &result.stderr_file] {
            links.extend(self.output_link(&id, path.as_deref()).await);
        }
        let out = RunOutput {
            sandbox_id: id,
            result,
        };
        let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        let mut result = CallToolResult::structured(value);
        result
            .content
            .extend(links.into_iter().map(ContentBlock::resource_link));
        Ok(result)
    }

    /// Start a shell command in the background and return its pid at once. Read its output
    /// with commands_read, feed it with commands_write_stdin, stop it with commands_signal.
    #[tool(annotations(
        title = "Start background command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn commands_start(
        &self,
        Parameters(a): Parameters<StartArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<StartOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let pid = self
            .tools()
            .start_command(
                &id,
                StartCommand {
                    cmd: a.cmd,
                    cwd: a.cwd,
                    env: a.env,
                    user: a.user,
                    timeout_secs: a.timeout_secs,
                },
            )
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(StartOutput {
            sandbox_id: id,
            pid,
        }))
    }

    /// Read a background command's output since the given offsets, optionally waiting for it
    /// to exit first. Returns whether it is still running and its exit code once it is not.
    #[tool(annotations(
        title = "Read command output",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_read(
        &self,
        Parameters(a): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        if !(a.wait_secs.is_finite() && a.wait_secs >= 0.0) {
            return Err("wait_secs must be a number of seconds from 0 to 300".into());
        }
        let wait = Duration::from_secs_f64(a.wait_secs.min(300.0));
        let read = self.tools().read_command(
            &id,
            a.pid,
            a.stdout_offset,
            a.stderr_offset,
            wait,
            a.max_bytes.unwrap_or(DEFAULT_MAX_OUTPUT).max(1),
        );
        // A cancelled call stops waiting.
        let out = tokio::select! {
            r = read => r.map_err(|e| explain(e, About::Process))?,
            _ = ctx.ct.cancelled() => return Err("cancelled".into()),
        };
        Ok(Json(ReadOutput {
            sandbox_id: id,
            pid: out.pid,
            cmd: out.cmd,
            running: out.running,
            exit_code: out.exit_code,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    /// Write text to a background command's standard input; optionally close it after.
    #[tool(annotations(
        title = "Write to command stdin",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn commands_write_stdin(
        &self,
        Parameters(a): Parameters<WriteStdinArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DoneOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .write_stdin(&id, a.pid, a.data.as_bytes(), a.close)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.pid,
            ok: true,
        }))
    }

    /// Send SIGTERM or SIGKILL to a process and its process group.
    #[tool(annotations(
        title = "Signal command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_signal(
        &self,
        Parameters(a): Parameters<SignalArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DoneOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .signal_process(&id, a.pid, signal_of(a.signal))
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.pid,
            ok: true,
        }))
    }

    /// List the sandbox's running processes started through Coppice, and background commands
    /// that have finished (with their exit codes).
    #[tool(annotations(
        title = "List commands",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_list(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CommandsListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let processes = self
            .tools()
            .list_commands(&id)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(CommandsListOutput {
            sandbox_id: id,
            processes,
        }))
    }
}
