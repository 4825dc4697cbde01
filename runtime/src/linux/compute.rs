//! [`LinuxBackend`] behind the backend seam: each operation of [`Backend`] and [`Firewall`] is
//! the Linux backend's own (cgroups, namespaces, nftables), listed here once.

use std::path::PathBuf;

use async_trait::async_trait;

use super::backend::{LinuxBackend, Started};
use crate::backend::{Backend, Firewall, MemorySnapshotSupport, Storage};
use crate::error::Result;
use crate::model::{Limits, TemplateInfo};
use crate::policy::CheckedPolicy;
use crate::state::SandboxRecord;

#[async_trait]
impl Backend for LinuxBackend {
    async fn start(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        no_new_privs: bool,
    ) -> Result<Started> {
        LinuxBackend::start(self, rec, template, no_new_privs, None).await
    }

    async fn resume(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        no_new_privs: bool,
        snapshot: &str,
    ) -> Result<Started> {
        LinuxBackend::start(self, rec, template, no_new_privs, Some(snapshot)).await
    }

    fn dump_memory(
        &self,
        rec: &SandboxRecord,
        snapshot: &str,
        access_token: Option<String>,
    ) -> Result<u64> {
        LinuxBackend::dump_memory(self, rec, snapshot, access_token)
    }

    fn memory_access_token(&self, snapshot: &str) -> Option<String> {
        LinuxBackend::memory_access_token(self, snapshot)
    }

    fn remove_memory(&self, snapshot: &str) {
        LinuxBackend::remove_memory(self, snapshot)
    }

    async fn stop_for_restart(&self, rec: &SandboxRecord) -> Result<()> {
        LinuxBackend::stop_for_restart(self, rec).await
    }

    async fn destroy(&self, rec: &SandboxRecord) {
        LinuxBackend::destroy(self, rec).await
    }

    fn alive(&self, rec: &SandboxRecord) -> bool {
        LinuxBackend::alive(self, rec)
    }

    fn death_cause(&self, rec: &SandboxRecord) -> &'static str {
        LinuxBackend::death_cause(self, rec)
    }

    fn freeze(&self, id: &str) -> Result<()> {
        LinuxBackend::freeze(self, id)
    }

    fn thaw(&self, id: &str) -> Result<()> {
        LinuxBackend::thaw(self, id)
    }

    async fn freeze_async(&self, id: &str) -> Result<()> {
        LinuxBackend::freeze_async(self, id).await
    }

    async fn thaw_async(&self, id: &str) -> Result<()> {
        LinuxBackend::thaw_async(self, id).await
    }

    fn frozen(&self, id: &str) -> bool {
        LinuxBackend::frozen(self, id)
    }

    fn set_limits(&self, id: &str, limits: &Limits) -> Result<()> {
        LinuxBackend::set_limits(self, id, limits)
    }

    fn memory_usage(&self, id: &str) -> Option<u64> {
        LinuxBackend::memory_usage(self, id)
    }

    fn memory_cache(&self, id: &str) -> Option<u64> {
        LinuxBackend::memory_cache(self, id)
    }

    fn cpu_usage_ns(&self, id: &str) -> Option<u64> {
        LinuxBackend::cpu_usage_ns(self, id)
    }

    fn network_bytes(&self, slot: u32) -> Option<(u64, u64)> {
        LinuxBackend::network_bytes(self, slot)
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        LinuxBackend::agent_socket(self, id)
    }

    fn ip_of(&self, slot: u32) -> Option<String> {
        LinuxBackend::ip_of(self, slot)
    }

    fn ip6_of(&self, slot: u32) -> Option<String> {
        LinuxBackend::ip6_of(self, slot)
    }

    async fn sweep(&self, live: &[SandboxRecord]) {
        LinuxBackend::sweep(self, live).await
    }

    fn memory_snapshots(&self) -> MemorySnapshotSupport {
        self.criu
            .get_or_init(|| {
                super::criu::detect(&super::criu::binary(self.cfg.linux.criu.as_deref()))
            })
            .clone()
    }

    fn storage(&self) -> &dyn Storage {
        self
    }

    fn firewall(&self) -> &dyn Firewall {
        self
    }
}

#[async_trait]
impl Firewall for LinuxBackend {
    async fn apply_policy(&self, rec: &SandboxRecord, policy: &CheckedPolicy) -> Result<()> {
        LinuxBackend::apply_policy(self, rec, policy).await
    }

    async fn apply_bandwidth(&self, rec: &SandboxRecord, bps: Option<u64>) -> Result<()> {
        LinuxBackend::apply_bandwidth(self, rec, bps).await
    }
}
