//! MCP tools for sandboxes: create, list, info, kill, set_timeout.

use coppice_tools::sandboxes::{CreateSandbox, SetTimeout};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::session::CoppiceMcp;
pub use coppice_tools::sandboxes::SandboxView;

// Arguments. Doc comments become the field descriptions of each tool's input schema.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyArgs {}

/// The tool layer's request and the sandbox it acts on.
pub type SetTimeoutArgs = InSandbox<SetTimeout>;

// Results. Every one is an object that names the sandbox it acted on.

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxOutput {
    pub sandbox_id: String,
    pub sandbox: SandboxView,
    /// True when this is the session's default sandbox (used when sandbox_id is omitted).
    pub is_default: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxListOutput {
    pub sandboxes: Vec<SandboxView>,
    /// This session's default sandbox, once one has been created.
    pub default_sandbox_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KillOutput {
    pub sandbox_id: String,
    pub killed: bool,
}

#[tool_router(router = sandbox_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Create a new sandbox: an isolated Linux machine (Debian, network, a user "user" with
    /// home /home/user, root available). You rarely need this: every tool given no sandbox_id
    /// uses your session's default sandbox, created on first use.
    #[tool(annotations(
        title = "Create sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn sandbox_create(
        &self,
        Parameters(a): Parameters<CreateSandbox>,
    ) -> Result<Json<SandboxOutput>, String> {
        let info = self
            .tools()
            .create_sandbox(a)
            .await
            .map_err(|e| explain(e, About::Sandbox))?;
        self.state.record_created(&info.id);
        Ok(Json(SandboxOutput {
            sandbox_id: info.id.clone(),
            sandbox: info.into(),
            is_default: false,
        }))
    }

    /// List live sandboxes, with this session's default sandbox marked.
    #[tool(annotations(
        title = "List sandboxes",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_list(
        &self,
        Parameters(_): Parameters<EmptyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxListOutput>, String> {
        let list = self
            .tools()
            .list_sandboxes()
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxListOutput {
            sandboxes: list.into_iter().map(SandboxView::from).collect(),
            default_sandbox_id: self.current_default(&ctx).await,
        }))
    }

    /// Describe a sandbox: template, limits, expiry, address.
    #[tool(annotations(
        title = "Sandbox info",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_info(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .sandbox_info(&id)
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxOutput {
            is_default: self.current_default(&ctx).await.as_deref() == Some(&id),
            sandbox_id: id,
            sandbox: info.into(),
        }))
    }

    /// Kill a sandbox and everything in it; its files are gone. Without sandbox_id, kills
    /// this session's default sandbox (the next call creates a fresh one).
    #[tool(annotations(
        title = "Kill sandbox",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_kill(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<KillOutput>, String> {
        let id = match a.sandbox_id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => self.current_default(&ctx).await.ok_or_else(|| {
                "this session has no default sandbox yet; pass sandbox_id (see sandbox_list)"
                    .to_string()
            })?,
        };
        self.tools()
            .kill_sandbox(&id)
            .await
            .map_err(|e| explain(e, About::Sandbox))?;
        self.state.defaults.lock().await.retain(|_, v| *v != id);
        Ok(Json(KillOutput {
            sandbox_id: id,
            killed: true,
        }))
    }

    /// Set how long a sandbox lives from now (it is killed then). The default sandbox is
    /// extended automatically while you use it.
    #[tool(annotations(
        title = "Set sandbox timeout",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_set_timeout(
        &self,
        Parameters(a): Parameters<SetTimeoutArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .set_timeout(&id, a.request)
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxOutput {
            is_default: self.current_default(&ctx).await.as_deref() == Some(&id),
            sandbox_id: id,
            sandbox: info.into(),
        }))
    }
}
