//! Pause/resume, access tokens, what a timeout does, metrics and lifecycle events: the typed
//! layer under the E2B control plane (and any surface that wants them).

use std::time::Duration;

use coppice_runtime::model::OnTimeout;
use coppice_runtime::model::SandboxInfo;
use coppice_runtime::model::{PauseKind, Resumed, SandboxMetrics};
use coppice_runtime::state::pause::PauseSettings;
use serde::{Deserialize, Serialize};

use crate::{Result, Tools};

/// Pause a running sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseSandbox {
    /// "memory" (default): its processes keep their memory, frozen, and (where the host has
    /// CRIU) checkpointed to disk so that the pause survives a restart; "filesystem": only
    /// its files are kept, its processes stop and a resume boots it afresh.
    #[serde(default)]
    pub kind: PauseKind,
}

/// Resume a paused sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeSandbox {
    /// Its new lifetime in seconds; omitted: the daemon's default.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// A resumed sandbox and how it came back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumedSandbox {
    /// The sandbox, running.
    #[serde(flatten)]
    pub sandbox: SandboxInfo,
    /// "thawed" (from memory), "restored" (from its on-disk checkpoint) or "was_running".
    pub resumed: Resumed,
}

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
    /// Pauses the sandbox as `req` asks. `AlreadyExists` when already paused.
    pub async fn pause_sandbox(&self, id: &str, req: PauseSandbox) -> Result<SandboxInfo> {
        self.rt.pause(id, req.kind).await
    }

    /// Resumes a paused sandbox with a fresh timeout, or extends a running one's timeout
    /// when `timeout` reaches further; says which happened.
    pub async fn resume_sandbox(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(SandboxInfo, Resumed)> {
        self.rt.resume(id, timeout).await
    }

    /// [`Self::resume_sandbox`] for a typed request.
    pub async fn resume(&self, id: &str, req: ResumeSandbox) -> Result<ResumedSandbox> {
        let timeout = req.timeout_secs.map(crate::sandboxes::secs).transpose()?;
        let (sandbox, resumed) = self.resume_sandbox(id, timeout).await?;
        Ok(ResumedSandbox { sandbox, resumed })
    }

    /// Resumes a paused sandbox that traffic is trying to reach, when it was made to resume
    /// so (E2B's autoResume); false when it was not paused or does not.
    pub async fn resume_for_traffic(&self, id: &str) -> Result<bool> {
        self.rt.resume_for_traffic(id).await
    }

    /// Sets how the sandbox pauses at its timeout and whether traffic resumes it.
    pub fn set_pause_settings(&self, id: &str, settings: &PauseSettings) -> Result<()> {
        self.rt.set_pause_settings(id, settings)
    }

    /// How the sandbox pauses at its timeout and whether traffic resumes it.
    pub fn pause_settings(&self, id: &str) -> Result<PauseSettings> {
        self.rt.pause_settings(id)
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
            OnTimeout::Pause => match self
                .rt
                .pause(id, self.pause_settings(id)?.timeout_pause)
                .await
            {
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
