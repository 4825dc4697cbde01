//! Network policy tools: read and replace a sandbox's egress policy while it runs. The model
//! (and its validation and JSON schema) is [`coppice_runtime::policy::NetworkPolicy`].
//!
//! Surfaces: MCP `network_policy_get` / `network_policy_set`, `GET|PUT
//! /api/v1/sandboxes/{id}/network`, `coppice network get|set`, and `CreateSandbox::network_policy`
//! at create time. E2B's fields map onto the same model: `allow_internet_access`,
//! `network.allowOut` and `network.denyOut` at create time go through
//! [`e2b_network_policy`] into `CreateSandbox::network_policy`, and `PUT
//! /sandboxes/{id}/network` is [`Tools::set_network_e2b`].

pub use coppice_runtime::policy::{DefaultAction, NetworkPolicy, Port, Protocol, Rule};
use serde::{Deserialize, Serialize};

use crate::{Result, Tools};

/// A sandbox's policy as every surface reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NetworkPolicyInfo {
    /// The sandbox the policy belongs to.
    pub sandbox_id: String,
    /// The policy in force (the default one, `{"default":"allow"}`, unless set).
    pub policy: NetworkPolicy,
}

/// E2B's network fields as the policy they mean (see [`NetworkPolicy::from_e2b`]):
/// `allow_internet_access: false` is air-gapped; `allowOut` beats `denyOut`.
pub fn e2b_network_policy(
    allow_internet_access: Option<bool>,
    allow_out: &[String],
    deny_out: &[String],
) -> Result<NetworkPolicy> {
    NetworkPolicy::from_e2b(allow_internet_access, allow_out, deny_out)
}

impl Tools {
    /// The sandbox's network policy in force.
    pub fn network_policy(&self, id: &str) -> Result<NetworkPolicyInfo> {
        Ok(NetworkPolicyInfo {
            sandbox_id: id.to_string(),
            policy: self.rt.network_policy(id)?,
        })
    }

    /// Replaces the policy atomically; connections it no longer permits are cut.
    pub async fn set_network_policy(
        &self,
        id: &str,
        policy: NetworkPolicy,
    ) -> Result<NetworkPolicyInfo> {
        Ok(NetworkPolicyInfo {
            sandbox_id: id.to_string(),
            policy: self.rt.set_network_policy(id, policy).await?,
        })
    }

    /// E2B's `PUT /sandboxes/{id}/network` (allowOut / denyOut / allow_internet_access).
    pub async fn set_network_e2b(
        &self,
        id: &str,
        allow_internet_access: Option<bool>,
        allow_out: &[String],
        deny_out: &[String],
    ) -> Result<NetworkPolicyInfo> {
        let policy = e2b_network_policy(allow_internet_access, allow_out, deny_out)?;
        self.set_network_policy(id, policy).await
    }
}
