//! The host side of sandbox networking: one bridge, one nft table, one netns + veth per sandbox.
//!
//! ```text
//!  sandbox netns (owned by the initial user ns)        host
//!  eth0 10.88.0.<slot+2>/16 ──veth── cps<slot> ─┐ (bridge port, "isolated on")
//!  default via 10.88.0.1                         ├── coppice0 10.88.0.1/16 ── NAT ── eth0 …
//!                                 cps<other> ────┘
//! ```
//!
//! * The netns belongs to the initial user namespace, so root inside the sandbox (root only in
//!   its own user namespace) holds no CAP_NET_ADMIN/CAP_NET_RAW over it: it cannot change its
//!   address, routes or MAC, nor forge packets. That is the per-sandbox anti-spoofing; the nft
//!   table adds a subnet-level source check on top.
//! * Ports are `isolated`, so sandboxes cannot reach each other at layer 2; the forward chain
//!   drops anything routed from the bridge back into it.
//! * Plan + executor: [`NetConfig::plan`] and [`host_ruleset`] are pure; [`ensure_host`],
//!   [`create`], [`destroy`] apply them over rtnetlink (no `ip` execs, no fork) and `nft -f -`.
//!
//! Network policy keeps per-sandbox nft sets in the same `inet coppice` table: reloading the
//! ruleset flushes rules but keeps sets and their elements.

mod config;
mod host;
mod netlink;
mod ruleset;
mod sandbox;
#[cfg(test)]
mod tests;

pub use self::config::{
    DEFAULT_IPV6, HOST_IF_PREFIX, Ipv4Subnet, Ipv6Subnet, NFT_TABLE, NetConfig, SANDBOX_IF,
    SANDBOX_SYSCTLS, SANDBOX_SYSCTLS_V6, SandboxNetPlan, host_ifname,
};
pub use self::host::{
    ensure_host, load_ruleset, nft_load, nft_table_exists, prepare_ipv6_host, remove_host,
};
pub use self::netlink::destroy;
pub use self::ruleset::{HOST_CONNS_PER_SANDBOX, host_ruleset, host_ruleset_recreate};
pub use self::sandbox::{
    PendingNet, SandboxNet, create, is_host_ifname, list_host_ifs, prepare, run_in_netns,
};
