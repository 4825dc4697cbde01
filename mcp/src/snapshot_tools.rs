//! MCP tools for snapshots, forks and restore: thin adapters over
//! `coppice_tools::snapshots`. A child module of `server` (it shares the session-default
//! sandbox logic and the error mapping).

use coppice_runtime::Error;
use coppice_runtime::manager::snapshots::{
    ForkResult, Lineage, MemorySnapshotSupport, SnapshotInfo,
};
use coppice_tools::snapshots::{CreateSnapshot, ForkSandbox, RestoreSandbox};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::sandbox_tools::{SandboxOutput, SandboxView};
use crate::session::CoppiceMcp;

/// The tool layer's request and the sandbox it acts on.
pub type SnapshotCreateArgs = InSandbox<CreateSnapshot>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotListArgs {
    /// Only snapshots taken of this sandbox; omit for all snapshots.
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDeleteArgs {
    /// Snapshot id or name.
    pub snapshot_id: String,
}

/// The tool layer's request and the sandbox it acts on.
pub type RestoreArgs = InSandbox<RestoreSandbox>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineageArgs {
    /// A sandbox or snapshot id; omit for this session's default sandbox.
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotOutput {
    pub snapshot_id: String,
    pub snapshot: SnapshotInfo,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotListOutput {
    pub snapshots: Vec<SnapshotInfo>,
    /// Whether kind "memory" can be asked for on this host, and why not.
    pub memory_snapshots: MemorySnapshotSupport,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotDeleteOutput {
    pub snapshot_id: String,
    pub deleted: bool,
}

/// One fork: its sandbox, or why it failed (the others are unaffected).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ForkView {
    pub index: u32,
    pub sandbox_id: Option<String>,
    pub sandbox: Option<SandboxView>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ForkOutput {
    /// The snapshot the forks stand on.
    pub snapshot_id: String,
    /// True when it was taken for this call from a live sandbox (removed with its last fork).
    pub implicit_snapshot: bool,
    /// Forks started.
    pub created: u32,
    /// Forks that failed (their entries in `forks` say why).
    pub failed: u32,
    /// One entry per requested fork, in index order.
    pub forks: Vec<ForkView>,
}

impl From<ForkResult> for ForkOutput {
    fn from(r: ForkResult) -> Self {
        ForkOutput {
            snapshot_id: r.snapshot_id,
            implicit_snapshot: r.implicit_snapshot,
            created: r.created,
            failed: r.failed,
            forks: r
                .forks
                .into_iter()
                .map(|f| ForkView {
                    index: f.index,
                    sandbox_id: f.sandbox.as_ref().map(|s| s.id.clone()),
                    sandbox: f.sandbox.map(SandboxView::from),
                    error: f.error,
                })
                .collect(),
        }
    }
}

/// Errors of these tools, with the next step spelled out.
fn explain_snapshot(e: Error) -> String {
    match e {
        Error::SnapshotNotFound(id) => format!(
            "snapshot '{id}' not found (deleted, or never finished); call snapshot_list to see snapshots"
        ),
        Error::FailedPrecondition(m) | Error::HostUnsupported(m) => m,
        other => explain(other, About::Sandbox),
    }
}

#[tool_router(router = snapshot_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Snapshot a sandbox's files as an immutable layer: its processes are frozen for the
    /// copy and keep running after. Fork it (sandbox_fork) to get new sandboxes starting from
    /// these files, or roll the sandbox back to it (sandbox_restore).
    #[tool(annotations(
        title = "Create snapshot",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn snapshot_create(
        &self,
        Parameters(a): Parameters<SnapshotCreateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SnapshotOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let snapshot = self
            .tools()
            .create_snapshot(&id, a.request)
            .await
            .map_err(explain_snapshot)?;
        Ok(Json(SnapshotOutput {
            snapshot_id: snapshot.snapshot_id.clone(),
            snapshot,
        }))
    }

    /// List snapshots (with their kind, size, source sandbox and what stands on them), and
    /// whether memory snapshots are available on this host.
    #[tool(annotations(
        title = "List snapshots",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn snapshot_list(
        &self,
        Parameters(a): Parameters<SnapshotListArgs>,
    ) -> Result<Json<SnapshotListOutput>, String> {
        let snapshots = self
            .tools()
            .list_snapshots(a.sandbox_id.as_deref().filter(|s| !s.is_empty()))
            .map_err(explain_snapshot)?;
        Ok(Json(SnapshotListOutput {
            snapshots,
            memory_snapshots: self.tools().memory_snapshot_support(),
        }))
    }

    /// Delete a snapshot. Refused while sandboxes forked from it (or restored to it) are
    /// running or other snapshots stack on it: the error names them.
    #[tool(annotations(
        title = "Delete snapshot",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn snapshot_delete(
        &self,
        Parameters(a): Parameters<SnapshotDeleteArgs>,
    ) -> Result<Json<SnapshotDeleteOutput>, String> {
        self.tools()
            .delete_snapshot(&a.snapshot_id)
            .map_err(explain_snapshot)?;
        Ok(Json(SnapshotDeleteOutput {
            snapshot_id: a.snapshot_id,
            deleted: true,
        }))
    }

    /// Fork 1-100 new sandboxes from a snapshot, or straight from a live sandbox (its files
    /// are snapshotted first). Each fork has its own id, hostname, machine-id, address, and
    /// its own limits, env and timeout if given (per fork in `forks`); writes in one fork are
    /// invisible to the others. Each fork succeeds or fails on its own. Omit both
    /// snapshot_id and sandbox_id to fork this session's default sandbox.
    #[tool(annotations(
        title = "Fork sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn sandbox_fork(
        &self,
        Parameters(mut a): Parameters<ForkSandbox>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ForkOutput>, String> {
        if a.snapshot_id.as_deref().unwrap_or_default().is_empty()
            && a.sandbox_id.as_deref().unwrap_or_default().is_empty()
        {
            a.sandbox_id = Some(self.sandbox(None, &ctx).await?);
        }
        let result = self
            .tools()
            .fork_sandbox(a)
            .await
            .map_err(explain_snapshot)?;
        for fork in &result.forks {
            if let Some(s) = &fork.sandbox {
                self.state.record_created(&s.id);
            }
        }
        Ok(Json(result.into()))
    }

    /// Roll a sandbox back to one of its own snapshots, in place: it keeps its id, address
    /// and hostname; its files become the snapshot's and its processes restart.
    #[tool(annotations(
        title = "Restore sandbox",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn sandbox_restore(
        &self,
        Parameters(a): Parameters<RestoreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .restore_sandbox(&id, a.request)
            .await
            .map_err(explain_snapshot)?;
        Ok(Json(SandboxOutput {
            is_default: self.current_default(&ctx).await.as_deref() == Some(&id),
            sandbox_id: id,
            sandbox: info.into(),
        }))
    }

    /// Lineage of a sandbox or snapshot: its ancestors (the snapshot a sandbox was forked
    /// from, the sandbox a snapshot was taken of, and so on) and its descendants.
    #[tool(annotations(
        title = "Sandbox lineage",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_lineage(
        &self,
        Parameters(a): Parameters<LineageArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Lineage>, String> {
        let id = match a.id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => self.sandbox(None, &ctx).await?,
        };
        Ok(Json(self.tools().lineage(&id).map_err(explain_snapshot)?))
    }
}
