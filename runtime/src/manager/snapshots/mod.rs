//! Snapshots, forks, restore and lineage (ARCHITECTURE decision 4).
//!
//! A snapshot freezes the sandbox, has the backend's storage take its writable layer (a
//! copy-on-write snapshot in constant time where the storage has them, else a copy), thaws it
//! and records the layer (how layers are stored is the backend's `Storage`). A snapshot's layer stack is its own layer over the layers of the
//! snapshot its sandbox stood on, down to the template: a fork is a new sandbox whose overlay
//! lowers are that stack and whose upper is fresh, so N forks cost N mounts, not N copies.
//!
//! Stack depth: the spawn helper passes every lower as its own `lowerdir+` (fsconfig), under
//! a two-character stage path, so neither the 4 KiB mount-option limit nor the host path
//! length constrains a deep chain; overlay's own limit is 500 lowers. We refuse a snapshot
//! whose stack would exceed [`MAX_LAYERS`] (each lookup walks the stack, so deep chains get
//! slower long before 500).
//!
//! Deleting a snapshot that a live sandbox or another snapshot stands on is refused (docs/
//! decisions/0005). Implicit snapshots (a fork straight from a live sandbox) are removed by the
//! collector once nothing stands on them.

mod checkpoint;
mod collect;
mod fork;
mod lineage;
#[cfg(test)]
mod tests;
mod warm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Runtime, new_id};
use crate::backend::SnapshotMethod;
use crate::clock::{now_ms, rfc3339_ms};
use crate::error::{Error, Result};
use crate::fsutil::Measure;
use crate::model::{CreateRequest, Limits, SandboxInfo, SandboxState, TemplateInfo};
use crate::state::SandboxRecord;
use crate::state::snapshots::{LineageRecord, SnapshotRecord};

/// Metadata key of a memory snapshot's image bytes (process memory and tmpfs copies).
const MEMORY_BYTES_KEY: &str = "coppice.memory_bytes";

/// Forks per request.
pub const MAX_FORKS: u32 = 100;
/// Lower layers per sandbox (template layers included); overlay's hard limit is 500.
pub const MAX_LAYERS: usize = 128;
/// Forks started at once: each is a helper process plus netlink work; more only queues on
/// the CPU.
const FORK_PARALLELISM: usize = 16;

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// The sandbox's files (its writable layer); processes start afresh in a fork.
    #[default]
    Filesystem,
    /// Files plus process memory (CRIU); only where the host has CRIU >= 4.1.
    Memory,
}

impl SnapshotKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Filesystem => "filesystem",
            SnapshotKind::Memory => "memory",
        }
    }
}

/// What a caller asks for when snapshotting a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Optional label: 1-64 letters, digits, `-`, `_` and `.`, not starting with a dot.
    pub name: Option<String>,
    /// Caller's key-value metadata, stored with the snapshot.
    pub metadata: BTreeMap<String, String>,
    /// Files only, or files plus process memory.
    pub kind: SnapshotKind,
}

/// A snapshot as every surface reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub snapshot_id: String,
    /// The label given at creation, if any.
    pub name: Option<String>,
    /// "filesystem" (files only) or "memory" (files and processes).
    pub kind: SnapshotKind,
    /// The sandbox it was taken of (it may be gone since).
    pub sandbox_id: String,
    /// The snapshot that sandbox stood on, if it was itself a fork or restored.
    pub parent_snapshot_id: Option<String>,
    /// Name of the template at the bottom of its layer stack.
    pub template: String,
    /// Made by a fork from a live sandbox; deleted automatically once no fork stands on it.
    pub implicit: bool,
    /// Bytes in its own layer (the files the sandbox had changed), plus a memory snapshot's
    /// images. A copy-on-write layer is counted in the background just after it is taken: 0
    /// for the first moments.
    pub size_bytes: u64,
    /// Read-only layers a fork of it stacks (template layers included).
    pub depth: usize,
    /// RFC 3339.
    pub created_at: String,
    /// Caller's key-value metadata given at creation.
    pub metadata: BTreeMap<String, String>,
    /// Live sandboxes standing on it (forks, restored sandboxes).
    pub dependant_sandboxes: Vec<String>,
    /// Snapshots whose layers include it.
    pub dependant_snapshots: Vec<String>,
}

/// Settings of one fork; unset fields come from the request's common settings, then from
/// the snapshot's source sandbox (limits, env) and the configured defaults (timeout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkSettings {
    /// Memory, CPU and pid limits; unset ones come from the source sandbox.
    #[serde(default)]
    pub limits: Limits,
    /// Lifetime before the reaper kills the fork; None: the configured default.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Environment variables, merged over the source sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Caller's key-value metadata of the fork.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl ForkSettings {
    /// `self` over `base`: set fields win, maps merge.
    fn over(&self, base: &ForkSettings) -> ForkSettings {
        let mut env = base.env.clone();
        env.extend(self.env.clone());
        let mut metadata = base.metadata.clone();
        metadata.extend(self.metadata.clone());
        ForkSettings {
            limits: Limits {
                memory_bytes: self.limits.memory_bytes.or(base.limits.memory_bytes),
                cpus: self.limits.cpus.or(base.limits.cpus),
                pids: self.limits.pids.or(base.limits.pids),
                disk_bytes: None,
            },
            timeout: self.timeout.or(base.timeout),
            env,
            metadata,
        }
    }
}

/// Where forks come from: exactly one of a snapshot or a live sandbox (implicit snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ForkSource {
    /// Fork an existing snapshot, by id.
    Snapshot(String),
    /// Take an implicit snapshot of this live sandbox, by id, and fork that.
    Sandbox(String),
}

/// What a caller asks for when forking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkRequest {
    /// What to fork.
    pub source: ForkSource,
    /// Number of forks (1..=100). With `per_fork`, at most its length is used per index.
    pub count: u32,
    /// Settings for every fork.
    pub common: ForkSettings,
    /// Settings for fork i (over `common`); shorter than `count` is fine.
    pub per_fork: Vec<ForkSettings>,
}

/// One fork's result: a sandbox or the reason it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkOutcome {
    /// Position of the fork among the request's `count` (0-based).
    pub index: u32,
    /// The new sandbox, when the fork succeeded.
    pub sandbox: Option<SandboxInfo>,
    /// Why the fork failed, when it did.
    pub error: Option<String>,
}

/// The answer to a [`ForkRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkResult {
    /// The snapshot the forks stand on.
    pub snapshot_id: String,
    /// True when the snapshot was taken for this fork (from a live sandbox).
    pub implicit_snapshot: bool,
    /// One outcome per fork, in index order.
    pub forks: Vec<ForkOutcome>,
    /// Forks that started.
    pub created: u32,
    /// Forks that failed.
    pub failed: u32,
}

/// One node of a lineage listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LineageNode {
    /// Sandbox or snapshot id.
    pub id: String,
    /// "sandbox" or "snapshot".
    pub kind: String,
    /// Its parent: a snapshot for a sandbox (none: born from its template), the sandbox it
    /// was taken of for a snapshot.
    pub parent: Option<String>,
    /// A sandbox still running, or a snapshot still stored.
    pub alive: bool,
    /// Name of the template it descends from.
    pub template: String,
}

/// A sandbox's or snapshot's place in the tree of snapshots and forks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lineage {
    /// The node asked about.
    pub node: LineageNode,
    /// Parent, grandparent, ... up to the sandbox born from a template.
    pub ancestors: Vec<LineageNode>,
    /// Everything descended from it (snapshots of a sandbox, forks of a snapshot, and so on),
    /// breadth first.
    pub descendants: Vec<LineageNode>,
}

pub use crate::backend::MemorySnapshotSupport;

/// In-memory state of the snapshot machinery (held by the runtime).
#[derive(Default)]
pub struct SnapState {
    /// Snapshots an operation in flight relies on (the collector leaves them alone).
    pins: Mutex<HashMap<String, usize>>,
    /// Sandboxes being snapshotted or restored (one such operation at a time each).
    busy: Mutex<HashSet<String>>,
    /// Subvolume snapshots whose size is still to be counted (off the request path: walking
    /// 10k files takes longer than the snapshot itself), and the collector's wake-up.
    to_size: Mutex<Vec<(String, PathBuf)>>,
    sizing: tokio::sync::Notify,
}

struct Pin<'a> {
    state: &'a SnapState,
    id: String,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = self.state.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

struct Busy<'a> {
    state: &'a SnapState,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.state
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl SnapState {
    fn pin(&self, id: &str) -> Pin<'_> {
        *self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        Pin {
            state: self,
            id: id.to_string(),
        }
    }

    /// Whether a snapshot or restore of `sandbox` is under way (CRIU may be tracing it).
    pub(in crate::manager) fn is_busy(&self, sandbox: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sandbox)
    }

    fn busy(&self, sandbox: &str, what: &str) -> Result<Busy<'_>> {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sandbox.to_string())
        {
            return Err(Error::Unavailable(format!(
                "sandbox '{sandbox}' is busy with another snapshot or restore, cannot {what} it now"
            )));
        }
        Ok(Busy {
            state: self,
            id: sandbox.to_string(),
        })
    }
}

/// How a snapshot is taken, beyond what the caller asked for.
#[derive(Default)]
struct Taking<'a> {
    /// An implicit snapshot's id (pinned by the caller, so the collector cannot take it
    /// before the caller uses it) and what it is for ("fork", "pause").
    implicit: Option<(&'a str, &'static str)>,
    /// Leave the sandbox frozen once it is taken (a pause's checkpoint); on failure it is
    /// thawed all the same.
    stay_frozen: bool,
    /// Of a sandbox callers do not see (the daemon's own: a warm checkpoint's).
    internal: bool,
}

fn backend_queue_size(snap: &SnapState, id: &str, layer: PathBuf) {
    snap.to_size
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id.to_string(), layer));
    snap.sizing.notify_one();
}

fn validate_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "snapshot name '{name}' must be 1-64 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

impl Runtime {
    /// A snapshot's layer.
    fn snapshot_layer(&self, id: &str) -> PathBuf {
        self.backend.storage().layer_path(id)
    }

    /// Takes a filesystem snapshot of a running sandbox; it keeps running (frozen only while
    /// its upper is copied).
    pub async fn snapshot(&self, sandbox_id: &str, req: SnapshotRequest) -> Result<SnapshotInfo> {
        let rec = self
            .take_snapshot(sandbox_id, req, Taking::default())
            .await?;
        self.snapshot_info_of(&rec)
    }

    async fn take_snapshot(
        &self,
        sandbox_id: &str,
        req: SnapshotRequest,
        how: Taking<'_>,
    ) -> Result<SnapshotRecord> {
        let implicit = how.implicit.is_some();
        if req.kind == SnapshotKind::Memory {
            let support = self.backend.memory_snapshots();
            if !support.available {
                return Err(Error::HostUnsupported(format!(
                    "memory snapshots are unavailable on this host: {}; take a filesystem \
                     snapshot instead (kind \"filesystem\": files are kept, processes restart)",
                    support.reason
                )));
            }
        }
        if let Some(name) = &req.name {
            validate_snapshot_name(name)?;
        }
        let sbx = match how.internal {
            true => self
                .store
                .get(sandbox_id)?
                .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_string()))?,
            false => self.record(sandbox_id)?,
        };
        if sbx.state != SandboxState::Running {
            return Err(Error::FailedPrecondition(format!(
                "sandbox '{sandbox_id}' is {}, only a running sandbox can be snapshotted",
                sbx.state.as_str()
            )));
        }
        let _busy = self.snap.busy(sandbox_id, "snapshot")?;
        let base = self
            .store
            .get_lineage(sandbox_id)?
            .and_then(|l| l.base_snapshot);
        let depth = match &base {
            Some(b) => self.layer_stack_of(b)?.len(),
            None => self.templates.get(&sbx.template)?.layers.len(),
        } + 1;
        if depth > MAX_LAYERS {
            return Err(Error::FailedPrecondition(format!(
                "a snapshot of sandbox '{sandbox_id}' would stack {depth} layers, more than the \
                 {MAX_LAYERS} allowed; snapshot a sandbox nearer its template instead"
            )));
        }
        let id = how.implicit.map_or_else(new_id, |(id, _)| id.to_string());
        let _pin = self.snap.pin(&id);
        let mut metadata = req.metadata.clone();
        if let Some((_, made_for)) = how.implicit {
            metadata.insert("coppice.implicit".into(), made_for.into());
        }
        // How the storage takes it, said in the record so a slow snapshot explains itself.
        let method = self.backend.storage().snapshot_method(sandbox_id);
        metadata.insert("coppice.storage".into(), method.as_str().into());
        let rec = SnapshotRecord {
            id: id.clone(),
            name: req.name.clone(),
            sandbox_id: sandbox_id.to_string(),
            base_snapshot: base,
            template: sbx.template.clone(),
            kind: req.kind.as_str().into(),
            implicit,
            ready: false,
            size_bytes: 0,
            created_at_ms: now_ms(),
            metadata,
            limits: sbx.limits.clone(),
            env: sbx.env.clone(),
        };
        // Row first (not ready): a crash mid-copy leaves a row the collector removes.
        self.store.insert_snapshot(&rec)?;
        self.store
            .ensure_lineage(sandbox_id, &sbx.template, sbx.created_at_ms)?;
        let t0 = std::time::Instant::now();
        let mut frozen_for = Duration::ZERO;
        // A memory snapshot's processes hold the agent's token; a fork's agent is told to
        // drop it (with it) once resumed.
        let memory = match req.kind {
            SnapshotKind::Memory => Some(self.store.access_token(sandbox_id)?),
            SnapshotKind::Filesystem => None,
        };
        let mut memory_bytes = 0;
        let copied = {
            let backend = &self.backend;
            let sid = sandbox_id.to_string();
            let id = id.clone();
            let frozen_for = &mut frozen_for;
            let memory_bytes = &mut memory_bytes;
            let sbx = &sbx;
            let stay_frozen = how.stay_frozen;
            tokio::task::block_in_place(move || -> Result<(u64, Option<PathBuf>)> {
                backend.freeze(&sid)?;
                let t = std::time::Instant::now();
                // Files and processes at the same frozen instant, so the pair is consistent.
                let layer = backend
                    .storage()
                    .snapshot_upper(&sid, &id)
                    .and_then(|layer| {
                        if let Some(token) = memory {
                            *memory_bytes = backend.dump_memory(sbx, &id, token)?;
                        }
                        Ok(layer)
                    });
                *frozen_for = t.elapsed();
                // Thaw whatever happened (unless a pause keeps it frozen): a sandbox must never
                // stay frozen by a failed snapshot.
                let layer = if stay_frozen && layer.is_ok() {
                    layer?
                } else {
                    let thawed = backend.thaw(&sid);
                    let layer = layer?;
                    thawed?;
                    layer
                };
                if method == SnapshotMethod::Snapshot {
                    // Counted by the collector task once the row is marked ready (below).
                    return Ok((0, Some(layer)));
                }
                Ok((crate::fsutil::tree_size(&layer, Measure::Apparent), None))
            })
        };
        let (size, to_size) = match copied {
            Ok(sized) => sized,
            Err(e) => {
                self.backend.storage().remove_layer_now(&id);
                self.backend.remove_memory(&id);
                self.store.delete_snapshot(&id)?;
                return Err(e);
            }
        };
        let mut rec = rec;
        if req.kind == SnapshotKind::Memory {
            rec.metadata
                .insert(MEMORY_BYTES_KEY.into(), memory_bytes.to_string());
            self.store.update_snapshot_metadata(&id, &rec.metadata)?;
        }
        self.store.mark_snapshot_ready(&id, size)?;
        // Only now: queued earlier, the collector could record the real size first and this
        // row's `ready` write above would then reset it to 0 for good (a flaky test's cause).
        if let Some(layer) = to_size {
            backend_queue_size(&self.snap, &id, layer);
        }
        self.store.event(
            Some(sandbox_id),
            "snapshot",
            &format!("{id} ({size} bytes, {:?})", t0.elapsed()),
        );
        tracing::info!(sandbox = %sandbox_id, snapshot = %id, size, storage = method.as_str(), ?frozen_for,
                       elapsed = ?t0.elapsed(), "snapshot taken");
        Ok(SnapshotRecord {
            ready: true,
            size_bytes: size,
            ..rec
        })
    }

    /// A ready snapshot by id or name.
    fn snapshot_record(&self, id: &str) -> Result<SnapshotRecord> {
        match self.store.get_snapshot(id)? {
            Some(s) if s.ready => Ok(s),
            _ => Err(Error::SnapshotNotFound(id.to_string())),
        }
    }

    /// Layers of a snapshot, top first: its own, its base's, ..., the template's.
    fn layer_stack_of(&self, id: &str) -> Result<Vec<PathBuf>> {
        let mut layers = Vec::new();
        let mut next = Some(id.to_string());
        let mut template = None;
        while let Some(id) = next {
            let s = self.snapshot_record(&id)?;
            layers.push(self.snapshot_layer(&s.id));
            if layers.len() > MAX_LAYERS {
                return Err(Error::Internal(format!(
                    "snapshot chain of {id} is too deep"
                )));
            }
            template = Some(s.template.clone());
            next = s.base_snapshot;
        }
        let template = template.expect("at least one snapshot");
        layers.extend(self.templates.get(&template)?.layers);
        Ok(layers)
    }

    /// The snapshot's template with the snapshot's layer stack: what a fork starts on.
    fn template_of_snapshot(&self, s: &SnapshotRecord) -> Result<TemplateInfo> {
        let mut t = self.templates.get(&s.template)?;
        t.layers = self.layer_stack_of(&s.id)?;
        Ok(t)
    }

    fn snapshot_info_of(&self, s: &SnapshotRecord) -> Result<SnapshotInfo> {
        let (dependant_sandboxes, dependant_snapshots) = self.store.snapshot_dependants(&s.id)?;
        let depth = self.layer_stack_of(&s.id).map(|l| l.len()).unwrap_or(0);
        Ok(SnapshotInfo {
            snapshot_id: s.id.clone(),
            name: s.name.clone(),
            kind: if s.kind == "memory" {
                SnapshotKind::Memory
            } else {
                SnapshotKind::Filesystem
            },
            sandbox_id: s.sandbox_id.clone(),
            parent_snapshot_id: s.base_snapshot.clone(),
            template: s.template.clone(),
            implicit: s.implicit,
            // A memory snapshot's images count with its layer.
            size_bytes: s.size_bytes
                + s.metadata
                    .get(MEMORY_BYTES_KEY)
                    .and_then(|b| b.parse::<u64>().ok())
                    .unwrap_or(0),
            depth,
            created_at: rfc3339_ms(s.created_at_ms),
            metadata: s.metadata.clone(),
            dependant_sandboxes,
            dependant_snapshots,
        })
    }

    /// The ready snapshot `id`; `SnapshotNotFound` if there is none.
    pub fn snapshot_info(&self, id: &str) -> Result<SnapshotInfo> {
        self.snapshot_info_of(&self.snapshot_record(id)?)
    }

    /// Ready snapshots, oldest first; only those of `sandbox_id` when given.
    pub fn list_snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        self.store
            .all_snapshots()?
            .iter()
            .filter(|s| s.ready && sandbox_id.is_none_or(|id| s.sandbox_id == id))
            .map(|s| self.snapshot_info_of(s))
            .collect()
    }

    /// Deletes a snapshot nothing stands on; refuses (FailedPrecondition, naming them) while
    /// a live sandbox or another snapshot does.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        let s = self.snapshot_record(id)?;
        {
            // Under the pin lock: a fork or restore either pinned it already (refused here),
            // or pins it after the row is gone (and then finds it missing).
            let pins = self.snap.pins.lock().unwrap_or_else(|e| e.into_inner());
            let (sandboxes, snapshots) = self.store.snapshot_dependants(&s.id)?;
            if !sandboxes.is_empty() || !snapshots.is_empty() || pins.contains_key(&s.id) {
                let mut what = Vec::new();
                if !sandboxes.is_empty() {
                    what.push(format!("sandboxes {}", sandboxes.join(", ")));
                }
                if !snapshots.is_empty() {
                    what.push(format!("snapshots {}", snapshots.join(", ")));
                }
                if what.is_empty() {
                    what.push("a fork or restore in progress".into());
                }
                return Err(Error::FailedPrecondition(format!(
                    "snapshot '{}' is in use: {} stand on its layer; kill those sandboxes and \
                     delete those snapshots first, then delete it",
                    s.id,
                    what.join(" and ")
                )));
            }
            self.store.delete_snapshot(&s.id)?;
        }
        self.remove_snapshot_files(&s);
        Ok(())
    }

    /// Removes a snapshot's row and files (no checks: unfinished snapshots at startup).
    fn remove_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.store.delete_snapshot(&s.id)?;
        self.remove_snapshot_files(s);
        Ok(())
    }

    fn remove_snapshot_files(&self, s: &SnapshotRecord) {
        self.backend.storage().remove_layer(&s.id);
        if s.kind == SnapshotKind::Memory.as_str() {
            self.backend.remove_memory(&s.id);
        }
        self.store.event(None, "snapshot-deleted", &s.id);
    }
}
