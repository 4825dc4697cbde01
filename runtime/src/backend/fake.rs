//! A recording fake of the backend seam for the manager's unit tests (youki's
//! `TestHelperSyscall` is the pattern): every call is recorded in order, liveness and start
//! failures are scripted per test, and layers are plain directories under a temporary root.
//! Nothing here needs root or touches the host beyond that directory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Backend, Firewall, MemorySnapshotSupport, SnapshotMethod, Started, Storage};
use crate::error::{Error, Result};
use crate::model::{Limits, TemplateInfo};
use crate::policy::CheckedPolicy;
use crate::state::SandboxRecord;

/// One call the manager made, with the sandbox or snapshot it named.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `Backend::start` of this sandbox.
    Start(String),
    /// `Backend::stop_for_restart` of this sandbox.
    StopForRestart(String),
    /// `Backend::destroy` of this sandbox.
    Destroy(String),
    /// `Backend::freeze` of this sandbox.
    Freeze(String),
    /// `Backend::thaw` of this sandbox.
    Thaw(String),
    /// `Backend::set_limits` of this sandbox, with the limits.
    SetLimits(String, Limits),
    /// `Backend::sweep`, with the live sandboxes' ids, sorted.
    Sweep(Vec<String>),
    /// `Firewall::apply_policy` for this sandbox.
    ApplyPolicy(String),
    /// `Firewall::apply_bandwidth` for this sandbox, with the cap.
    ApplyBandwidth(String, Option<u64>),
    /// `Storage::snapshot_upper`: the sandbox, then the snapshot.
    SnapshotUpper(String, String),
    /// `Storage::remove_layer` of this snapshot.
    RemoveLayer(String),
    /// `Storage::remove_layer_now` of this snapshot.
    RemoveLayerNow(String),
    /// The layers `remove_unknown_layers` kept, sorted.
    KeptLayers(Vec<String>),
}

/// The fake backend, storage and firewall in one value.
pub struct FakeBackend {
    root: PathBuf,
    calls: Mutex<Vec<Call>>,
    dead: Mutex<HashSet<String>>,
    start_failures: Mutex<VecDeque<Error>>,
    frozen: Mutex<HashSet<String>>,
    /// The layer stack each sandbox was last started on.
    started_on: Mutex<HashMap<String, Vec<PathBuf>>>,
    next_pid: AtomicI32,
}

impl FakeBackend {
    /// A fake whose layers live under `root` (created).
    pub fn new(root: PathBuf) -> Self {
        std::fs::create_dir_all(root.join("layers")).expect("fake backend root");
        Self {
            root,
            calls: Mutex::new(Vec::new()),
            dead: Mutex::new(HashSet::new()),
            start_failures: Mutex::new(VecDeque::new()),
            frozen: Mutex::new(HashSet::new()),
            started_on: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(10_000),
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.calls.lock().clear();
    }

    /// From now on sandbox `id` reports not alive (its init died).
    pub fn kill_behind_the_back(&self, id: &str) {
        self.dead.lock().insert(id.to_string());
    }

    /// The next start fails with `e` (queued: several calls queue several failures).
    pub fn fail_next_start(&self, e: Error) {
        self.start_failures.lock().push_back(e);
    }

    /// Whether the fake holds sandbox `id` frozen.
    pub fn is_frozen(&self, id: &str) -> bool {
        self.frozen.lock().contains(id)
    }

    /// The layer stack sandbox `id` was last started on, top first.
    pub fn started_on(&self, id: &str) -> Vec<PathBuf> {
        self.started_on.lock().get(id).cloned().unwrap_or_default()
    }

    fn record(&self, c: Call) {
        self.calls.lock().push(c);
    }
}

#[async_trait]
impl Backend for FakeBackend {
    async fn resume(
        &self,
        rec: &SandboxRecord,
        t: &TemplateInfo,
        nnp: bool,
        _: &str,
    ) -> Result<Started> {
        self.start(rec, t, nnp).await
    }

    fn dump_memory(&self, _: &SandboxRecord, _: &str, _: Option<String>) -> Result<u64> {
        Err(Error::HostUnsupported(
            "the fake backend has no CRIU".into(),
        ))
    }

    fn memory_access_token(&self, _: &str) -> Option<String> {
        None
    }

    fn remove_memory(&self, _: &str) {}

    async fn start(&self, rec: &SandboxRecord, t: &TemplateInfo, _: bool) -> Result<Started> {
        self.record(Call::Start(rec.id.clone()));
        self.started_on
            .lock()
            .insert(rec.id.clone(), t.layers.clone());
        if let Some(e) = self.start_failures.lock().pop_front() {
            return Err(e);
        }
        self.dead.lock().remove(&rec.id);
        std::fs::create_dir_all(self.root.join("uppers").join(&rec.id)).map_err(Error::internal)?;
        Ok(Started {
            pid: self.next_pid.fetch_add(1, Ordering::SeqCst),
            pid_start: Some(1),
            ip: None,
        })
    }

    async fn stop_for_restart(&self, rec: &SandboxRecord) -> Result<()> {
        self.record(Call::StopForRestart(rec.id.clone()));
        Ok(())
    }

    async fn destroy(&self, rec: &SandboxRecord) {
        self.record(Call::Destroy(rec.id.clone()));
        self.dead.lock().insert(rec.id.clone());
    }

    fn alive(&self, rec: &SandboxRecord) -> bool {
        rec.pid.is_some() && !self.dead.lock().contains(&rec.id)
    }

    fn death_cause(&self, _: &SandboxRecord) -> &'static str {
        "agent exited"
    }

    fn freeze(&self, id: &str) -> Result<()> {
        self.record(Call::Freeze(id.to_string()));
        self.frozen.lock().insert(id.to_string());
        Ok(())
    }

    fn thaw(&self, id: &str) -> Result<()> {
        self.record(Call::Thaw(id.to_string()));
        self.frozen.lock().remove(id);
        Ok(())
    }

    async fn freeze_async(&self, id: &str) -> Result<()> {
        Backend::freeze(self, id)
    }

    async fn thaw_async(&self, id: &str) -> Result<()> {
        Backend::thaw(self, id)
    }

    fn frozen(&self, id: &str) -> bool {
        self.is_frozen(id)
    }

    fn set_limits(&self, id: &str, limits: &Limits) -> Result<()> {
        self.record(Call::SetLimits(id.to_string(), limits.clone()));
        Ok(())
    }

    fn memory_usage(&self, _: &str) -> Option<u64> {
        Some(1 << 20)
    }

    fn memory_cache(&self, _: &str) -> Option<u64> {
        Some(0)
    }

    fn cpu_usage_ns(&self, _: &str) -> Option<u64> {
        Some(0)
    }

    fn network_bytes(&self, _: u32) -> Option<(u64, u64)> {
        None
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.root.join("agents").join(id)
    }

    fn ip_of(&self, _: u32) -> Option<String> {
        None
    }

    fn ip6_of(&self, _: u32) -> Option<String> {
        None
    }

    async fn sweep(&self, live: &[SandboxRecord]) {
        let mut ids: Vec<String> = live.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        self.record(Call::Sweep(ids));
    }

    fn memory_snapshots(&self) -> MemorySnapshotSupport {
        MemorySnapshotSupport {
            available: false,
            criu_version: None,
            reason: "the fake backend has no memory snapshots".into(),
        }
    }

    fn storage(&self) -> &dyn Storage {
        self
    }

    fn firewall(&self) -> &dyn Firewall {
        self
    }
}

impl Storage for FakeBackend {
    fn upper_dir(&self, sandbox: &str) -> PathBuf {
        self.root.join("uppers").join(sandbox)
    }

    fn has_disk_limits(&self) -> bool {
        false
    }

    fn free_bytes(&self) -> Option<u64> {
        Some(u64::MAX / 4)
    }

    fn total_bytes(&self) -> Option<u64> {
        Some(u64::MAX / 2)
    }

    fn snapshot_method(&self, _: &str) -> SnapshotMethod {
        SnapshotMethod::Copy
    }

    fn snapshot_upper(&self, sandbox: &str, snap: &str) -> Result<PathBuf> {
        self.record(Call::SnapshotUpper(sandbox.to_string(), snap.to_string()));
        let layer = self.layer_path(snap);
        std::fs::create_dir_all(&layer).map_err(Error::internal)?;
        Ok(layer)
    }

    fn layer_path(&self, snap: &str) -> PathBuf {
        self.root.join("layers").join(snap)
    }

    fn remove_layer_now(&self, snap: &str) {
        self.record(Call::RemoveLayerNow(snap.to_string()));
        let _ = std::fs::remove_dir_all(self.layer_path(snap));
    }

    fn remove_layer(&self, snap: &str) {
        self.record(Call::RemoveLayer(snap.to_string()));
        let _ = std::fs::remove_dir_all(self.layer_path(snap));
    }

    fn remove_unknown_layers(&self, keep: &dyn Fn(&str) -> bool) {
        let mut kept = Vec::new();
        for e in std::fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep(&name) {
                kept.push(name);
            } else {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        kept.sort();
        self.record(Call::KeptLayers(kept));
    }
}

#[async_trait]
impl Firewall for FakeBackend {
    async fn apply_policy(&self, rec: &SandboxRecord, _: &CheckedPolicy) -> Result<()> {
        self.record(Call::ApplyPolicy(rec.id.clone()));
        Ok(())
    }

    async fn apply_bandwidth(&self, rec: &SandboxRecord, bps: Option<u64>) -> Result<()> {
        self.record(Call::ApplyBandwidth(rec.id.clone(), bps));
        Ok(())
    }
}
