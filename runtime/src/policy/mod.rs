//! Network policy: one typed model for every surface (MCP, HTTP, CLI, E2B fields), its
//! validation and a pure evaluator (ARCHITECTURE decision 6); the Linux backend compiles it to
//! nftables (`linux/nftcompile.rs`, golden-tested against the evaluator).
//!
//! Evaluation order for a packet leaving a sandbox (first match wins):
//!
//! 1. `air_gapped`: everything is rejected.
//! 2. The host's DNS servers on port 53 (the sandbox's resolv.conf points at them) are allowed.
//! 3. `allow` rules naming a *protected* destination (a CIDR inside a private, loopback,
//!    link-local/metadata range or one of the host's own addresses) are allowed: protected
//!    destinations are only opened by a rule that names them, never by a broad `0.0.0.0/0`.
//! 4. Protected destinations and the host itself are rejected.
//! 5. Other `allow` rules are allowed. Allow beats deny, as in E2B (`denyOut: [0.0.0.0/0]`
//!    with `allowOut: [1.1.1.1]` means "only 1.1.1.1").
//! 6. `deny` rules are rejected.
//! 7. `default` decides (allow or deny).
//!
//! Rejections are TCP resets / ICMP admin-prohibited, so a denied connection fails at once.
//! The compiled form lives in the shared `inet coppice` table. Steps 1, 2 and 4 are the same
//! for every sandbox and sit in two shared chains (`sandbox_egress`, `sandbox_to_host`); step 3
//! is a per-sandbox chain `sbx<slot>_exempt` (only when the policy has such rules) reached
//! through the verdict map `sandbox_exempt`, steps 5–7 the per-sandbox chain `sbx<slot>`
//! reached through `sandbox_policy`, both maps keyed by the sandbox's address. Every packet
//! (not just new connections) goes through them, so a replaced chain applies to open
//! connections at the moment of the commit.

mod check;
mod eval;
pub(crate) mod host;
mod model;

pub use check::{CheckedPolicy, CheckedRule, DomainPattern, looks_like_domain};
pub use host::{HostContext, METADATA_V4, METADATA_V6, parse_nameservers, protected_ranges};
pub use model::*;

#[cfg(test)]
mod tests;
