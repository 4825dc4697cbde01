//! MCP tools for commands: run to completion (streamed, cancellable, overflow saved in the
//! sandbox), start in the background, read, write stdin, signal, list.

use std::time::Duration;

use coppice_tools::commands::{
    CommandInfo, CommandOutput, DEFAULT_MAX_OUTPUT, OutputStream, ReadCommand, RunCommand,
    RunResult, SignalCommand, SignalName, StartCommand, WriteStdin,
};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Serialize;

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::progress::notify_output;
use crate::resources;
use crate::sandbox_tools::SandboxArgs;
use crate::session::CoppiceMcp;

// Arguments: the tool layer's requests and the sandbox they act on.
pub type RunArgs = InSandbox<RunCommand>;
pub type StartArgs = InSandbox<StartCommand>;
pub type ReadArgs = InSandbox<ReadCommand>;
pub type WriteStdinArgs = InSandbox<WriteStdin>;
pub type SignalArgs = InSandbox<SignalCommand>;

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
    #[serde(flatten)]
    pub output: CommandOutput,
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
                let label = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                let text = String::from_utf8_lossy(&data);
                notify_output(&peer, token, total as f64, label, &text).await;
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
            .start_command(&id, a.request)
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
        if !(a.request.wait_secs.is_finite() && a.request.wait_secs >= 0.0) {
            return Err("wait_secs must be a number of seconds from 0 to 300".into());
        }
        let wait = Duration::from_secs_f64(a.request.wait_secs.min(300.0));
        let read = self.tools().read_command(
            &id,
            a.request.pid,
            a.request.stdout_offset,
            a.request.stderr_offset,
            wait,
            a.request.max_bytes.unwrap_or(DEFAULT_MAX_OUTPUT).max(1),
        );
        // A cancelled call stops waiting.
        let out = tokio::select! {
            r = read => r.map_err(|e| explain(e, About::Process))?,
            _ = ctx.ct.cancelled() => return Err("cancelled".into()),
        };
        Ok(Json(ReadOutput {
            sandbox_id: id,
            output: out,
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
            .write_stdin(
                &id,
                a.request.pid,
                a.request.data.as_bytes(),
                a.request.close,
            )
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.request.pid,
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
            .signal_process(&id, a.request.pid, SignalName::signal(a.request.signal))
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.request.pid,
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
