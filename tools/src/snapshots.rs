//! Snapshot, fork, restore and lineage tools: typed requests over the runtime's
//! snapshot machinery (`coppice_runtime::manager::snapshots`). MCP, HTTP and the CLI call these.

use std::collections::BTreeMap;
use std::time::Duration;

use coppice_runtime::manager::snapshots::{
    ForkRequest, ForkResult, ForkSettings, ForkSource, Lineage, MemorySnapshotSupport,
    SnapshotInfo, SnapshotKind, SnapshotRequest,
};
use coppice_runtime::model::{Limits, SandboxInfo};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Tools};

/// Take a snapshot of a running sandbox. Doc comments are the MCP input schema's field
/// descriptions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Optional unique name (letters, digits, '-', '_', '.'); usable wherever a snapshot id is.
    #[serde(default)]
    pub name: Option<String>,
    /// "filesystem" (default: the sandbox's files; a fork's processes start afresh) or
    /// "memory" (files and running processes; needs CRIU >= 4.1 on the host, an error
    /// otherwise, never a silent downgrade).
    #[serde(default)]
    pub kind: Option<SnapshotKind>,
    /// Free-form labels kept with the snapshot.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Settings of one fork, over the request's common settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkOverrides {
    /// Memory limit such as "512M"; default: the source sandbox's.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU quota in cores; default: the source sandbox's.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads; default: the source sandbox's.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Seconds the fork lives unless extended; default 300.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Environment variables (added to the source sandbox's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels kept with the fork.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Fork sandboxes from a snapshot or straight from a live sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSandbox {
    /// Snapshot (id or name) to fork from. Give this or sandbox_id.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Live sandbox to fork from: its files are snapshotted first (an implicit snapshot,
    /// removed once its last fork is gone).
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// How many forks, 1 to 100; default 1.
    #[serde(default)]
    pub count: Option<u32>,
    /// Memory limit of every fork, e.g. "512M"; default: the source sandbox's.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU quota of every fork in cores; default: the source sandbox's.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit of every fork; default: the source sandbox's.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Seconds every fork lives unless extended; default 300.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Environment variables of every fork (added to the source sandbox's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels kept with every fork.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Per-fork settings: entry i applies to fork i over the common ones (may be shorter
    /// than count).
    #[serde(default)]
    pub forks: Vec<ForkOverrides>,
}

/// Roll a sandbox back to one of its snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSandbox {
    /// A snapshot (id or name) taken of this sandbox.
    pub snapshot_id: String,
}

impl ForkOverrides {
    fn settings(&self) -> Result<ForkSettings> {
        let memory_bytes = crate::sandboxes::size_arg(self.memory.as_deref())?;
        let timeout = match self.timeout_secs {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(Error::InvalidArgument(format!(
                    "timeout must be a positive number of seconds, got {s}"
                )));
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        Ok(ForkSettings {
            limits: Limits {
                memory_bytes,
                cpus: self.cpus,
                pids: self.pids,
                disk_bytes: None,
            },
            timeout,
            env: self.env.clone(),
            metadata: self.metadata.clone(),
        })
    }
}

impl Tools {
    /// Snapshots a sandbox's files (and memory, when asked and supported).
    pub async fn create_snapshot(
        &self,
        sandbox_id: &str,
        req: CreateSnapshot,
    ) -> Result<SnapshotInfo> {
        self.rt
            .snapshot(
                sandbox_id,
                SnapshotRequest {
                    name: req.name.filter(|n| !n.is_empty()),
                    metadata: req.metadata,
                    kind: req.kind.unwrap_or_default(),
                },
            )
            .await
    }

    /// Snapshots, oldest first; only those taken of `sandbox_id` when given.
    pub fn list_snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        self.rt.list_snapshots(sandbox_id)
    }

    /// One snapshot, by id or name.
    pub fn snapshot_info(&self, id: &str) -> Result<SnapshotInfo> {
        self.rt.snapshot_info(id)
    }

    /// Refused while forks or other snapshots stand on it (docs/decisions/0005).
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.rt.delete_snapshot(id)
    }

    /// Forks sandboxes from a snapshot or a live sandbox.
    pub async fn fork_sandbox(&self, req: ForkSandbox) -> Result<ForkResult> {
        let source = match (
            req.snapshot_id.filter(|s| !s.is_empty()),
            req.sandbox_id.filter(|s| !s.is_empty()),
        ) {
            (Some(s), None) => ForkSource::Snapshot(s),
            (None, Some(s)) => ForkSource::Sandbox(s),
            _ => {
                return Err(Error::InvalidArgument(
                    "give exactly one of snapshot_id (fork a snapshot) or sandbox_id (fork a \
                     live sandbox)"
                        .into(),
                ));
            }
        };
        let per_fork = req
            .forks
            .iter()
            .map(ForkOverrides::settings)
            .collect::<Result<Vec<_>>>()?;
        let common = ForkOverrides {
            memory: req.memory,
            cpus: req.cpus,
            pids: req.pids,
            timeout_secs: req.timeout_secs,
            env: req.env,
            metadata: req.metadata,
        };
        self.rt
            .fork(ForkRequest {
                source,
                count: req.count.unwrap_or(1),
                common: common.settings()?,
                per_fork,
            })
            .await
    }

    /// Rolls a sandbox back to one of its snapshots in place.
    pub async fn restore_sandbox(
        &self,
        sandbox_id: &str,
        req: RestoreSandbox,
    ) -> Result<SandboxInfo> {
        self.rt.restore(sandbox_id, &req.snapshot_id).await
    }

    /// Ancestors and descendants of a sandbox or snapshot.
    pub fn lineage(&self, id: &str) -> Result<Lineage> {
        self.rt.lineage(id)
    }

    /// Whether memory-state snapshots are possible on this host, and why not.
    pub fn memory_snapshot_support(&self) -> MemorySnapshotSupport {
        self.rt.memory_snapshot_support()
    }
}
