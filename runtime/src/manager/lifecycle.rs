//! Pause and resume (the sandbox's cgroup frozen and thawed: processes keep their memory on
//! this host), access tokens, what a timeout does, metrics and lifecycle events.
//!
//! Timeout semantics follow E2B: a paused sandbox has no running timeout (the reaper never
//! kills it for time; it stays until it is resumed or killed); resuming starts a new timeout;
//! a sandbox created with `OnTimeout::Pause` is paused, not killed, when its timeout passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coppice_envd::AgentClient;

use super::Runtime;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::fsutil::{Measure, tree_size};
use crate::model::OnTimeout;
use crate::model::{Resumed, SandboxMetrics};
use crate::model::{SandboxInfo, SandboxState};
use crate::state::SandboxRecord;

/// The lifecycle's own state, held by the runtime.
#[derive(Default)]
pub(super) struct LifecycleState {
    /// Serialises state transitions (pause, resume, timeout changes) so a record is never
    /// rewritten from a stale read. Transitions are rare and quick.
    transitions: tokio::sync::Mutex<()>,
    /// The previous CPU sample per sandbox, so each metrics call reports use since the last
    /// one.
    cpu_samples: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Runtime {
    /// Freezes every process of a running sandbox. `AlreadyExists` when it is already paused.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo> {
        let _t = self.lifecycle.transitions.lock().await;
        let mut rec = self.record(id)?;
        self.pause_locked(&mut rec, "").await?;
        Ok(self.info_of(&rec))
    }

    async fn pause_locked(&self, rec: &mut SandboxRecord, detail: &str) -> Result<()> {
        if rec.state == SandboxState::Paused {
            return Err(Error::AlreadyExists(format!(
                "sandbox '{}' is already paused",
                rec.id
            )));
        }
        self.backend.freeze_async(&rec.id).await?;
        rec.state = SandboxState::Paused;
        if let Err(e) = self.store.update_with_event(rec, "paused", detail) {
            // Never leave a frozen sandbox that the store calls running.
            let _ = self.backend.thaw_async(&rec.id).await;
            return Err(e);
        }
        Ok(())
    }

    /// Thaws a paused sandbox and starts a new timeout (`timeout`, else the default); on a
    /// running one, moves its end later when `timeout` asks for more time than it has left.
    pub async fn resume(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(SandboxInfo, Resumed)> {
        let _t = self.lifecycle.transitions.lock().await;
        let mut rec = self.record(id)?;
        let now = now_ms();
        if rec.state != SandboxState::Paused {
            if let Some(t) = timeout {
                let end = now + self.effective_timeout(Some(t))?.as_millis() as i64;
                if end > rec.expires_at_ms {
                    rec.expires_at_ms = end;
                    self.store.update(&rec)?;
                }
            }
            return Ok((self.info_of(&rec), Resumed::WasRunning));
        }
        let timeout = self.effective_timeout(timeout)?;
        self.backend.thaw_async(&rec.id).await?;
        rec.state = SandboxState::Running;
        rec.expires_at_ms = now + timeout.as_millis() as i64;
        self.store.update_with_event(&rec, "resumed", "")?;
        Ok((self.info_of(&rec), Resumed::Thawed))
    }

    /// At the timeout: pauses the sandbox instead of killing it when it asked for that.
    /// Returns true when it was paused (the reaper then leaves it).
    pub(super) async fn pause_on_timeout(&self, rec: &SandboxRecord) -> bool {
        if rec.pooled || !matches!(self.store.on_timeout(&rec.id), Ok(OnTimeout::Pause)) {
            return false;
        }
        let _t = self.lifecycle.transitions.lock().await;
        let Ok(Some(mut current)) = self.store.get(&rec.id) else {
            return false;
        };
        if current.expires_at_ms > now_ms() || current.state == SandboxState::Paused {
            return true; // extended or paused meanwhile: nothing to reap
        }
        match self.pause_locked(&mut current, "timeout").await {
            Ok(()) => {
                tracing::info!(sandbox = %rec.id, "paused at its timeout");
                true
            }
            Err(e) => {
                tracing::warn!(sandbox = %rec.id, "pausing at the timeout failed, killing: {e}");
                false
            }
        }
    }

    /// Thaws a paused sandbox's processes so that they can be killed at once.
    pub(super) async fn thaw_before_destroy(&self, rec: &SandboxRecord) {
        if (rec.state == SandboxState::Paused || self.backend.frozen(&rec.id))
            && let Err(e) = self.backend.thaw_async(&rec.id).await
        {
            tracing::warn!(sandbox = %rec.id, "thawing before kill: {e}");
        }
    }

    /// Makes the sandbox's agent require `token` (envd's `X-Access-Token`) from now on; the
    /// host's own calls carry it automatically.
    pub async fn set_access_token(&self, id: &str, token: &str) -> Result<()> {
        if token.is_empty() {
            return Err(Error::InvalidArgument("empty access token".into()));
        }
        self.record(id)?;
        let body = serde_json::json!({ "accessToken": token }).to_string();
        let req = http::Request::post("/init")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(body))
            .map_err(Error::internal)?;
        // Sent with the previous token (if any): the agent only accepts a change from a caller
        // that holds the current one.
        let resp = self.agent_of(id).send(req).await?;
        if !resp.status().is_success() {
            return Err(Error::Internal(format!(
                "agent refused the access token: {}",
                resp.status()
            )));
        }
        self.store.set_access_token(id, token)
    }

    /// The agent access token of visible sandbox `id`, if it has one.
    pub fn access_token(&self, id: &str) -> Result<Option<String>> {
        self.record(id)?;
        self.store.access_token(id)
    }

    /// Sets what the reaper does at visible sandbox `id`'s timeout.
    pub fn set_on_timeout(&self, id: &str, on: OnTimeout) -> Result<()> {
        self.record(id)?;
        self.store.set_on_timeout(id, on)
    }

    /// What the reaper does at sandbox `id`'s timeout (kill unless set otherwise).
    pub fn on_timeout(&self, id: &str) -> Result<OnTimeout> {
        self.store.on_timeout(id)
    }

    /// A client for proxying outside callers' requests to a sandbox's agent: it adds no
    /// credentials (the caller's own `X-Access-Token` is what the agent checks). A sandbox
    /// without a token is reached this way only when E2B made it with `secure: false`;
    /// any other (made by the native API or MCP) would otherwise be open to anyone who can
    /// reach the port and learn its id.
    pub fn agent_for_proxy(&self, id: &str) -> Result<AgentClient> {
        let client = self.agent(id)?;
        if self.traffic_token(id).is_none() && !self.store.open_traffic(id)? {
            return Err(Error::PermissionDenied(format!(
                "sandbox '{id}' has no envd access token: connect to it through the E2B API \
                 (Sandbox.connect) to get one"
            )));
        }
        Ok(client.with_shared_access_token(None))
    }

    /// Opens a sandbox's E2B sandbox traffic to callers without a token (E2B's
    /// `secure: false`).
    pub fn set_open_traffic(&self, id: &str) -> Result<()> {
        self.record(id)?;
        self.store.set_open_traffic(id)
    }

    /// Whether a sandbox's E2B traffic is open without a token.
    pub fn open_traffic(&self, id: &str) -> Result<bool> {
        self.store.open_traffic(id)
    }

    /// True when the sandbox exists for callers and is paused.
    pub fn is_paused(&self, id: &str) -> Result<bool> {
        Ok(self.record(id)?.state == SandboxState::Paused)
    }

    /// A resource sample of the sandbox, now.
    pub async fn metrics(&self, id: &str) -> Result<SandboxMetrics> {
        let rec = self.record(id)?;
        let cpus = rec.limits.cpus.unwrap_or(1.0);
        let cpu_count = (cpus.ceil() as u32).max(1);
        let now = Instant::now();
        let used_ns = self.backend.cpu_usage_ns(id).unwrap_or(0);
        let (since, prev_ns) = {
            let mut guard = self
                .lifecycle
                .cpu_samples
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let map = &mut *guard;
            let created = Duration::from_millis((now_ms() - rec.created_at_ms).max(1) as u64);
            let prev = map
                .insert(id.to_string(), (now, used_ns))
                .unwrap_or((now.checked_sub(created).unwrap_or(now), 0));
            // Forget sandboxes that are gone, so the map does not grow forever.
            if map.len() > 4096 {
                map.clear();
            }
            prev
        };
        let wall_ns = now.duration_since(since).as_nanos().max(1) as f64;
        let pct = (used_ns.saturating_sub(prev_ns) as f64 / wall_ns) * 100.0 / cpus.max(0.01);
        let upper = self.backend.storage().upper_dir(id);
        let disk_total = self.backend.storage().total_bytes().unwrap_or(0);
        let disk_used = tokio::task::spawn_blocking(move || tree_size(&upper, Measure::Allocated))
            .await
            .map_err(Error::internal)?;
        Ok(SandboxMetrics {
            at_ms: now_ms(),
            cpu_count,
            cpu_used_pct: (pct * 100.0).round() / 100.0,
            mem_used: self.backend.memory_usage(id).unwrap_or(0),
            mem_total: rec.limits.memory_bytes.unwrap_or(0),
            mem_cache: self.backend.memory_cache(id).unwrap_or(0),
            disk_used,
            disk_total: rec
                .limits
                .disk_bytes
                .filter(|_| self.backend.storage().has_disk_limits())
                .unwrap_or(disk_total),
        })
    }

    /// Lifecycle events of a sandbox (created, paused, resumed, ...), oldest first.
    pub fn events(
        &self,
        id: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, String)>> {
        self.record(id)?;
        self.store.events_of(id, since_ms, limit)
    }
}
