//! Evaluation: the same decision the compiled rules make, for one destination (the reference
//! the nft compiler is golden-tested against; also used to pick flows to cut).

use std::net::IpAddr;

use super::check::{CheckedPolicy, CheckedRule};
use super::host::HostContext;
use super::model::{DefaultAction, Protocol};

// the open connections an update must cut, and to test the compiler's ordering.

impl CheckedRule {
    pub(crate) fn matches(&self, ip: IpAddr, proto: Option<Protocol>, port: Option<u16>) -> bool {
        if !self.net.contains(&ip) {
            return false;
        }
        match (self.protocol, proto) {
            (Some(want), Some(got)) if want != got => return false,
            (Some(_), None) => return false,
            _ => {}
        }
        if self.ports.is_empty() {
            return true;
        }
        // Ports without a protocol mean tcp and udp.
        if !matches!(proto, Some(Protocol::Tcp | Protocol::Udp)) {
            return false;
        }
        port.is_some_and(|p| self.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p)))
    }
}

impl CheckedPolicy {
    /// Whether a packet from the sandbox to `ip` (with `proto` and destination `port`) passes.
    pub fn permits(
        &self,
        ctx: &HostContext,
        ip: IpAddr,
        proto: Option<Protocol>,
        port: Option<u16>,
    ) -> bool {
        if self.air_gapped {
            return false;
        }
        let tcp_udp = matches!(proto, Some(Protocol::Tcp | Protocol::Udp));
        if tcp_udp && port == Some(53) && ctx.resolvers().any(|r| r == ip) {
            return true;
        }
        if (ctx.resolver == Some(ip) || ctx.sni_proxy6.map(IpAddr::V6) == Some(ip))
            && proto == Some(Protocol::Tcp)
            && port.is_some()
            && port == ctx.sni_proxy_port
            && !self.domains.is_empty()
        {
            return true;
        }
        if tcp_udp && port == Some(53) && ctx.open_dns_servers().any(|d| d == ip) {
            return true;
        }
        let (specific, broad): (Vec<_>, Vec<_>) = self
            .allow
            .iter()
            .partition(|r| ctx.is_protected_net(&r.net));
        if specific.iter().any(|r| r.matches(ip, proto, port)) {
            return true;
        }
        if ctx.is_protected_addr(ip) {
            return false;
        }
        if broad.iter().any(|r| r.matches(ip, proto, port)) {
            return true;
        }
        if self.deny.iter().any(|r| r.matches(ip, proto, port)) {
            return false;
        }
        self.default == DefaultAction::Allow
    }
}
