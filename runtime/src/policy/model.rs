//! The network policy model: what every surface (MCP, HTTP, CLI, E2B fields) sets.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most rules a policy may hold (each is one nft rule evaluated in order).
pub const MAX_RULES: usize = 256;
/// Most domain names a policy may hold (matched in the resolver and the SNI check, not in nft).
pub const MAX_DOMAINS: usize = 256;

/// Egress and ingress rules of one sandbox. Every field is optional: `{}` is the default
/// policy (internet allowed; host, private ranges, other sandboxes and cloud metadata denied).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// What happens to traffic no rule decides: "allow" (the default) or "deny".
    #[serde(default)]
    pub default: DefaultAction,
    /// Destinations allowed. Allow rules beat deny rules. Private ranges (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7), loopback, link-local (incl. the metadata address
    /// 169.254.169.254) and the host's own addresses are only opened by an allow rule whose
    /// CIDR lies inside them (so 0.0.0.0/0 never opens them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    /// Destinations denied (checked after allow rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
    /// Domain names the sandbox may reach, e.g. ["api.github.com", "*.pypi.org"]: lowercase
    /// ASCII (internationalised names in their xn-- form); "*." as the first label matches
    /// every name below it (not the name itself). With domains set, the sandbox's DNS
    /// (through Coppice's resolver) answers only these names, and their addresses become
    /// reachable for the answer's TTL on TCP 80 and 443, through a TLS SNI / HTTP Host check
    /// against this list. Other ports or protocols to them (SSH, QUIC) need an allow rule.
    /// Useful with "default": "deny".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Cut the sandbox off entirely (no egress at all, DNS included); other rules are kept but
    /// have no effect while this is true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub air_gapped: bool,
    /// Bandwidth cap in megabits per second, applied to each direction (download and upload)
    /// separately, e.g. 10 or 0.5; omitted: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<f64>,
    /// Sandbox ports the daemon makes reachable from outside: it listens on the host (its
    /// `expose_bind` address, loopback by default) and forwards each connection to the port
    /// in the sandbox. Inbound connections to other sandbox ports stay refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<Expose>,
}

/// Most ports one sandbox may expose.
pub const MAX_EXPOSED: usize = 64;

/// One exposed inbound port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expose {
    /// The port a server listens on inside the sandbox.
    pub port: u16,
    /// "tcp" (the only protocol that can be exposed); omitted: tcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port on the host that forwards to it. Omitted: the daemon picks a free one and
    /// reports it here (and keeps it across updates and restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

impl NetworkPolicy {
    /// The same policy with the daemon-chosen host ports forgotten (for a copy of a sandbox,
    /// which cannot listen on the ports its original holds).
    pub fn without_host_ports(mut self) -> NetworkPolicy {
        for e in &mut self.expose {
            e.host_port = None;
        }
        self
    }
}

/// Checks an `expose` list: tcp only, real ports, no sandbox or host port twice.
pub fn check_expose(list: &[Expose]) -> Result<()> {
    if list.len() > MAX_EXPOSED {
        return Err(invalid(format!(
            "a sandbox exposes at most {MAX_EXPOSED} ports, got {}",
            list.len()
        )));
    }
    let mut ports = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        if matches!(e.protocol, Some(p) if p != Protocol::Tcp) {
            return Err(invalid(format!(
                "expose[{i}]: only tcp ports can be exposed (drop \"protocol\" or use \"tcp\")"
            )));
        }
        if e.port == 0 || e.host_port == Some(0) {
            return Err(invalid(format!(
                "expose[{i}]: ports are 1-65535 (omit host_port to let the daemon pick one)"
            )));
        }
        if !ports.insert(e.port) {
            return Err(invalid(format!(
                "expose[{i}]: port {} is listed twice",
                e.port
            )));
        }
        if let Some(h) = e.host_port
            && !host_ports.insert(h)
        {
            return Err(invalid(format!(
                "expose[{i}]: host_port {h} is listed twice"
            )));
        }
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a policy does with traffic no rule decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Let it through.
    #[default]
    Allow,
    /// Reject it.
    Deny,
}

/// One destination: a CIDR (IPv4 or IPv6; a bare address means just that address), optionally
/// narrowed to a protocol and ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// "198.51.100.0/24", "2001:db8::/32", "203.0.113.7" or "0.0.0.0/0".
    pub cidr: String,
    /// "tcp", "udp" or "icmp"; omitted: any protocol (with ports: tcp and udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Destination ports: numbers or "low-high" ranges, e.g. [443, "8000-8100"]; omitted: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// An IP protocol a rule can be narrowed to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 for an IPv6 destination).
    Icmp,
}

/// A port (443) or an inclusive range ("8000-8100").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Port {
    /// One port.
    Single(u16),
    /// An inclusive range, written `"low-high"`.
    Range(String),
}

impl Rule {
    /// A rule for every protocol and port of `cidr`.
    pub fn cidr(cidr: &str) -> Rule {
        Rule {
            cidr: cidr.into(),
            protocol: None,
            ports: vec![],
        }
    }

    /// A rule for TCP `ports` of `cidr` (every TCP port when `ports` is empty).
    pub fn tcp(cidr: &str, ports: &[u16]) -> Rule {
        Rule {
            cidr: cidr.into(),
            protocol: Some(Protocol::Tcp),
            ports: ports.iter().map(|p| Port::Single(*p)).collect(),
        }
    }
}

pub(super) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}
