//! The runtime every surface talks to: creates, hands out (from warm pools), lists, times out,
//! kills and recovers sandboxes. Backend-neutral; the backend does the kernel work.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coppice_envd::AgentClient;
use tokio::sync::Notify;

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{CreateRequest, Limits, SandboxInfo, SandboxState, TemplateInfo};
use crate::state::{SandboxRecord, StateStore};
use crate::templates::TemplateStore;

mod health;
mod lifecycle;
mod network;
mod pause;
mod pool;
mod resume;
#[cfg(test)]
mod scenarios;
mod scrape;
pub mod snapshots;
mod teardowns;

use self::teardowns::Teardowns;
use crate::backend::Backend;

/// The sandbox runtime: creates, tracks and tears down sandboxes on one host through a backend.
pub struct Runtime {
    cfg: Config,
    store: StateStore,
    templates: TemplateStore,
    backend: Arc<dyn Backend>,
    /// Ready sandboxes per template, oldest first.
    pools: Mutex<HashMap<String, VecDeque<String>>>,
    refill: Notify,
    /// Serialises slot allocation (slot = uid range, IP, interface name).
    slots: tokio::sync::Mutex<()>,
    /// Snapshot pins and per-sandbox snapshot/restore exclusion (manager/snapshots.rs).
    snap: snapshots::SnapState,
    /// Serialises network policy updates (store and kernel change in the same order).
    policy_lock: tokio::sync::Mutex<()>,
    /// Host listeners of exposed sandbox ports (policy `expose`).
    exposer: crate::expose::Exposer,
    teardowns: Teardowns,
    /// The most one sandbox may ask for (config maxima, the host's size where unset).
    max_limits: Limits,
    /// Sandboxes whose agent does not answer (manager/health.rs).
    health: health::Health,
    /// Pause/resume serialisation and CPU samples (manager/lifecycle.rs).
    lifecycle: lifecycle::LifecycleState,
    /// What is recorded for `GET /metrics` (manager/scrape.rs reads the rest).
    telemetry: crate::metrics::Metrics,
    /// Held for the runtime's life: one runtime owns a host's sandboxes.
    _host_lock: Option<std::fs::File>,
}

/// A tombstone's event in words.
fn end_reason(kind: &str, detail: &str) -> String {
    match (kind, detail) {
        ("killed", _) => "it was killed (sandbox kill)".into(),
        ("reaped", "timeout") => "its timeout passed".into(),
        ("reaped", "oom") => {
            "out of memory: the OOM killer ended its agent (give it a larger memory limit)".into()
        }
        ("reaped", "agent exited") => "its agent exited".into(),
        (_, detail) if !detail.is_empty() => detail.to_string(),
        (kind, _) => kind.to_string(),
    }
}

/// How long the pool filler waits after a hand-out before starting a replacement.
const REFILL_DELAY: Duration = Duration::from_millis(50);

/// Host-wide lock file: cgroups, interface names and uid ranges are per host, and a runtime
/// sweeps those it does not own, so two runtimes on one host would destroy each other's work.
pub const HOST_LOCK: &str = "/run/coppice.lock";

fn lock_host() -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(HOST_LOCK)
        .map_err(Error::io(format!("opening {HOST_LOCK}")))?;
    // SAFETY: flock on an fd we own.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(Error::Unavailable(format!(
            "another coppice runtime (pid {}) already owns this host's sandboxes; one daemon per \
             host: stop it, or use it (coppice-mcp and the CLI join a running daemon)",
            holder.trim()
        )));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

pub use crate::ids::new_id;

impl Runtime {
    /// Opens the state, checks the host, ensures the default template and recovers what a
    /// previous daemon left running.
    pub async fn start(cfg: Config) -> Result<Arc<Runtime>> {
        let host_lock = lock_host()?;
        std::fs::create_dir_all(cfg.sandboxes_dir()).map_err(Error::io(format!(
            "creating {}",
            cfg.sandboxes_dir().display()
        )))?;
        // Root's alone: sandboxes' files with their natural owners, the database with access
        // tokens and environments, the API token (docs/security.md).
        std::fs::set_permissions(
            &cfg.state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(Error::io(format!(
            "restricting {}",
            cfg.state_dir.display()
        )))?;
        let store = StateStore::open(&cfg.state_dir.join("state.db"))?;
        let templates = TemplateStore::new(&cfg.state_dir)?;
        match templates.cleanup_partial() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unfinished template builds"),
            Err(e) => tracing::warn!("removing unfinished template builds: {e}"),
        }
        let t0 = std::time::Instant::now();
        let default = tokio::task::block_in_place(|| templates.ensure_default())?;
        tracing::info!(template = %default.name, elapsed = ?t0.elapsed(), "default template ready");
        let host = crate::limits::HostSize::current();
        let max_limits = crate::limits::maxima(&cfg.max_limits, host);
        let all = crate::limits::all_sandboxes(host, &cfg.host_reserve_memory, max_limits.pids)?;
        let backend = crate::backend::for_host(&cfg, &all).await?;
        Self::assemble(cfg, store, templates, backend, max_limits, Some(host_lock)).await
    }

    /// The runtime over `backend`, recovered from the store.
    async fn assemble(
        cfg: Config,
        store: StateStore,
        templates: TemplateStore,
        backend: Arc<dyn Backend>,
        max_limits: Limits,
        host_lock: Option<std::fs::File>,
    ) -> Result<Arc<Runtime>> {
        let exposer = crate::expose::Exposer::new(&cfg.expose_bind)?;
        let rt = Arc::new(Runtime {
            cfg,
            store,
            templates,
            backend,
            pools: Mutex::new(HashMap::new()),
            refill: Notify::new(),
            slots: tokio::sync::Mutex::new(()),
            snap: Default::default(),
            policy_lock: tokio::sync::Mutex::new(()),
            exposer,
            teardowns: Teardowns::default(),
            max_limits,
            health: Default::default(),
            lifecycle: Default::default(),
            telemetry: Default::default(),
            _host_lock: host_lock,
        });
        rt.recover().await?;
        Ok(rt)
    }

    /// A runtime over a test backend on `cfg.state_dir` (its templates made by the test): no
    /// host lock, no default template build.
    #[cfg(test)]
    pub(crate) async fn for_tests(cfg: Config, backend: Arc<dyn Backend>) -> Result<Arc<Runtime>> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(Error::io("creating the state dir"))?;
        let store = StateStore::open(&cfg.state_dir.join("state.db"))?;
        let templates = TemplateStore::new(&cfg.state_dir)?;
        let max_limits = crate::limits::maxima(&cfg.max_limits, crate::limits::HostSize::current());
        Self::assemble(cfg, store, templates, backend, max_limits, None).await
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The installed templates.
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }

    /// Whether memory-state snapshots can be taken on this host, and why not.
    pub fn memory_snapshot_support(&self) -> snapshots::MemorySnapshotSupport {
        self.backend.memory_snapshots()
    }

    /// Runs the reaper and the pool filler until the process ends.
    pub fn spawn_background_tasks(self: &Arc<Self>) {
        self.spawn_snapshot_collector();
        let rt = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                rt.reap().await;
            }
        });
        let rt = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(health::CHECK_EVERY).await;
                rt.check_health().await;
            }
        });
        let rt = self.clone();
        tokio::spawn(async move {
            loop {
                rt.ensure_warm_checkpoints().await;
                rt.fill_pools().await;
                if tokio::time::timeout(Duration::from_secs(5), rt.refill.notified())
                    .await
                    .is_ok()
                {
                    // A sandbox was just handed out and its first command usually follows at
                    // once: starting the replacement right now would compete with it for CPU.
                    tokio::time::sleep(REFILL_DELAY).await;
                }
            }
        });
    }

    /// Reconciles the store with the kernel: live sandboxes are kept (pooled ones go back to
    /// their pool), dead ones are cleaned up, and anything nobody owns is swept.
    async fn recover(&self) -> Result<()> {
        let mut live = Vec::new();
        for mut rec in self.store.all()? {
            if rec.state != SandboxState::Starting && self.backend.alive(&rec) {
                if rec.pooled {
                    self.pool_push(&rec.template, rec.id.clone());
                }
                tracing::info!(sandbox = %rec.id, "recovered");
                live.push(rec);
            } else if rec.state == SandboxState::Paused && self.store.checkpoint(&rec.id)?.is_some()
            {
                // Paused on disk: a resume brings it back from its checkpoint.
                self.stop_paused(&mut rec).await;
                self.store.update(&rec)?;
                tracing::info!(sandbox = %rec.id, "recovered, paused on disk");
                live.push(rec);
            } else {
                tracing::info!(sandbox = %rec.id, "cleaning up a sandbox that did not survive");
                self.backend.destroy(&rec).await;
                self.store.delete(&rec.id)?;
                self.store.event(
                    Some(&rec.id),
                    "lost",
                    "its processes were gone after a restart",
                );
            }
        }
        self.backend.sweep(&live).await;
        self.reapply_policies(&live).await;
        // Templates replaced by a rebuild are kept while sandboxes may run on them.
        if live.is_empty() {
            match self.templates.remove_retired() {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} replaced templates"),
                Err(e) => tracing::warn!("removing replaced templates: {e}"),
            }
        }
        Ok(())
    }

    /// Creates a sandbox, from the warm pool when one is ready.
    pub async fn create(&self, req: CreateRequest) -> Result<SandboxInfo> {
        let template = self.templates.get(
            req.template
                .as_deref()
                .unwrap_or(&self.cfg.default_template),
        )?;
        let limits = self.effective_limits(&req.limits)?;
        let timeout = self.effective_timeout(req.timeout)?;
        if let Some(p) = &req.network_policy {
            p.check()?;
        }
        self.admit(&limits)?;
        // A pooled sandbox's /tmp+/dev/shm tmpfs was sized for the default memory limit:
        // a smaller limit needs a sandbox of its own (docs/security.md).
        // So were its no_new_privs.
        let fits_pool = match (limits.memory_bytes, self.cfg.default_limits.memory_bytes) {
            (Some(asked), Some(pooled)) => asked >= pooled,
            (None, _) => true,
            (Some(_), None) => false,
        } && req.no_new_privs.is_none_or(|n| n == self.cfg.no_new_privs);
        let started = std::time::Instant::now();
        let pooled = if fits_pool {
            self.pool_pop(&template.name)
        } else {
            None
        };
        let mut claimed = pooled.is_some();
        let rec = match pooled {
            Some(id) => {
                self.refill.notify_one();
                match self.claim(&id, &limits, &req, timeout).await {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::warn!(sandbox = %id, "pooled sandbox unusable, starting a new one: {e}");
                        claimed = false;
                        if let Ok(Some(rec)) = self.store.get(&id) {
                            self.destroy(rec).await.ok();
                        }
                        self.start_fresh(&template, limits, &req, timeout, false)
                            .await?
                    }
                }
            }
            None => {
                self.start_fresh(&template, limits, &req, timeout, false)
                    .await?
            }
        };
        self.telemetry.sandbox_created(claimed, started.elapsed());
        Ok(self.info_of(&rec))
    }

    /// Hands a pooled sandbox to a caller: its limits, env, metadata and timeout.
    async fn claim(
        &self,
        id: &str,
        limits: &Limits,
        req: &CreateRequest,
        timeout: Duration,
    ) -> Result<SandboxRecord> {
        let mut rec = self
            .store
            .get(id)?
            .ok_or_else(|| Error::SandboxNotFound(id.to_string()))?;
        if !self.backend.alive(&rec) {
            return Err(Error::Unavailable("its init process is gone".into()));
        }
        // Pooled sandboxes start with the default limits: most claims need no cgroup writes.
        if *limits != rec.limits {
            self.backend.set_limits(id, limits)?;
        }
        if !req.env.is_empty() {
            self.init_agent(id, &req.env).await?;
        }
        if req.network_policy.is_some() {
            self.apply_initial_policy(&rec, req.network_policy.as_ref())
                .await?;
        }
        let now = now_ms();
        rec.limits = limits.clone();
        rec.env = req.env.clone();
        rec.metadata = req.metadata.clone();
        rec.created_at_ms = now;
        rec.expires_at_ms = now + timeout.as_millis() as i64;
        rec.pooled = false;
        self.store
            .update_with_event(&rec, "created", "from the warm pool")?;
        Ok(rec)
    }

    /// Starts a new sandbox, retrying once with a fresh id and slot: under concurrent
    /// create/kill churn a fresh veth has been seen to vanish while being wired (ENODEV, 2 in
    /// ~100 creates at cc=10). A failed attempt is torn down first.
    async fn start_new(
        &self,
        template: &TemplateInfo,
        limits: Limits,
        req: &CreateRequest,
        timeout: Duration,
        pooled: bool,
        resume: Option<&str>,
    ) -> Result<SandboxRecord> {
        match self
            .start_new_once(template, limits.clone(), req, timeout, pooled, resume)
            .await
        {
            Err(e @ (Error::Internal(_) | Error::Io { .. })) => {
                tracing::warn!("starting a sandbox failed, retrying once: {e}");
                self.start_new_once(template, limits, req, timeout, pooled, resume)
                    .await
            }
            other => other,
        }
    }

    async fn start_new_once(
        &self,
        template: &TemplateInfo,
        limits: Limits,
        req: &CreateRequest,
        timeout: Duration,
        pooled: bool,
        resume: Option<&str>,
    ) -> Result<SandboxRecord> {
        let id = new_id();
        let now = now_ms();
        let t0 = std::time::Instant::now();
        let mut rec = {
            let _guard = self.slots.lock().await;
            let rec = SandboxRecord {
                id: id.clone(),
                template: template.name.clone(),
                state: SandboxState::Starting,
                slot: self.store.free_slot()?,
                pid: None,
                pid_start: None,
                created_at_ms: now,
                expires_at_ms: if pooled {
                    i64::MAX
                } else {
                    now + timeout.as_millis() as i64
                },
                limits,
                env: req.env.clone(),
                metadata: req.metadata.clone(),
                hostname: format!("sbx-{}", &id[..8]),
                pooled,
            };
            self.store.insert(&rec)?;
            rec
        };
        if let Err(e) = self
            .apply_initial_policy(&rec, req.network_policy.as_ref())
            .await
        {
            self.store.delete(&id)?;
            return Err(e);
        }
        let policed = t0.elapsed();
        let no_new_privs = req.no_new_privs.unwrap_or(self.cfg.no_new_privs);
        let started = match resume {
            Some(snap) => {
                self.backend
                    .resume(&rec, template, no_new_privs, snap)
                    .await
            }
            None => self.backend.start(&rec, template, no_new_privs).await,
        };
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                self.store.delete(&id)?;
                return Err(e);
            }
        };
        rec.pid = Some(started.pid);
        rec.pid_start = started.pid_start;
        rec.state = SandboxState::Running;
        self.store.update(&rec)?;
        if let Err(e) = self
            .apply_started_bandwidth(&rec, req.network_policy.as_ref())
            .await
        {
            self.destroy(rec).await.ok();
            return Err(e);
        }
        if let Some(snap) = resume
            && let Err(e) = self.hand_over_resumed(&rec, snap, None).await
        {
            self.destroy(rec).await.ok();
            return Err(e);
        }
        if !rec.env.is_empty()
            && let Err(e) = self.init_agent(&id, &rec.env).await
        {
            self.destroy(rec).await.ok();
            return Err(e);
        }
        if !pooled {
            self.store.event(Some(&id), "created", "");
        }
        tracing::debug!(sandbox = %id, ?policed, total = ?t0.elapsed(), "sandbox created");
        Ok(rec)
    }

    /// Sends sandbox-wide env vars to the agent (envd's `POST /init`).
    async fn init_agent(&self, id: &str, env: &BTreeMap<String, String>) -> Result<()> {
        let body = serde_json::json!({ "envVars": env }).to_string();
        let req = http::Request::post("/init")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(body))
            .map_err(Error::internal)?;
        let resp = self.agent_of(id).send(req).await?;
        if !resp.status().is_success() {
            return Err(Error::Internal(format!(
                "agent refused env vars: {}",
                resp.status()
            )));
        }
        Ok(())
    }

    /// Refuses one more sandbox of `limits` when the storage is below its reserve or past the
    /// host's ceilings (`max_sandboxes`, `max_committed_memory`, over every sandbox a caller
    /// owns, starting ones too). Once per create or fork, before a pooled one is taken.
    fn admit(&self, limits: &Limits) -> Result<()> {
        self.check_disk_reserve()?;
        let committed_top = self
            .cfg
            .max_committed_memory
            .as_deref()
            .map(crate::model::parse_size)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("max_committed_memory: {e}")))?;
        let (owned, committed) = self.store.owned_totals()?;
        crate::limits::admission(
            owned,
            committed,
            limits.memory_bytes.unwrap_or(0),
            crate::limits::Ceilings {
                sandboxes: self.cfg.max_sandboxes,
                committed_memory: committed_top,
            },
        )
    }

    /// Refuses new sandboxes when the storage is below its reserve (`disk_reserve`).
    fn check_disk_reserve(&self) -> Result<()> {
        match self.backend.storage().free_bytes() {
            Some(free) => crate::limits::disk_admission(free, &self.cfg.disk_reserve),
            None => Ok(()),
        }
    }

    fn effective_limits(&self, asked: &Limits) -> Result<Limits> {
        crate::limits::effective(asked, &self.cfg.default_limits, &self.max_limits)
    }

    fn effective_timeout(&self, asked: Option<Duration>) -> Result<Duration> {
        let t = asked.unwrap_or(Duration::from_secs(self.cfg.default_timeout_secs));
        if t.is_zero() {
            return Err(Error::InvalidArgument("timeout must be positive".into()));
        }
        if t > Duration::from_secs(self.cfg.max_timeout_secs) {
            return Err(Error::InvalidArgument(format!(
                "timeout exceeds the maximum of {}s",
                self.cfg.max_timeout_secs
            )));
        }
        Ok(t)
    }

    /// A sandbox visible to callers (pooled and half-started ones are not).
    fn record(&self, id: &str) -> Result<SandboxRecord> {
        match self.store.get(id)? {
            Some(rec) if !rec.pooled && rec.state != SandboxState::Starting => Ok(rec),
            _ => Err(self.not_found(id)),
        }
    }

    /// The error for a sandbox callers cannot see: how it ended, when its tombstone says.
    fn not_found(&self, id: &str) -> Error {
        match self.store.tombstone(id) {
            Ok(Some((at_ms, kind, detail))) => Error::SandboxEnded {
                id: id.to_string(),
                why: format!("{} at {}", end_reason(&kind, &detail), rfc3339_ms(at_ms)),
            },
            _ => Error::SandboxNotFound(id.to_string()),
        }
    }

    /// Whether `id` is a sandbox visible to callers, as [`Runtime::info`] would find it, from
    /// the in-memory index (no database read: the MCP tools check this on every call).
    pub fn check_visible(&self, id: &str) -> Result<()> {
        self.store
            .agent_route(id)?
            .filter(|r| !r.pooled && r.state != SandboxState::Starting)
            .map(|_| ())
            .ok_or_else(|| self.not_found(id))
    }

    /// A client for the agent of a sandbox visible to callers (refused while it is paused:
    /// its agent is frozen too and would never answer). On every exec and file call: one
    /// in-memory lookup (`StateStore::agent_route`), no database read.
    pub fn agent(&self, id: &str) -> Result<AgentClient> {
        let route = self
            .store
            .agent_route(id)?
            .filter(|r| !r.pooled && r.state != SandboxState::Starting)
            .ok_or_else(|| self.not_found(id))?;
        if route.state == SandboxState::Paused {
            return Err(Error::Unavailable(format!(
                "sandbox '{id}' is paused: resume it before using it"
            )));
        }
        Ok(self
            .bounded_client(id, route.pid)
            .with_shared_access_token(route.token))
    }

    /// A client of the sandbox's agent whose calls give up when the agent is stopped or does
    /// not answer in time (`agent_deadline_secs`).
    fn bounded_client(&self, id: &str, pid: Option<i32>) -> AgentClient {
        AgentClient::new(self.backend.agent_socket(id))
            .in_netns_of(pid)
            .with_deadline(coppice_envd::deadline::Deadline {
                pid,
                head: Duration::from_secs(self.cfg.agent_deadline_secs.max(1)),
            })
    }

    /// The access token a caller must show for a sandbox's traffic, from the in-memory
    /// index (checked on every native exec and envd call over TCP); None when it has none
    /// or is not known.
    pub fn traffic_token(&self, id: &str) -> Option<std::sync::Arc<str>> {
        self.store
            .agent_route(id)
            .ok()
            .flatten()
            .and_then(|r| r.token)
    }

    /// The host's own client: carries the sandbox's access token when it has one.
    fn agent_of(&self, id: &str) -> AgentClient {
        let route = match self.store.agent_route(id) {
            Ok(route) => route,
            Err(e) => {
                tracing::warn!(sandbox = %id, "reading the access token: {e}");
                None
            }
        };
        let pid = route.as_ref().and_then(|r| r.pid);
        self.bounded_client(id, pid)
            .with_shared_access_token(route.and_then(|r| r.token))
    }

    /// What callers see of sandbox `id`; `SandboxNotFound` or `SandboxEnded` if not visible.
    pub fn info(&self, id: &str) -> Result<SandboxInfo> {
        Ok(self.info_of(&self.record(id)?))
    }

    /// Every sandbox visible to callers (not pooled, not starting), oldest first.
    pub fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self
            .store
            .all()?
            .iter()
            .filter(|r| !r.pooled && r.state != SandboxState::Starting)
            .map(|r| self.info_of(r))
            .collect())
    }

    fn info_of(&self, rec: &SandboxRecord) -> SandboxInfo {
        let unhealthy_reason = (rec.state == SandboxState::Running)
            .then(|| self.health.reason(&rec.id))
            .flatten();
        SandboxInfo {
            id: rec.id.clone(),
            template: rec.template.clone(),
            state: match unhealthy_reason {
                Some(_) => SandboxState::Unhealthy,
                None => rec.state,
            },
            unhealthy_reason,
            created_at: rfc3339_ms(rec.created_at_ms),
            expires_at: rfc3339_ms(rec.expires_at_ms.min(253_402_300_799_000)),
            limits: rec.limits.clone(),
            metadata: rec.metadata.clone(),
            env: rec.env.clone(),
            ip: self.backend.ip_of(rec.slot),
            ip6: self.backend.ip6_of(rec.slot),
            exposed: self.exposer.ports(&rec.id),
            pid: rec.pid,
            hostname: rec.hostname.clone(),
        }
    }

    /// Keeps a sandbox alive for at least `at_least` from now (capped at the maximum timeout):
    /// its lease is extended when it would end sooner, never shortened. For calls that run
    /// work in the sandbox, so the reaper does not kill it under them.
    pub fn keep_alive(&self, id: &str, at_least: Duration) -> Result<()> {
        let at_least = at_least.min(Duration::from_secs(self.cfg.max_timeout_secs));
        let mut rec = self.record(id)?;
        let until = now_ms() + at_least.as_millis() as i64;
        if rec.expires_at_ms < until {
            rec.expires_at_ms = until;
            self.store.update(&rec)?;
        }
        Ok(())
    }

    /// Extends (or shortens) a sandbox's lifetime, counted from now.
    pub fn set_timeout(&self, id: &str, timeout: Duration) -> Result<SandboxInfo> {
        let timeout = self.effective_timeout(Some(timeout))?;
        let mut rec = self.record(id)?;
        rec.expires_at_ms = now_ms() + timeout.as_millis() as i64;
        self.store.update(&rec)?;
        Ok(self.info_of(&rec))
    }

    /// Kills sandbox `id` and removes all it owns; returns once it is gone.
    pub async fn kill(&self, id: &str) -> Result<()> {
        let rec = self.record(id)?;
        self.destroy(rec).await
    }

    async fn destroy(&self, rec: SandboxRecord) -> Result<()> {
        self.teardown(rec, "killed", "").await
    }

    /// The one way a sandbox goes away (kill, reaper, failed start): each id is torn down by
    /// one caller at a time, and a caller that finds it already gone does nothing.
    async fn teardown(&self, rec: SandboxRecord, event: &str, reason: &str) -> Result<()> {
        let id = rec.id.as_str();
        let Some(_claim) = self.teardowns.take(id) else {
            // Someone else is on it: return when it is gone, as a kill promises.
            self.teardowns.wait(id).await;
            return Ok(());
        };
        if self.store.get(id)?.is_none() {
            return Ok(()); // torn down by someone else after `rec` was read
        }
        let t0 = std::time::Instant::now();
        self.pool_remove(&rec.template, id);
        self.thaw_before_destroy(&rec).await;
        self.backend.destroy(&rec).await;
        self.exposer.close(id).await;
        self.store.delete(id)?;
        self.store.forget_lifecycle(id)?;
        self.health.forget(id);
        self.store.event(Some(id), event, reason);
        tracing::debug!(sandbox = %id, event, elapsed = ?t0.elapsed(), "torn down");
        Ok(())
    }

    /// Kills expired sandboxes and forgets ones whose processes died.
    async fn reap(&self) {
        let Ok(all) = self.store.all() else { return };
        let now = now_ms();
        // A sandbox being killed looks dead (or due) too: it is not the reaper's to pause or reap.
        for rec in all
            .into_iter()
            .filter(|r| r.state != SandboxState::Starting && !self.teardowns.active(&r.id))
        {
            let mut _no_transition = None;
            let reason = if rec.state == SandboxState::Paused {
                // Paused sandboxes have no running timeout (E2B keeps them until killed or
                // resumed); their processes are frozen or on disk, not dead.
                if self.keep_paused(&rec).await {
                    continue;
                }
                self.backend.death_cause(&rec)
            } else if rec.expires_at_ms <= now {
                if self.pause_on_timeout(&rec).await {
                    continue;
                }
                "timeout"
            } else if !self.backend.alive(&rec) {
                let Some(held) = self.still_dead(&rec).await else {
                    continue;
                };
                _no_transition = Some(held);
                self.backend.death_cause(&rec)
            } else {
                continue;
            };
            tracing::info!(sandbox = %rec.id, reason, "reaping");
            let pooled = rec.pooled;
            let id = rec.id.clone();
            if let Err(e) = self.teardown(rec, "reaped", reason).await {
                tracing::warn!(sandbox = %id, "reaping: {e}");
            }
            if pooled {
                self.refill.notify_one();
            }
        }
    }

    /// Every installed template.
    pub fn list_templates(&self) -> Result<Vec<TemplateInfo>> {
        self.templates.list()
    }

    /// Host memory charged to a sandbox's cgroup.
    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        self.backend.memory_usage(id)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn one_teardown_per_id_at_a_time() {
        let t = std::sync::Arc::new(super::Teardowns::default());
        let first = t.take("a").expect("free");
        assert!(t.take("a").is_none());
        assert!(t.take("b").is_some(), "other ids are independent");
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while 'a' is being torn down");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .unwrap();
        assert!(!t.active("a"));
        assert!(t.take("a").is_some());
    }

    #[test]
    fn ids_are_e2b_shaped() {
        let id = super::new_id();
        assert_eq!(id.len(), 20);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(id, super::new_id());
    }
}
