//! MCP tools for collaborative terminals: open, type (text and named keys), read the screen or
//! raw output, wait for a pattern, resize, list, close, share. A person attached to the same
//! terminal through its web page or `coppice terminal attach` sees what the agent types, and
//! the agent reads what the person's programs draw.

use coppice_tools::terminals::{
    OpenTerminal, ReadTerminal, Role, SendToTerminal, TerminalInfo, TerminalRead, TerminalShare,
    WaitForTerminal, WaitMatch,
};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::in_sandbox::{InSandbox, InTerminal};
use crate::sandbox_tools::SandboxArgs;
use crate::session::{CoppiceMcp, Mode};

pub type OpenArgs = InSandbox<OpenTerminal>;
pub type SendArgs = InTerminal<SendToTerminal>;
pub type ReadArgs = InTerminal<ReadTerminal>;
pub type WaitArgs = InTerminal<WaitForTerminal>;
pub type ResizeArgs = InTerminal<ResizeTerminal>;
pub type CloseArgs = InTerminal<NoFields>;
pub type ShareArgs = InTerminal<ShareTerminal>;

/// A new size.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeTerminal {
    /// Width in columns (1..=1000).
    pub cols: u16,
    /// Height in rows (1..=1000).
    pub rows: u16,
}

/// No further fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// Who the link is for.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareTerminal {
    /// "viewer" (default: watches only) or "writer" (types and resizes too).
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TerminalListOutput {
    pub sandbox_id: String,
    pub terminals: Vec<TerminalInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutput {
    pub sandbox_id: String,
    pub terminal_id: String,
    #[serde(flatten)]
    pub read: TerminalRead,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitOutput {
    pub sandbox_id: String,
    pub terminal_id: String,
    #[serde(flatten)]
    pub found: WaitMatch,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SentOutput {
    pub sandbox_id: String,
    pub terminal_id: String,
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ShareOutput {
    pub sandbox_id: String,
    pub terminal_id: String,
    #[serde(flatten)]
    pub share: TerminalShare,
}

#[tool_router(router = terminal_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Open a terminal: a shell (or `cmd`) on a PTY that stays running between calls and can
    /// be shared with people (terminal_share). Drive it with terminal_send, read it with
    /// terminal_read or terminal_wait_for. Use it for interactive programs (REPLs, vim, top,
    /// installers that prompt); use commands_run for plain commands.
    #[tool(annotations(
        title = "Open terminal",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn terminal_open(
        &self,
        Parameters(a): Parameters<OpenArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TerminalInfo>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let terminal = self
            .tools()
            .open_terminal(&id, a.request)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(terminal))
    }

    /// Type into a terminal: `text` as is, then named `keys` (Enter, Tab, C-c, C-d, Escape,
    /// Up/Down/Left/Right, F1..F12…). No Enter is added: send keys ["Enter"] to run a line.
    #[tool(annotations(
        title = "Type into terminal",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn terminal_send(
        &self,
        Parameters(a): Parameters<SendArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SentOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .send_to_terminal(&id, &a.terminal_id, a.request)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(SentOutput {
            sandbox_id: id,
            terminal_id: a.terminal_id,
            ok: true,
        }))
    }

    /// Read a terminal: mode "screen" (default) gives the visible screen as text with the
    /// cursor, as a person attached sees it (full-screen programs included); mode "output"
    /// gives raw output since an offset (pass the previous next_offset to get only new output).
    #[tool(annotations(
        title = "Read terminal",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_read(
        &self,
        Parameters(a): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let read = self
            .tools()
            .read_terminal(&id, &a.terminal_id, a.request)
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(ReadOutput {
            sandbox_id: id,
            terminal_id: a.terminal_id,
            read,
        }))
    }

    /// Wait until a regex matches the terminal's screen (default) or its new output, up to
    /// timeout_secs (default 30). Returns the match and the screen. Cancelling stops the wait.
    #[tool(annotations(
        title = "Wait for terminal text",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_wait_for(
        &self,
        Parameters(a): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WaitOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let wait = self
            .tools()
            .wait_for_terminal(&id, &a.terminal_id, a.request);
        let found = tokio::select! {
            r = wait => r.map_err(|e| explain(e, About::Process))?,
            _ = ctx.ct.cancelled() => return Err("cancelled".into()),
        };
        Ok(Json(WaitOutput {
            sandbox_id: id,
            terminal_id: a.terminal_id,
            found,
        }))
    }

    /// Resize a terminal. While people are attached as writers, the smallest writer's window
    /// sets the size; this size applies when none is.
    #[tool(annotations(
        title = "Resize terminal",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_resize(
        &self,
        Parameters(a): Parameters<ResizeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TerminalInfo>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let terminal = self
            .tools()
            .resize_terminal(&id, &a.terminal_id, a.request.cols, a.request.rows)
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(terminal))
    }

    /// List the sandbox's terminals: size, who is attached, running or how it ended.
    #[tool(annotations(
        title = "List terminals",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_list(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TerminalListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let terminals = self
            .tools()
            .list_terminals(&id)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(TerminalListOutput {
            sandbox_id: id,
            terminals,
        }))
    }

    /// Close a terminal: kill its process (and everything it started) and detach its clients.
    #[tool(annotations(
        title = "Close terminal",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_close(
        &self,
        Parameters(a): Parameters<CloseArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SentOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .kill_terminal(&id, &a.terminal_id)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(SentOutput {
            sandbox_id: id,
            terminal_id: a.terminal_id,
            ok: true,
        }))
    }

    /// Share a terminal with a person: a web page URL (and WebSocket path) carrying a viewer
    /// (default) or writer token. Viewers watch; writers type and resize too.
    #[tool(annotations(
        title = "Share terminal",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn terminal_share(
        &self,
        Parameters(a): Parameters<ShareArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ShareOutput>, String> {
        if matches!(self.state.mode, Mode::Embedded) {
            return Err("sharing a terminal needs the daemon's web listener: start `coppice serve` (this session runs an embedded runtime)".into());
        }
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let role = a.request.role.unwrap_or(Role::Viewer);
        let share = self
            .tools()
            .share_terminal(&id, &a.terminal_id, role)
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(ShareOutput {
            sandbox_id: id,
            terminal_id: a.terminal_id,
            share,
        }))
    }
}
