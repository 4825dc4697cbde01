//! Pause and resume in two tiers (docs/decisions/0013-durable-pause.md).
//!
//! A memory pause freezes the sandbox's cgroup (the hot tier: processes stay in memory and a
//! resume is a thaw) and, where the host has CRIU, first writes a memory checkpoint to disk
//! (the durable tier). A sandbox paused longer than `pause_in_memory_secs` leaves memory: its
//! processes are stopped and a resume brings them back from the checkpoint, as it does after
//! a daemon restart that found them gone (a host reboot). A filesystem pause keeps the files
//! only: the processes stop at once and a resume boots the sandbox afresh on them.
//!
//! Timeout semantics follow E2B: a paused sandbox has no running timeout (the reaper never
//! kills it for time; it stays until it is resumed or killed); resuming starts a new timeout;
//! a sandbox created with `OnTimeout::Pause` is paused, not killed, when its timeout passes.

use std::time::Duration;

use super::Runtime;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::model::{OnTimeout, PauseKind, Resumed, SandboxInfo, SandboxState};
use crate::state::SandboxRecord;

impl Runtime {
    /// Pauses a running sandbox, keeping its memory or only its files. `AlreadyExists` when
    /// it is already paused.
    pub async fn pause(&self, id: &str, kind: PauseKind) -> Result<SandboxInfo> {
        let _t = self.lifecycle.transitions.lock().await;
        let mut rec = self.record(id)?;
        self.pause_locked(&mut rec, kind, "").await?;
        Ok(self.info_of(&rec))
    }

    async fn pause_locked(
        &self,
        rec: &mut SandboxRecord,
        kind: PauseKind,
        why: &str,
    ) -> Result<()> {
        if rec.state == SandboxState::Paused {
            return Err(Error::AlreadyExists(format!(
                "sandbox '{}' is already paused",
                rec.id
            )));
        }
        // The checkpoint is taken with the sandbox frozen and leaves it frozen.
        let tier = match kind {
            PauseKind::Filesystem => {
                let c = self.take_checkpoint(&rec.id, kind).await?;
                format!("files only, checkpoint {}", c.snapshot)
            }
            PauseKind::Memory => {
                let support = self.backend.memory_snapshots();
                let c = if support.available {
                    self.take_checkpoint(&rec.id, kind).await.map_err(|e| {
                        tracing::warn!(sandbox = %rec.id, "memory checkpoint failed, pausing in memory only: {e}");
                        e.to_string()
                    })
                } else {
                    Err(support.reason)
                };
                match c {
                    Ok(c) => format!("memory, checkpoint {}", c.snapshot),
                    Err(reason) => {
                        self.backend.freeze_async(&rec.id).await?;
                        format!("memory, in memory only ({reason})")
                    }
                }
            }
        };
        if kind == PauseKind::Filesystem {
            self.stop_paused(rec).await;
        }
        rec.state = SandboxState::Paused;
        let detail = if why.is_empty() {
            tier
        } else {
            format!("{why}; {tier}")
        };
        if let Err(e) = self.store.update_with_event(rec, "paused", &detail) {
            // Never leave a frozen sandbox that the store calls running.
            if kind == PauseKind::Memory {
                let _ = self.backend.thaw_async(&rec.id).await;
            }
            let _ = self.store.set_checkpoint(&rec.id, None);
            return Err(e);
        }
        Ok(())
    }

    /// Stops a paused sandbox's processes (its checkpoint holds what it needs to resume).
    pub(super) async fn stop_paused(&self, rec: &mut SandboxRecord) {
        if let Err(e) = self.backend.stop_for_restart(rec).await {
            // What is left is removed again when it resumes or is killed.
            tracing::warn!(sandbox = %rec.id, "stopping a paused sandbox's processes: {e}");
        }
        rec.pid = None;
        rec.pid_start = None;
    }

    /// Resumes a paused sandbox with a fresh timeout (`timeout`, else the default): a thaw
    /// while its processes are in memory, else from its checkpoint. On a running one, moves
    /// its end later when `timeout` asks for more time than it has left.
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
        let checkpoint = self.store.checkpoint(id)?;
        let (how, detail) = if self.backend.alive(&rec) {
            self.backend.thaw_async(&rec.id).await?;
            (Resumed::Thawed, "from memory".to_string())
        } else if let Some(c) = &checkpoint {
            if let Err(e) = self.resume_from_checkpoint(&mut rec, c).await {
                // Still paused, its checkpoint kept: a later resume may succeed.
                self.stop_paused(&mut rec).await;
                rec.state = SandboxState::Paused;
                self.store.update(&rec)?;
                return Err(Error::Internal(format!(
                    "resuming sandbox '{id}' from its checkpoint failed (it stays paused): {e}"
                )));
            }
            let detail = match c.kind {
                PauseKind::Memory => format!("from checkpoint {}", c.snapshot),
                PauseKind::Filesystem => {
                    format!("booted on the files of checkpoint {}", c.snapshot)
                }
            };
            (Resumed::Restored, detail)
        } else {
            return Err(Error::FailedPrecondition(format!(
                "sandbox '{id}' was paused in memory only and its processes are gone (the \
                 host restarted); it cannot be resumed: kill it"
            )));
        };
        if checkpoint.is_some() {
            self.store.set_checkpoint(id, None)?;
        }
        rec.state = SandboxState::Running;
        rec.expires_at_ms = now + timeout.as_millis() as i64;
        self.store.update_with_event(&rec, "resumed", &detail)?;
        Ok((self.info_of(&rec), how))
    }

    /// Resumes a paused sandbox that traffic is trying to reach, when it was made to resume
    /// so (E2B's autoResume); false when it was not paused or does not.
    pub async fn resume_for_traffic(&self, id: &str) -> Result<bool> {
        // On every proxied request: the in-memory route, no database read, while it runs.
        let paused = self
            .store
            .agent_route(id)?
            .is_some_and(|r| r.state == SandboxState::Paused && !r.pooled);
        if !paused {
            return Ok(false);
        }
        let settings = self.store.pause_settings(id)?;
        if !settings.auto_resume {
            return Ok(false);
        }
        let timeout = settings.resume_timeout_secs.map(Duration::from_secs);
        self.resume(id, timeout).await?;
        Ok(true)
    }

    /// At the timeout: pauses the sandbox instead of killing it when it asked for that.
    /// Returns true when it was paused (the reaper then leaves it).
    pub(super) async fn pause_on_timeout(&self, rec: &SandboxRecord) -> bool {
        if rec.pooled || !matches!(self.store.on_timeout(&rec.id), Ok(OnTimeout::Pause)) {
            return false;
        }
        let kind = self
            .store
            .pause_settings(&rec.id)
            .map(|s| s.timeout_pause)
            .unwrap_or_default();
        let _t = self.lifecycle.transitions.lock().await;
        let Ok(Some(mut current)) = self.store.get(&rec.id) else {
            return false;
        };
        if current.expires_at_ms > now_ms() || current.state == SandboxState::Paused {
            return true; // extended or paused meanwhile: nothing to reap
        }
        match self.pause_locked(&mut current, kind, "timeout").await {
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

    /// What the reaper does with a paused sandbox: false when it is to be reaped (its
    /// processes died and no checkpoint can bring them back). One paused in memory for longer
    /// than `pause_in_memory_secs` with a checkpoint on disk leaves memory here.
    pub(super) async fn keep_paused(&self, rec: &SandboxRecord) -> bool {
        let checkpoint = self.store.checkpoint(&rec.id).ok().flatten();
        if !self.backend.alive(rec) {
            return checkpoint.is_some();
        }
        let Some(c) = checkpoint else { return true };
        let hot_for = now_ms() - c.paused_at_ms;
        if c.kind != PauseKind::Memory
            || hot_for < (self.cfg.pause_in_memory_secs as i64).saturating_mul(1000)
        {
            return true;
        }
        let _t = self.lifecycle.transitions.lock().await;
        // Resumed or killed meanwhile: not ours to stop.
        let Ok(Some(mut current)) = self.store.get(&rec.id) else {
            return true;
        };
        if current.state != SandboxState::Paused || current.pid != rec.pid {
            return true;
        }
        self.stop_paused(&mut current).await;
        if let Err(e) = self.store.update_with_event(
            &current,
            "paused-to-disk",
            &format!(
                "left memory after {} s; checkpoint {}",
                hot_for / 1000,
                c.snapshot
            ),
        ) {
            tracing::warn!(sandbox = %rec.id, "recording that it left memory: {e}");
        }
        true
    }

    /// For the reaper: a sandbox it read as running whose processes are gone is dead only if it
    /// still runs now; a pause, restore or resume since stopped them on purpose. Returns the
    /// transitions lock, held so that none starts before its teardown; None when not dead.
    pub(super) async fn still_dead(
        &self,
        rec: &SandboxRecord,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let held = self.lifecycle.transitions.lock().await;
        match self.store.get(&rec.id) {
            Ok(Some(now))
                if now.state == SandboxState::Running
                    && now.pid == rec.pid
                    && !self.backend.alive(&now) =>
            {
                Some(held)
            }
            _ => None,
        }
    }

    /// Thaws a paused sandbox's processes so that they can be killed at once.
    pub(super) async fn thaw_before_destroy(&self, rec: &SandboxRecord) {
        if (rec.state == SandboxState::Paused || self.backend.frozen(&rec.id))
            && self.backend.alive(rec)
            && let Err(e) = self.backend.thaw_async(&rec.id).await
        {
            tracing::warn!(sandbox = %rec.id, "thawing before kill: {e}");
        }
    }

    /// True when the sandbox exists for callers and is paused.
    pub fn is_paused(&self, id: &str) -> Result<bool> {
        Ok(self.record(id)?.state == SandboxState::Paused)
    }
}
