//! Access tokens, what a timeout does and how a pause behaves, metrics and lifecycle events
//! (pause and resume themselves: manager/pause.rs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coppice_envd::AgentClient;

use super::Runtime;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::fsutil::{Measure, tree_size};
use crate::model::OnTimeout;
use crate::model::SandboxMetrics;
use crate::state::ingress::Ingress;
use crate::state::pause::PauseSettings;

/// The lifecycle's own state, held by the runtime.
#[derive(Default)]
pub(super) struct LifecycleState {
    /// Serialises state transitions (pause, resume, timeout changes) so a record is never
    /// rewritten from a stale read. Transitions are rare and quick.
    pub(super) transitions: tokio::sync::Mutex<()>,
    /// The previous CPU sample per sandbox, so each metrics call reports use since the last
    /// one.
    cpu_samples: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Runtime {
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

    /// Sets how visible sandbox `id` pauses at its timeout and whether traffic resumes it.
    pub fn set_pause_settings(&self, id: &str, settings: &PauseSettings) -> Result<()> {
        self.record(id)?;
        self.store.set_pause_settings(id, settings)
    }

    /// How sandbox `id` pauses at its timeout and whether traffic resumes it.
    pub fn pause_settings(&self, id: &str) -> Result<PauseSettings> {
        self.store.pause_settings(id)
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

    /// Sets who may reach the sandbox's own ports and the Host header they carry in.
    pub fn set_ingress(&self, id: &str, ingress: &Ingress) -> Result<()> {
        self.record(id)?;
        self.store.set_ingress(id, ingress)
    }

    /// Who may reach the sandbox's own ports (SandboxNotFound for an unknown id).
    pub fn ingress(&self, id: &str) -> Result<Ingress> {
        self.record(id)?;
        self.store.ingress(id)
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
