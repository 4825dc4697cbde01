//! The agents' health (docs/security.md): every few seconds each running sandbox's agent is
//! looked at (its process state) and asked `/health` with a short timeout. One that is
//! stopped or does not answer is reported `unhealthy` with the reason until it answers again;
//! a dead one is the reaper's. Nothing is stored: a restarted daemon judges afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use coppice_envd::AgentClient;

use super::Runtime;
use crate::model::SandboxState;

/// Between two rounds of checks.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long an agent has to answer `/health`.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Reasons of the sandboxes found unhealthy, by id.
#[derive(Default)]
pub(super) struct Health {
    unhealthy: Mutex<HashMap<String, String>>,
}

impl Health {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.unhealthy.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn reason(&self, id: &str) -> Option<String> {
        self.map().get(id).cloned()
    }

    /// Records one check's verdict; true when it changed.
    fn set(&self, id: &str, reason: Option<String>) -> bool {
        let mut map = self.map();
        match reason {
            Some(r) => map.insert(id.to_string(), r.clone()).as_ref() != Some(&r),
            None => map.remove(id).is_some(),
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

impl Runtime {
    /// One round: every running sandbox's agent, concurrently.
    pub(super) async fn check_health(&self) {
        let Ok(all) = self.store.all() else { return };
        let checks = all
            .into_iter()
            .filter(|r| {
                r.state == SandboxState::Running
                    && !r.pooled
                    && !self.teardowns.active(&r.id)
                    // A memory snapshot's CRIU traces and stops its processes for a moment.
                    && !self.snap.is_busy(&r.id)
                    && self.backend.alive(r)
            })
            .map(|rec| async move {
                let client =
                    AgentClient::new(self.backend.agent_socket(&rec.id)).in_netns_of(rec.pid);
                (rec.id, verdict(rec.pid, client).await)
            });
        for (id, reason) in futures::future::join_all(checks).await {
            let now_unhealthy = reason.clone();
            if self.health.set(&id, reason) {
                match now_unhealthy {
                    Some(why) => {
                        tracing::warn!(sandbox = %id, "unhealthy: {why}");
                        self.store.event(Some(&id), "unhealthy", &why);
                    }
                    None => {
                        tracing::info!(sandbox = %id, "healthy again");
                        self.store.event(Some(&id), "healthy", "");
                    }
                }
            }
        }
    }
}

/// Why an agent is unhealthy, or None.
async fn verdict(pid: Option<i32>, client: AgentClient) -> Option<String> {
    if let Some(why) = pid.and_then(coppice_envd::deadline::stopped) {
        return Some(why.to_string());
    }
    match tokio::time::timeout(ANSWER_WITHIN, client.healthy()).await {
        Ok(true) => None,
        Ok(false) => Some("the sandbox's agent answers /health with an error".into()),
        Err(_) => Some(format!(
            "the sandbox's agent did not answer /health within {ANSWER_WITHIN:?}"
        )),
    }
}
