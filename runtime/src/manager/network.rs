//! The runtime's side of network policy: validate, put in force, persist, re-apply after a
//! restart. The policy model and compiler are in [`crate::policy`]; the kernel work is the
//! backend's.

use crate::error::{Error, Result};
use crate::policy::NetworkPolicy;
use crate::state::SandboxRecord;

use super::Runtime;

impl Runtime {
    /// The policy of a sandbox visible to callers (the default one when none was set).
    pub fn network_policy(&self, id: &str) -> Result<NetworkPolicy> {
        self.record(id)?;
        Ok(self.store.network_policy(id)?.unwrap_or_default())
    }

    /// Replaces a running sandbox's policy: validated first (bad input changes nothing), stored,
    /// then swapped in by one kernel transaction; open connections it no longer permits are cut.
    pub async fn set_network_policy(
        &self,
        id: &str,
        policy: NetworkPolicy,
    ) -> Result<NetworkPolicy> {
        let started = std::time::Instant::now();
        let checked = policy.check()?;
        let _serial = self.policy_lock.lock().await;
        let rec = self.record(id)?;
        let old = self.store.network_policy(id)?;
        // New listeners are bound first: a host port in use fails here, changing nothing.
        let policy = self.sync_exposed(&rec, policy).await?;
        let restore_exposed = || async {
            let old_expose = old.as_ref().map(|p| p.expose.clone()).unwrap_or_default();
            if let Err(e) = self.sync_exposed_list(&rec, &old_expose).await {
                tracing::warn!(sandbox = %rec.id, "restoring its exposed ports: {e}");
            }
        };
        let old_bps = old
            .clone()
            .unwrap_or_default()
            .check()
            .ok()
            .and_then(|c| c.bandwidth_bps);
        self.store.set_network_policy(id, Some(&policy))?;
        if old_bps != checked.bandwidth_bps
            && let Err(e) = self
                .backend
                .firewall()
                .apply_bandwidth(&rec, checked.bandwidth_bps)
                .await
        {
            self.store.set_network_policy(id, old.as_ref())?;
            let _ = self.backend.firewall().apply_bandwidth(&rec, old_bps).await;
            restore_exposed().await;
            return Err(e);
        }
        if let Err(e) = self.backend.firewall().apply_policy(&rec, &checked).await {
            // The kernel kept the old rules: keep the store (and the cap) in step with them.
            self.store.set_network_policy(id, old.as_ref())?;
            if old_bps != checked.bandwidth_bps {
                let _ = self.backend.firewall().apply_bandwidth(&rec, old_bps).await;
            }
            restore_exposed().await;
            return Err(e);
        }
        self.store.event(Some(id), "network_policy", "updated");
        self.telemetry.policy_updated(started.elapsed());
        Ok(policy)
    }

    /// Puts a new sandbox's first policy in force before it starts (so nothing it runs ever
    /// sees a looser one) and records it.
    pub(super) async fn apply_initial_policy(
        &self,
        rec: &SandboxRecord,
        policy: Option<&NetworkPolicy>,
    ) -> Result<()> {
        let checked = policy.cloned().unwrap_or_default().check()?;
        self.backend.firewall().apply_policy(rec, &checked).await?;
        // A pooled sandbox being handed out is already running: cap it now. A new one is
        // capped by `apply_started_bandwidth` once its veth exists.
        if rec.pid.is_some() && checked.bandwidth_bps.is_some() {
            self.backend
                .firewall()
                .apply_bandwidth(rec, checked.bandwidth_bps)
                .await?;
        }
        let resolved = match policy {
            Some(p) if !p.expose.is_empty() => Some(self.sync_exposed(rec, p.clone()).await?),
            other => other.cloned(),
        };
        self.store.set_network_policy(&rec.id, resolved.as_ref())
    }

    /// Opens and closes host listeners so that exactly `policy.expose` is exposed; returns
    /// the policy with the host ports filled in (what is stored and reported).
    async fn sync_exposed(
        &self,
        rec: &SandboxRecord,
        mut policy: NetworkPolicy,
    ) -> Result<NetworkPolicy> {
        policy.expose = self.sync_exposed_list(rec, &policy.expose).await?;
        Ok(policy)
    }

    async fn sync_exposed_list(
        &self,
        rec: &SandboxRecord,
        expose: &[crate::policy::Expose],
    ) -> Result<Vec<crate::policy::Expose>> {
        let target = match self.backend.ip_of(rec.slot) {
            Some(ip) => ip.parse().map_err(Error::internal)?,
            None if expose.is_empty() => return Ok(vec![]),
            None => {
                return Err(Error::FailedPrecondition(
                    "sandboxes have no network on this daemon (started with --no-network): \
                     nothing can be exposed"
                        .into(),
                ));
            }
        };
        self.exposer.sync(&rec.id, target, expose).await
    }

    /// The bandwidth cap of a sandbox that has just started (its veth exists now).
    pub(super) async fn apply_started_bandwidth(
        &self,
        rec: &SandboxRecord,
        policy: Option<&NetworkPolicy>,
    ) -> Result<()> {
        let checked = policy.map(|p| p.check()).transpose()?;
        match checked.and_then(|c| c.bandwidth_bps) {
            Some(bps) => {
                self.backend
                    .firewall()
                    .apply_bandwidth(rec, Some(bps))
                    .await
            }
            None => Ok(()),
        }
    }

    /// After a restart: every surviving sandbox gets its stored policy again (the kernel's
    /// copy survives a daemon restart, but not a reboot of the table or a new daemon version).
    pub(super) async fn reapply_policies(&self, live: &[SandboxRecord]) {
        for rec in live {
            let policy = match self.store.network_policy(&rec.id) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(sandbox = %rec.id, "reading its network policy: {e}");
                    continue;
                }
            };
            let applied = match policy.check() {
                Ok(checked) => match self.backend.firewall().apply_policy(rec, &checked).await {
                    Ok(()) if checked.bandwidth_bps.is_some() => {
                        self.backend
                            .firewall()
                            .apply_bandwidth(rec, checked.bandwidth_bps)
                            .await
                    }
                    other => other,
                },
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                tracing::warn!(sandbox = %rec.id, "re-applying its network policy: {e}");
            }
            if !policy.expose.is_empty()
                && let Err(e) = self.sync_exposed_list(rec, &policy.expose).await
            {
                tracing::warn!(sandbox = %rec.id, "listening for its exposed ports again: {e}");
            }
        }
    }
}
