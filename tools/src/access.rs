//! What the surfaces' proxies and sessions need of a sandbox besides the tools: its agent
//! connection, its traffic credentials and the daemon's defaults. The runtime itself stays
//! behind the tool layer.

use std::sync::Arc;
use std::time::Duration;

use coppice_envd::AgentClient;
use coppice_runtime::state::ingress::Ingress;

use crate::{Result, Tools};

/// The daemon's settings a surface shows or applies.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Lifetime of a sandbox created without a timeout.
    pub sandbox_timeout_secs: u64,
    /// Whether sandboxes get a network at all.
    pub network: bool,
}

impl Tools {
    /// The daemon's defaults a surface shows or applies.
    pub fn defaults(&self) -> Defaults {
        let cfg = self.rt.config();
        Defaults {
            sandbox_timeout_secs: cfg.default_timeout_secs,
            network: cfg.network,
        }
    }

    /// The sandbox's agent, for surfaces that forward requests to it unchanged.
    pub fn agent(&self, id: &str) -> Result<AgentClient> {
        self.rt.agent(id)
    }

    /// The agent, for the public traffic proxy: only sandboxes with a token or open traffic.
    pub fn agent_for_proxy(&self, id: &str) -> Result<AgentClient> {
        self.rt.agent_for_proxy(id)
    }

    /// The token the sandbox's traffic must carry, if it has one.
    pub fn traffic_token(&self, id: &str) -> Option<Arc<str>> {
        self.rt.traffic_token(id)
    }

    /// Whether the sandbox's traffic needs no token (E2B's `secure: false`).
    pub fn open_traffic(&self, id: &str) -> Result<bool> {
        self.rt.open_traffic(id)
    }

    /// Who may reach the sandbox's own ports, and the Host header they carry in.
    pub fn ingress(&self, id: &str) -> Result<Ingress> {
        self.rt.ingress(id)
    }

    /// Where surfaces record what they serve (MCP tool calls, E2B requests) for `/metrics`.
    pub fn telemetry(&self) -> &coppice_runtime::metrics::Metrics {
        self.rt.telemetry()
    }

    /// The daemon's metrics, in OpenMetrics text (`GET /metrics`).
    pub async fn metrics_text(&self) -> String {
        self.rt.metrics_text().await
    }

    /// Whether the sandbox is paused (its traffic waits for a resume).
    pub fn is_paused(&self, id: &str) -> Result<bool> {
        self.rt.is_paused(id)
    }

    /// `Ok` when the sandbox exists and callers may see it (not pooled, not half-started).
    pub fn check_visible(&self, id: &str) -> Result<()> {
        self.rt.check_visible(id)
    }

    /// Keeps a sandbox in use alive for the default lifetime from now (never shortens it).
    pub fn touch_sandbox(&self, id: &str) -> Result<()> {
        let secs = self.rt.config().default_timeout_secs;
        self.rt.keep_alive(id, Duration::from_secs(secs))
    }
}
