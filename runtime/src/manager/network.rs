//! The runtime's side of network policy: validate, put in force, persist, re-apply after a
//! restart. The policy model and compiler are in [`crate::policy`]; the kernel work is the
//! backend's.

use crate::error::Result;
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
        let checked = policy.check()?;
        let _serial = self.policy_lock.lock().await;
        let rec = self.record(id)?;
        let old = self.store.network_policy(id)?;
        self.store.set_network_policy(id, Some(&policy))?;
        if let Err(e) = self.backend.apply_policy(rec.slot, &checked).await {
            // The kernel kept the old policy: keep the store in step with it.
            self.store.set_network_policy(id, old.as_ref())?;
            return Err(e);
        }
        self.store.event(Some(id), "network_policy", "updated");
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
        self.backend.apply_policy(rec.slot, &checked).await?;
        self.store.set_network_policy(&rec.id, policy)
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
                Ok(checked) => self.backend.apply_policy(rec.slot, &checked).await,
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                tracing::warn!(sandbox = %rec.id, "re-applying its network policy: {e}");
            }
        }
    }
}
