//! The seam between the platform-neutral runtime (`manager/`) and a platform: the operations
//! the manager needs and nothing else (decision 0011). A backend runs sandboxes ([`Backend`]),
//! keeps their writable layers and snapshot layers ([`Storage`]) and enforces their network
//! policy ([`Firewall`]). Linux implements them in `linux/`; [`fake`] records calls for the
//! manager's unit tests; FreeBSD jails and bhyve go beside `linux/` without touching the
//! manager.

use std::path::PathBuf;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Limits, TemplateInfo};
use crate::policy::CheckedPolicy;
use crate::state::SandboxRecord;

#[cfg(test)]
pub mod fake;

/// What starting a sandbox produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The sandbox's init (its agent), as the host sees it.
    pub pid: i32,
    /// The init's start time, so a recycled pid is never taken for it.
    pub pid_start: Option<u64>,
    /// Its address on the sandbox network, when it has one.
    pub ip: Option<String>,
}

/// Runs sandboxes: start, stop, freeze, limits, usage, and where to reach each one.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts the sandbox of `rec` on `template`'s layers (its upper already made by
    /// [`Storage::create_upper`] when the backend needs one).
    async fn start(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        no_new_privs: bool,
    ) -> Result<Started>;
    /// Starts the sandbox of `rec` like [`Backend::start`], resuming the processes of memory
    /// snapshot `snapshot` (taken by [`Backend::dump_memory`]) instead of a fresh agent.
    async fn resume(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        no_new_privs: bool,
        snapshot: &str,
    ) -> Result<Started>;
    /// Dumps the processes of the sandbox of `rec`, frozen by the caller, as memory snapshot
    /// `snapshot` (left frozen); returns the bytes stored. `access_token`: the agent's, which
    /// the resumed processes hold until the host sets a new one.
    fn dump_memory(
        &self,
        rec: &SandboxRecord,
        snapshot: &str,
        access_token: Option<String>,
    ) -> Result<u64>;
    /// The access token the processes of memory snapshot `snapshot` hold.
    fn memory_access_token(&self, snapshot: &str) -> Option<String>;
    /// Removes memory snapshot `snapshot`'s images.
    fn remove_memory(&self, snapshot: &str);
    /// Stops the sandbox and removes everything but its writable layer, so the same id can
    /// start again at once (restore in place).
    async fn stop_for_restart(&self, rec: &SandboxRecord) -> Result<()>;
    /// Ends the sandbox and removes all it owns on the host (best effort, logged).
    async fn destroy(&self, rec: &SandboxRecord);
    /// Whether the recorded init is still the sandbox's (not a recycled pid).
    fn alive(&self, rec: &SandboxRecord) -> bool;
    /// Why a sandbox whose init is gone ended, in a few words ("out of memory", ...).
    fn death_cause(&self, rec: &SandboxRecord) -> &'static str;
    /// Freezes every process of the sandbox and waits until they are frozen.
    fn freeze(&self, id: &str) -> Result<()>;
    /// Thaws a frozen sandbox.
    fn thaw(&self, id: &str) -> Result<()>;
    /// [`Backend::freeze`] off the async threads.
    async fn freeze_async(&self, id: &str) -> Result<()>;
    /// [`Backend::thaw`] off the async threads.
    async fn thaw_async(&self, id: &str) -> Result<()>;
    /// Whether the sandbox is frozen.
    fn frozen(&self, id: &str) -> bool;
    /// Applies new limits to a running sandbox (a pooled one handed out with other limits).
    fn set_limits(&self, id: &str, limits: &Limits) -> Result<()>;
    /// Memory the sandbox uses now, in bytes.
    fn memory_usage(&self, id: &str) -> Option<u64>;
    /// Of that, page cache, in bytes.
    fn memory_cache(&self, id: &str) -> Option<u64>;
    /// CPU time the sandbox has used, in nanoseconds.
    fn cpu_usage_ns(&self, id: &str) -> Option<u64>;
    /// Bytes (received, sent) by the sandbox in `slot` on its network interface.
    fn network_bytes(&self, slot: u32) -> Option<(u64, u64)>;
    /// The unix socket of the sandbox's agent.
    fn agent_socket(&self, id: &str) -> PathBuf;
    /// The IPv4 address of the sandbox in `slot`, when sandboxes have a network.
    fn ip_of(&self, slot: u32) -> Option<String>;
    /// Its IPv6 address, when sandboxes have one.
    fn ip6_of(&self, slot: u32) -> Option<String>;
    /// Removes whatever the host holds for sandboxes not in `live` (after a crash).
    async fn sweep(&self, live: &[SandboxRecord]);
    /// Whether memory-state snapshots can be taken here, and why not.
    fn memory_snapshots(&self) -> MemorySnapshotSupport;
    /// The sandboxes' layers.
    fn storage(&self) -> &dyn Storage;
    /// The sandboxes' network policy.
    fn firewall(&self) -> &dyn Firewall;
}

/// Whether memory-state snapshots can be taken here, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemorySnapshotSupport {
    /// Whether memory snapshots can be taken on this host.
    pub available: bool,
    /// `criu --version`'s version, when CRIU is installed.
    pub criu_version: Option<String>,
    /// Why they cannot be taken, for the caller to read.
    pub reason: String,
}

/// How a snapshot of a sandbox's writable layer is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// A copy-on-write snapshot of the layer (constant time); its size is counted later.
    Snapshot,
    /// A copy of the layer's files; its size is known once copied.
    Copy,
}

impl SnapshotMethod {
    /// As recorded in a snapshot's metadata (`coppice.storage`).
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMethod::Snapshot => "btrfs-snapshot",
            SnapshotMethod::Copy => "copy",
        }
    }
}

/// Sandboxes' writable layers and snapshots' read-only layers.
pub trait Storage: Send + Sync {
    /// The sandbox's writable layer (what a snapshot takes).
    fn upper_dir(&self, sandbox: &str) -> PathBuf;
    /// Whether each writable layer's disk limit is enforced.
    fn has_disk_limits(&self) -> bool;
    /// Bytes free for sandboxes' layers.
    fn free_bytes(&self) -> Option<u64>;
    /// Size of the filesystem sandboxes' layers live on, in bytes.
    fn total_bytes(&self) -> Option<u64>;
    /// How a snapshot of `sandbox` would be taken.
    fn snapshot_method(&self, sandbox: &str) -> SnapshotMethod;
    /// Takes the writable layer of `sandbox` (frozen by the caller) as the layer of snapshot
    /// `snap`; returns its path.
    fn snapshot_upper(&self, sandbox: &str, snap: &str) -> Result<PathBuf>;
    /// Where snapshot `snap`'s layer is.
    fn layer_path(&self, snap: &str) -> PathBuf;
    /// Removes snapshot `snap`'s layer now (a snapshot that failed half way).
    fn remove_layer_now(&self, snap: &str);
    /// Removes snapshot `snap`'s layer: its id is free when this returns; the files may go
    /// in the background.
    fn remove_layer(&self, snap: &str);
    /// Removes every snapshot layer `keep` does not name (layers without a row after a
    /// crash) and leftovers of earlier removals.
    fn remove_unknown_layers(&self, keep: &dyn Fn(&str) -> bool);
}

/// Sandboxes' network policy in force.
#[async_trait]
pub trait Firewall: Send + Sync {
    /// Makes `policy` the sandbox's and ends its connections the policy does not permit.
    async fn apply_policy(&self, rec: &SandboxRecord, policy: &CheckedPolicy) -> Result<()>;
    /// Caps the sandbox's bandwidth at `bps` each way, or removes the cap.
    async fn apply_bandwidth(&self, rec: &SandboxRecord, bps: Option<u64>) -> Result<()>;
}

/// The backend of this host's platform, set up for `cfg`; `all_sandboxes` are the limits all
/// sandboxes share.
#[cfg(target_os = "linux")]
pub async fn for_host(
    cfg: &crate::config::Config,
    all_sandboxes: &Limits,
) -> Result<std::sync::Arc<dyn Backend>> {
    Ok(std::sync::Arc::new(
        crate::linux::backend::LinuxBackend::new(cfg, all_sandboxes).await?,
    ))
}
