//! MCP tools for network policy: `network_policy_get` and `network_policy_set`, thin adapters
//! over `coppice_tools::network`.

use coppice_runtime::Error;
use coppice_tools::network::{NetworkPolicy, NetworkPolicyInfo};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::explain::{About, explain};
use crate::session::CoppiceMcp;

/// network_policy_get's arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyGetArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

/// network_policy_set's arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicySetArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// The whole new policy (it replaces the old one; fields left out take their defaults).
    /// Example: {"default": "deny", "allow": [{"cidr": "198.51.100.0/24", "protocol": "tcp",
    /// "ports": [443]}]}.
    pub policy: NetworkPolicy,
}

fn explain_policy(e: Error) -> String {
    match e {
        Error::InvalidArgument(m) => format!(
            "invalid network policy: {m}; fix it and call network_policy_set again (the policy in \
             force is unchanged; network_policy_get shows it)"
        ),
        other => explain(other, About::Sandbox),
    }
}

#[tool_router(router = network_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Show the sandbox's network policy: default action, allow/deny rules (CIDR, protocol,
    /// ports), air-gap. Sandboxes start with {"default":"allow"}: the internet is reachable,
    /// while the host, private ranges, other sandboxes and cloud metadata are not.
    #[tool(annotations(
        title = "Get network policy",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn network_policy_get(
        &self,
        Parameters(a): Parameters<NetworkPolicyGetArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<NetworkPolicyInfo>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .network_policy(&id)
            .map(Json)
            .map_err(explain_policy)
    }

    /// Replace the sandbox's network policy while it runs. The change is atomic, and open
    /// connections the new policy does not permit are cut at once. Rules: allow beats deny;
    /// private ranges, the host and metadata (169.254.169.254) open only with an allow rule
    /// naming them; "air_gapped": true cuts everything, DNS included; "bandwidth_mbps" caps
    /// each direction; "domains" (names, "*." wildcards) are answered by Coppice's DNS and
    /// their addresses opened on TCP 80 and 443 through a TLS SNI / HTTP Host check (other
    /// ports to them need an allow rule);
    /// "expose": [{"port": 8000}] makes a sandbox port reachable on the host (the host port
    /// chosen is reported back, or ask for one with "host_port").
    #[tool(annotations(
        title = "Set network policy",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn network_policy_set(
        &self,
        Parameters(a): Parameters<NetworkPolicySetArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<NetworkPolicyInfo>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .set_network_policy(&id, a.policy)
            .await
            .map(Json)
            .map_err(explain_policy)
    }
}
