//! Pause/resume, access tokens, what a timeout does, metrics and lifecycle events: the typed
//! layer under the E2B control plane (and any surface that wants them).

use std::time::Duration;

use coppice_runtime::model::OnTimeout;
use coppice_runtime::model::SandboxInfo;
use coppice_runtime::model::{Resumed, SandboxMetrics};

use crate::{Result, Tools};

/// One lifecycle event of a sandbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SandboxEvent {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// What happened, e.g. "created", "paused", "killed".
    pub kind: String,
    /// Details (a reason, a snapshot id), possibly empty.
    pub detail: String,
}

impl Tools {
    /// Freezes the sandbox's processes (memory kept). `AlreadyExists` when already paused.
    pub async fn pause_sandbox(&self, id: &str) -> Result<SandboxInfo> {
        self.rt.pause(id).await
    }

    /// Thaws a paused sandbox with a fresh timeout, or extends a running one's timeout when
    /// `timeout` reaches further; says which happened.
    pub async fn resume_sandbox(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(SandboxInfo, Resumed)> {
        self.rt.resume(id, timeout).await
    }

    /// Sets the token the sandbox's traffic (envd, ports) must carry.
    pub async fn set_access_token(&self, id: &str, token: &str) -> Result<()> {
        self.rt.set_access_token(id, token).await
    }

    /// The sandbox's traffic token, if it has one.
    pub fn access_token(&self, id: &str) -> Result<Option<String>> {
        self.rt.access_token(id)
    }

    /// Ends the sandbox's running time now: does what its timeout would (kills it, or pauses
    /// it when its timeout pauses; a paused sandbox stays paused).
    pub async fn end_running_time(&self, id: &str) -> Result<()> {
        match self.rt.on_timeout(id)? {
            OnTimeout::Kill => self.rt.kill(id).await,
            OnTimeout::Pause => match self.rt.pause(id).await {
                Ok(_) | Err(coppice_runtime::Error::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Sets what the sandbox's timeout does: kill or pause.
    pub fn set_on_timeout(&self, id: &str, on: OnTimeout) -> Result<()> {
        self.rt.set_on_timeout(id, on)
    }

    /// What the sandbox's timeout does.
    pub fn on_timeout(&self, id: &str) -> Result<OnTimeout> {
        self.rt.on_timeout(id)
    }

    /// CPU, memory and disk use of a sandbox.
    pub async fn sandbox_metrics(&self, id: &str) -> Result<SandboxMetrics> {
        self.rt.metrics(id).await
    }

    /// The sandbox's lifecycle events since `since_ms` (Unix ms), oldest first, at most `limit`.
    pub fn sandbox_events(&self, id: &str, since_ms: i64, limit: u32) -> Result<Vec<SandboxEvent>> {
        Ok(self
            .rt
            .events(id, since_ms, limit)?
            .into_iter()
            .map(|(at_ms, kind, detail)| SandboxEvent {
                at_ms,
                kind,
                detail,
            })
            .collect())
    }
}
