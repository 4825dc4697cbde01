//! Network policy: one typed model for every surface (MCP, HTTP, CLI, E2B fields), its
//! validation, a pure evaluator, and the compiler to nftables text (ARCHITECTURE decision 6).
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

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the verdict map (sandbox address → `goto sbx<slot>`), declared with the table.
pub const POLICY_MAP: &str = "sandbox_policy";
/// The same for the sandboxes' IPv6 addresses (sandbox IPv6 address → `goto sbx<slot>`).
pub const POLICY_MAP6: &str = "sandbox_policy6";
/// Verdict maps of exemptions (sandbox address → `jump sbx<slot>_exempt`), for sandboxes
/// whose policy opens protected destinations or has domains.
pub const EXEMPT_MAP: &str = "sandbox_exempt";
pub const EXEMPT_MAP6: &str = "sandbox_exempt6";
/// Addresses of air-gapped sandboxes, rejected before anything else.
pub const AIRGAP_SET: &str = "airgapped4";
pub const AIRGAP_SET6: &str = "airgapped6";
/// Shared chain every rejection jumps to.
pub const REJECT_CHAIN: &str = "policy_reject";
/// Shared chains the base chains jump to for sandbox traffic through the host and to it.
pub const EGRESS_CHAIN: &str = "sandbox_egress";
pub const HOST_CHAIN: &str = "sandbox_to_host";

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Allow,
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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// A port (443) or an inclusive range ("8000-8100").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Port {
    Single(u16),
    Range(String),
}

impl Rule {
    pub fn cidr(cidr: &str) -> Rule {
        Rule {
            cidr: cidr.into(),
            protocol: None,
            ports: vec![],
        }
    }

    pub fn tcp(cidr: &str, ports: &[u16]) -> Rule {
        Rule {
            cidr: cidr.into(),
            protocol: Some(Protocol::Tcp),
            ports: ports.iter().map(|p| Port::Single(*p)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: the checked form every later step works on.

/// A rule after validation: network normalised (host bits cleared), ports merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRule {
    pub net: IpNet,
    pub protocol: Option<Protocol>,
    /// Sorted, non-overlapping inclusive ranges; empty = every port.
    pub ports: Vec<(u16, u16)>,
}

/// A validated policy, ready to compile or evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPolicy {
    pub default: DefaultAction,
    pub allow: Vec<CheckedRule>,
    pub deny: Vec<CheckedRule>,
    pub air_gapped: bool,
    /// Bits per second, each direction.
    pub bandwidth_bps: Option<u64>,
    /// Allowed domain names (empty: no domain rules; DNS is simply forwarded).
    pub domains: Vec<DomainPattern>,
}

impl NetworkPolicy {
    /// Checks every field; the error names the offending entry and says what is accepted.
    pub fn check(&self) -> Result<CheckedPolicy> {
        if self.allow.len() + self.deny.len() > MAX_RULES {
            return Err(invalid(format!(
                "a policy holds at most {MAX_RULES} rules (allow + deny), got {}",
                self.allow.len() + self.deny.len()
            )));
        }
        let check = |list: &[Rule], what: &str| -> Result<Vec<CheckedRule>> {
            list.iter()
                .enumerate()
                .map(|(i, r)| r.check().map_err(|e| invalid(format!("{what}[{i}]: {e}"))))
                .collect()
        };
        let bandwidth_bps = match self.bandwidth_mbps {
            None => None,
            Some(m) if m.is_finite() && (0.1..=100_000.0).contains(&m) => {
                Some((m * 1_000_000.0) as u64)
            }
            Some(m) => {
                return Err(invalid(format!(
                    "bandwidth_mbps must be between 0.1 and 100000 (megabits per second), got {m}"
                )));
            }
        };
        check_expose(&self.expose)?;
        Ok(CheckedPolicy {
            default: self.default,
            allow: check(&self.allow, "allow")?,
            deny: check(&self.deny, "deny")?,
            air_gapped: self.air_gapped,
            bandwidth_bps,
            domains: check_domains(&self.domains)?,
        })
    }

    /// The policy behind E2B's create fields: `allow_internet_access: false` is air-gapped, or
    /// default deny when `allowOut` names exceptions; `network.allowOut` / `network.denyOut`
    /// are CIDR or address lists (allow beats deny); domain names in `allowOut` (E2B allows
    /// them there only) become `domains`.
    pub fn from_e2b(
        allow_internet_access: Option<bool>,
        allow_out: &[String],
        deny_out: &[String],
    ) -> Result<NetworkPolicy> {
        let rules = |list: &[String], what: &str| -> Result<Vec<Rule>> {
            list.iter()
                .map(|s| {
                    let r = Rule::cidr(s.trim());
                    r.check().map_err(|e| invalid(format!("{what}: {e}")))?;
                    Ok(r)
                })
                .collect()
        };
        let (names, addrs): (Vec<String>, Vec<String>) = allow_out
            .iter()
            .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
            .partition(|s| looks_like_domain(s));
        let allow_out = &addrs[..];
        let offline = allow_internet_access == Some(false);
        let p = NetworkPolicy {
            default: if offline {
                DefaultAction::Deny
            } else {
                DefaultAction::Allow
            },
            allow: rules(allow_out, "allowOut")?,
            deny: rules(deny_out, "denyOut")?,
            air_gapped: offline && allow_out.is_empty() && names.is_empty(),
            bandwidth_mbps: None,
            domains: names,
            expose: vec![],
        };
        p.check()?;
        Ok(p)
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

impl Rule {
    fn check(&self) -> std::result::Result<CheckedRule, String> {
        let net = parse_net(&self.cidr)?;
        let mut ports = Vec::new();
        for p in &self.ports {
            ports.push(p.range()?);
        }
        if !ports.is_empty() && self.protocol == Some(Protocol::Icmp) {
            return Err("icmp has no ports: drop \"ports\" or use tcp/udp".into());
        }
        ports.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (lo, hi) in ports {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(CheckedRule {
            net,
            protocol: self.protocol,
            ports: merged,
        })
    }
}

fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    if s.chars().any(|c| c.is_ascii_alphabetic()) && !s.contains(':') {
        return Err(format!(
            "'{s}' is not a CIDR or an IP address (domain names go in \"domains\", e.g. \
             {{\"domains\": [\"{s}\"]}})"
        ));
    }
    Err(format!(
        "'{s}' is not a CIDR or an IP address (examples: 198.51.100.0/24, 203.0.113.7, \
         2001:db8::/32)"
    ))
}

/// Whether an E2B `allowOut` entry is a domain name rather than an address or CIDR.
pub fn looks_like_domain(s: &str) -> bool {
    let addr = s.trim().split('/').next().unwrap_or("");
    addr.parse::<IpAddr>().is_err()
        && !addr.contains(':')
        && addr.chars().any(|c| c.is_alphabetic() || c == '*')
}

/// One checked entry of `domains`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DomainPattern {
    /// Exactly this name.
    Exact(String),
    /// Every name strictly below this one (`*.example.com` holds "example.com").
    Below(String),
}

impl DomainPattern {
    /// `name`: a DNS name as asked (any case, optional trailing dot).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            DomainPattern::Exact(d) => name.eq_ignore_ascii_case(d),
            DomainPattern::Below(d) => {
                name.len() > d.len() + 1
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
                    && name[name.len() - d.len()..].eq_ignore_ascii_case(d)
            }
        }
    }
}

impl CheckedPolicy {
    /// Whether DNS may answer `name` and a TLS SNI / HTTP Host may name it. Without domain
    /// rules every name passes (the policy filters by address only).
    pub fn allows_name(&self, name: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d.matches(name))
    }
}

fn check_domains(list: &[String]) -> Result<Vec<DomainPattern>> {
    if list.len() > MAX_DOMAINS {
        return Err(invalid(format!(
            "a policy holds at most {MAX_DOMAINS} domains, got {}",
            list.len()
        )));
    }
    let mut out: Vec<DomainPattern> = list
        .iter()
        .enumerate()
        .map(|(i, d)| check_domain(d).map_err(|e| invalid(format!("domains[{i}]: {e}"))))
        .collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// A name in canonical form (lowercase ASCII, no trailing dot, RFC 1035 lengths, LDH labels;
/// IDNA names in their xn-- form) with an optional leading "*." label.
fn check_domain(raw: &str) -> std::result::Result<DomainPattern, String> {
    let (wild, name) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let canonical = idna::domain_to_ascii(name.trim().trim_end_matches('.'))
        .ok()
        .filter(|c| !c.is_empty());
    if let Some(c) = &canonical
        && c != name
    {
        let star = if wild { "*." } else { "" };
        return Err(format!(
            "'{raw}' must be written '{star}{c}' (lowercase ASCII, no trailing dot;              internationalised names in their xn-- form)"
        ));
    }
    if name.contains('*') {
        return Err(format!(
            "'{raw}': a wildcard is only allowed as the whole first label, as in \"*.example.com\""
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "'{raw}' is not a domain name (1 to 253 characters)"
        ));
    }
    for label in name.split('.') {
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if label.is_empty()
            || label.len() > 63
            || !ldh
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "'{raw}' is not a domain name: label '{label}' must be 1-63 of a-z, 0-9, '-' \
                 (not first or last) or '_'"
            ));
        }
    }
    if name.parse::<IpAddr>().is_ok() || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "'{raw}' is an address: put it in \"allow\" as a cidr"
        ));
    }
    Ok(if wild {
        DomainPattern::Below(name.to_string())
    } else {
        DomainPattern::Exact(name.to_string())
    })
}

impl Port {
    fn range(&self) -> std::result::Result<(u16, u16), String> {
        let bad = |s: &str| format!("'{s}' is not a port or a port range like \"8000-8100\"");
        let (lo, hi) = match self {
            Port::Single(p) => (*p, *p),
            Port::Range(s) => match s.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse().map_err(|_| bad(s))?,
                    b.trim().parse().map_err(|_| bad(s))?,
                ),
                None => {
                    let p = s.trim().parse().map_err(|_| bad(s))?;
                    (p, p)
                }
            },
        };
        if lo == 0 || lo > hi {
            return Err(format!(
                "port range {lo}-{hi} is empty or starts at 0 (ports are 1-65535)"
            ));
        }
        Ok((lo, hi))
    }
}

// ---------------------------------------------------------------------------------------------
// What the compiler and evaluator need to know about the host.

/// Ranges that only an allow rule naming them opens.
pub fn protected_ranges() -> Vec<IpNet> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16", // link-local, incl. the metadata address 169.254.169.254
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128", // unspecified: a connect to it reaches the connecting host itself
        "::1/128",
        "::ffff:0:0/96", // v4-mapped: would reach the IPv4 ranges above
        "fc00::/7",      // unique local, incl. the metadata address fd00:ec2::254
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|s| s.parse().expect("static range"))
    .collect()
}

/// Facts about the host the policy is compiled against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostContext {
    /// The host's own addresses (every interface): protected like private ranges.
    pub host_addrs: Vec<IpAddr>,
    /// Nameservers of the sandbox's resolv.conf (the host's): reachable on port 53 unless
    /// air-gapped, whatever the rules say.
    pub dns_servers: Vec<IpAddr>,
    /// Coppice's own resolver (the bridge address, port 53), when it runs: queries to
    /// `dns_servers` are redirected to it, so it is reachable unless air-gapped.
    pub resolver: Option<IpAddr>,
    /// Port of the SNI / Host check proxy on `resolver`'s address, reachable by sandboxes
    /// with domain rules (their TCP 80/443 to domain-admitted addresses is redirected there).
    pub sni_proxy_port: Option<u16>,
    /// The bridge's IPv6 address when the proxy also listens there (same port): IPv6
    /// addresses of allowed names are admitted only then, for the sandbox's IPv6 address.
    pub sni_proxy6: Option<Ipv6Addr>,
    /// The bridge's IPv6 address when the resolver also listens there (port 53): queries to
    /// the IPv6 `dns_servers` are redirected to it.
    pub resolver6: Option<Ipv6Addr>,
}

impl HostContext {
    /// Whether `net` lies inside a protected range or is one of the host's addresses.
    pub fn is_protected_net(&self, net: &IpNet) -> bool {
        protected_ranges().iter().any(|r| r.contains(net))
            || (net.prefix_len() == net.max_prefix_len() && self.host_addrs.contains(&net.addr()))
    }

    pub fn is_protected_addr(&self, ip: IpAddr) -> bool {
        protected_ranges().iter().any(|r| r.contains(&ip)) || self.host_addrs.contains(&ip)
    }

    /// The `dns_servers` sandboxes may reach on port 53. With the resolver running, an IPv6
    /// one is left out when the resolver has no IPv6 address to redirect it to: open, it
    /// would answer any name to a sandbox with domain rules (its clients fall back to the
    /// next nameserver, redirected ones).
    pub fn open_dns_servers(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v6_redirected = self.resolver.is_none() || self.resolver6.is_some();
        self.dns_servers
            .iter()
            .copied()
            .filter(move |ip| ip.is_ipv4() || v6_redirected)
    }

    /// Coppice's resolver addresses (the bridge's, port 53).
    fn resolvers(&self) -> impl Iterator<Item = IpAddr> {
        self.resolver
            .into_iter()
            .chain(self.resolver6.map(IpAddr::V6))
    }
}

/// Nameservers listed in a resolv.conf text.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split(['%', ' ', '\t']).next()?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Evaluation: the same decision the compiled rules make, for one destination. Used to pick
// the open connections an update must cut, and to test the compiler's ordering.

impl CheckedRule {
    fn matches(&self, ip: IpAddr, proto: Option<Protocol>, port: Option<u16>) -> bool {
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

// ---------------------------------------------------------------------------------------------
// The bandwidth cap: a token bucket (tc tbf) on each side of the sandbox's veth.

/// `tc qdisc replace dev <if> ...` arguments that cap an interface's egress at `bps`. The
/// bucket holds 20 ms of traffic (at least 16 KiB): enough for TSO bursts, too little to show
/// up in a measured rate; up to 50 ms of packets queue before drops.
pub fn tbf_args(bps: u64) -> Vec<String> {
    let burst = (bps / 8 / 50).max(16 * 1024);
    vec![
        "root".into(),
        "tbf".into(),
        "rate".into(),
        format!("{bps}bit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
}

// ---------------------------------------------------------------------------------------------
// The nft compiler (pure text; loaded as one `nft -f` transaction each).

/// The set of (sandbox address . destination address) pairs the resolver admitted, each with
/// a timeout. One set for every sandbox (like the verdict map); entries of a removed sandbox
/// are deleted with it.
pub const DOMAIN_SET4: &str = "domain_admit4";
/// Its IPv6 twin: (sandbox IPv6 address . destination IPv6 address), from AAAA answers.
pub const DOMAIN_SET6: &str = "domain_admit6";

/// Declaration of [`DOMAIN_SET4`] and [`DOMAIN_SET6`] (idempotent, keeps their elements).
pub fn nft_domain_set(table: &str) -> String {
    format!(
        "table inet {table} {{ set {DOMAIN_SET4} {{ type ipv4_addr . ipv4_addr; flags timeout; }}; \
         set {DOMAIN_SET6} {{ type ipv6_addr . ipv6_addr; flags timeout; }}; }}\n"
    )
}

/// Name of slot `slot`'s policy chain (reached by `goto` from [`POLICY_MAP`]; always decides).
pub fn chain_name(slot: u32) -> String {
    format!("sbx{slot}")
}

/// Name of slot `slot`'s exemption chain (reached by `jump` from [`EXEMPT_MAP`]; accepts or
/// returns): its allow rules naming protected destinations and the domain proxy. Only
/// sandboxes that have such rules have one.
pub fn exempt_chain_name(slot: u32) -> String {
    format!("sbx{slot}_exempt")
}

/// What every sandbox's traffic goes through, applied once when the daemon starts (declare,
/// flush, fill; idempotent): the protected-range sets, the reject chain, the per-sandbox maps
/// and sets, and the two shared chains the base chains jump to.
///
/// The shared part of every policy (air gap, resolvers, protected ranges, the host) lives in
/// these shared chains rather than in each sandbox's chain because the kernel validates every
/// chain reachable from a base chain on each commit that adds rules: with 1000 sandboxes, ten
/// shared rules copied into each chain made that walk most of an update's cost.
pub fn nft_shared(table: &str, ctx: &HostContext) -> String {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = protected_ranges()
        .into_iter()
        .partition(|n| matches!(n, IpNet::V4(_)));
    let list = |v: &[IpNet]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = |v: Vec<String>| v.iter().map(|r| format!("\t\t{r}\n")).collect::<String>();
    format!(
        "table inet {table} {{
\tset protected4 {{ type ipv4_addr; flags interval; auto-merge; }}
\tset protected6 {{ type ipv6_addr; flags interval; auto-merge; }}
\tset {AIRGAP_SET} {{ type ipv4_addr; }}
\tset {AIRGAP_SET6} {{ type ipv6_addr; }}
\tmap {POLICY_MAP} {{ type ipv4_addr : verdict; }}
\tmap {POLICY_MAP6} {{ type ipv6_addr : verdict; }}
\tmap {EXEMPT_MAP} {{ type ipv4_addr : verdict; }}
\tmap {EXEMPT_MAP6} {{ type ipv6_addr : verdict; }}
\tset {DOMAIN_SET4} {{ type ipv4_addr . ipv4_addr; flags timeout; }}
\tset {DOMAIN_SET6} {{ type ipv6_addr . ipv6_addr; flags timeout; }}
\tchain {REJECT_CHAIN} {{}}
\tchain {EGRESS_CHAIN} {{}}
\tchain {HOST_CHAIN} {{}}
}}
flush set inet {table} protected4
flush set inet {table} protected6
flush chain inet {table} {REJECT_CHAIN}
flush chain inet {table} {EGRESS_CHAIN}
flush chain inet {table} {HOST_CHAIN}
table inet {table} {{
\tset protected4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}
\tset protected6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}
\tchain {REJECT_CHAIN} {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with icmpx admin-prohibited
\t}}
\tchain {EGRESS_CHAIN} {{
{}\t}}
\tchain {HOST_CHAIN} {{
{}\t}}
}}
",
        list(&v4),
        list(&v6),
        rules(egress_rules(ctx)),
        rules(to_host_rules(ctx)),
    )
}

/// Rules every sandbox passes first, in both shared chains: the air gap, then the resolvers.
fn common_rules(ctx: &HostContext) -> Vec<String> {
    let reject = format!("goto {REJECT_CHAIN}");
    let mut out = vec![
        format!("ip saddr @{AIRGAP_SET} {reject} comment \"air-gapped\""),
        format!("ip6 saddr @{AIRGAP_SET6} {reject} comment \"air-gapped\""),
    ];
    let resolvers = ctx.resolvers().map(|ip| (ip, "coppice resolver"));
    let dns: BTreeSet<IpAddr> = ctx.open_dns_servers().collect();
    for (ip, what) in resolvers.chain(dns.into_iter().map(|ip| (ip, "resolver"))) {
        let fam = family(&IpNet::from(ip));
        for proto in ["tcp", "udp"] {
            out.push(format!(
                "{fam} daddr {ip} meta l4proto {proto} th dport 53 accept comment \"{what}\""
            ));
        }
    }
    out.push(format!("ip saddr vmap @{EXEMPT_MAP}"));
    out.push(format!("ip6 saddr vmap @{EXEMPT_MAP6}"));
    out
}

/// The shared chain for traffic a sandbox sends through the host (steps 1–4 of the evaluation
/// order, then its own chain). It returns only for a sandbox without a policy entry.
pub fn egress_rules(ctx: &HostContext) -> Vec<String> {
    let reject = format!("goto {REJECT_CHAIN}");
    let mut out = common_rules(ctx);
    out.push(format!("ip daddr @protected4 {reject}"));
    out.push(format!("ip6 daddr @protected6 {reject}"));
    out.push(format!(
        "fib daddr type local {reject} comment \"the host\""
    ));
    out.push(format!("ip saddr vmap @{POLICY_MAP}"));
    out.push(format!("ip6 saddr vmap @{POLICY_MAP6}"));
    out
}

/// The shared chain for traffic a sandbox sends to the host itself: the host is protected, so
/// only the resolvers and a sandbox's exemptions reach it.
pub fn to_host_rules(ctx: &HostContext) -> Vec<String> {
    let mut out = common_rules(ctx);
    out.push(format!("goto {REJECT_CHAIN} comment \"the host\""));
    out
}

/// One transaction that replaces slot `slot`'s chains with `policy` and points the sandbox's
/// addresses at them (`dropped`: pairs of [`DOMAIN_SET4`] / [`DOMAIN_SET6`] the new policy no
/// longer admits, as [`SandboxAddrs::admission`] keys them).
/// The kernel swaps the whole batch at once: no packet sees half a policy. Elements are added
/// before they are deleted so that every delete is valid whatever the previous policy was (a
/// restart, a failed earlier update).
pub fn apply_ops(
    slot: u32,
    addrs: SandboxAddrs,
    policy: &CheckedPolicy,
    ctx: &HostContext,
    dropped: &[ElemKey],
) -> Vec<NftOp> {
    let rules = sandbox_rules(policy, ctx);
    let chain = chain_name(slot);
    let exempt = exempt_chain_name(slot);
    let mut ops = vec![
        NftOp::AddChain(chain.clone()),
        NftOp::AddChain(exempt.clone()),
        NftOp::FlushChain(chain.clone()),
        NftOp::FlushChain(exempt.clone()),
    ];
    ops.extend(rules.policy.into_iter().map(|rule| NftOp::AddRule {
        chain: chain.clone(),
        rule,
    }));
    addrs.add(&mut ops, POLICY_MAP, POLICY_MAP6, ElemData::Goto(chain));
    addrs.add(
        &mut ops,
        EXEMPT_MAP,
        EXEMPT_MAP6,
        ElemData::Jump(exempt.clone()),
    );
    if rules.exempt.is_empty() {
        addrs.delete(&mut ops, EXEMPT_MAP, EXEMPT_MAP6);
        ops.push(NftOp::DelChain(exempt));
    } else {
        ops.extend(rules.exempt.into_iter().map(|rule| NftOp::AddRule {
            chain: exempt.clone(),
            rule,
        }));
    }
    addrs.add(&mut ops, AIRGAP_SET, AIRGAP_SET6, ElemData::None);
    if !policy.air_gapped {
        addrs.delete(&mut ops, AIRGAP_SET, AIRGAP_SET6);
    }
    for &key in dropped {
        let Some(set) = key.domain_set() else {
            continue;
        };
        ops.push(NftOp::AddElem {
            set,
            key,
            data: ElemData::None,
        });
        ops.push(NftOp::DelElem { set, key });
    }
    ops
}

/// One transaction that removes slot `slot`'s chains and elements (absent ones included).
pub fn remove_ops(slot: u32, addrs: SandboxAddrs) -> Vec<NftOp> {
    let chain = chain_name(slot);
    let exempt = exempt_chain_name(slot);
    let mut ops = vec![
        NftOp::AddChain(chain.clone()),
        NftOp::AddChain(exempt.clone()),
    ];
    addrs.add(
        &mut ops,
        POLICY_MAP,
        POLICY_MAP6,
        ElemData::Goto(chain.clone()),
    );
    addrs.delete(&mut ops, POLICY_MAP, POLICY_MAP6);
    addrs.add(
        &mut ops,
        EXEMPT_MAP,
        EXEMPT_MAP6,
        ElemData::Jump(exempt.clone()),
    );
    addrs.delete(&mut ops, EXEMPT_MAP, EXEMPT_MAP6);
    addrs.add(&mut ops, AIRGAP_SET, AIRGAP_SET6, ElemData::None);
    addrs.delete(&mut ops, AIRGAP_SET, AIRGAP_SET6);
    for c in [chain, exempt] {
        ops.push(NftOp::FlushChain(c.clone()));
        ops.push(NftOp::DelChain(c));
    }
    ops
}

/// One change to the `inet coppice` table. A list of them is one transaction, sent to the
/// kernel as netlink messages (linux/nftwire.rs); `Display` gives the same change as an `nft`
/// command line.
#[derive(Debug, Clone, PartialEq)]
pub enum NftOp {
    /// Creates a regular chain (no change when it exists).
    AddChain(String),
    /// Removes every rule of a chain.
    FlushChain(String),
    /// Deletes an empty, unreferenced chain.
    DelChain(String),
    /// Appends a rule to a chain.
    AddRule { chain: String, rule: NftRule },
    /// Adds an element to a set or map (no change when the same element exists).
    AddElem {
        set: &'static str,
        key: ElemKey,
        data: ElemData,
    },
    /// Deletes an element of a set or map.
    DelElem { set: &'static str, key: ElemKey },
}

/// The key of a set element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ElemKey {
    Addr(IpAddr),
    /// `ipv4_addr . ipv4_addr`, as in [`DOMAIN_SET4`].
    Pair(Ipv4Addr, Ipv4Addr),
    /// `ipv6_addr . ipv6_addr`, as in [`DOMAIN_SET6`].
    Pair6(Ipv6Addr, Ipv6Addr),
}

impl ElemKey {
    /// The domain-admission set a pair belongs to (None for a plain address).
    pub fn domain_set(&self) -> Option<&'static str> {
        match self {
            ElemKey::Pair(..) => Some(DOMAIN_SET4),
            ElemKey::Pair6(..) => Some(DOMAIN_SET6),
            ElemKey::Addr(_) => None,
        }
    }
}

/// The value of a map element.
#[derive(Debug, Clone, PartialEq)]
pub enum ElemData {
    None,
    Goto(String),
    Jump(String),
}

/// One rule of a sandbox's chains: every packet to `daddr` (of its family; `None`: any packet)
/// with IP protocol `l4proto` and destination port in `dport` gets `verdict`.
#[derive(Debug, Clone, PartialEq)]
pub struct NftRule {
    pub daddr: Option<IpNet>,
    pub l4proto: Option<u8>,
    pub dport: Option<(u16, u16)>,
    pub verdict: Verdict,
    pub comment: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Accept,
    /// `goto` [`REJECT_CHAIN`].
    Reject,
}

/// IP protocol numbers of the protocols policy rules name.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

impl NftRule {
    fn new(verdict: Verdict, comment: &'static str) -> NftRule {
        NftRule {
            daddr: None,
            l4proto: None,
            dport: None,
            verdict,
            comment: Some(comment),
        }
    }
}

impl std::fmt::Display for NftRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(net) = &self.daddr {
            parts.push(format!("{} daddr {}", family(net), net_text(net)));
        }
        if let Some(p) = self.l4proto {
            let name = match p {
                IPPROTO_TCP => "tcp".to_string(),
                IPPROTO_UDP => "udp".to_string(),
                IPPROTO_ICMP => "icmp".to_string(),
                IPPROTO_ICMPV6 => "ipv6-icmp".to_string(),
                other => other.to_string(),
            };
            parts.push(format!("meta l4proto {name}"));
        }
        match self.dport {
            Some((lo, hi)) if lo == hi => parts.push(format!("th dport {lo}")),
            Some((lo, hi)) => parts.push(format!("th dport {lo}-{hi}")),
            None => {}
        }
        parts.push(match self.verdict {
            Verdict::Accept => "accept".to_string(),
            Verdict::Reject => format!("goto {REJECT_CHAIN}"),
        });
        if let Some(c) = self.comment {
            parts.push(format!("comment \"{c}\""));
        }
        f.write_str(&parts.join(" "))
    }
}

impl std::fmt::Display for ElemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElemKey::Addr(a) => write!(f, "{a}"),
            ElemKey::Pair(a, b) => write!(f, "{a} . {b}"),
            ElemKey::Pair6(a, b) => write!(f, "{a} . {b}"),
        }
    }
}

impl std::fmt::Display for NftOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const T: &str = "inet coppice";
        match self {
            NftOp::AddChain(c) => write!(f, "add chain {T} {c}"),
            NftOp::FlushChain(c) => write!(f, "flush chain {T} {c}"),
            NftOp::DelChain(c) => write!(f, "delete chain {T} {c}"),
            NftOp::AddRule { chain, rule } => write!(f, "add rule {T} {chain} {rule}"),
            NftOp::AddElem { set, key, data } => match data {
                ElemData::None => write!(f, "add element {T} {set} {{ {key} }}"),
                ElemData::Goto(c) => write!(f, "add element {T} {set} {{ {key} : goto {c} }}"),
                ElemData::Jump(c) => write!(f, "add element {T} {set} {{ {key} : jump {c} }}"),
            },
            NftOp::DelElem { set, key } => write!(f, "delete element {T} {set} {{ {key} }}"),
        }
    }
}

/// A sandbox's addresses, for its elements in the per-family maps and sets.
#[derive(Debug, Clone, Copy)]
pub struct SandboxAddrs {
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

impl SandboxAddrs {
    /// The admission-set element that lets this sandbox reach `dst` through the domain proxy:
    /// keyed by its address of `dst`'s family (None: an IPv6 destination, no IPv6 address).
    pub fn admission(&self, dst: IpAddr) -> Option<ElemKey> {
        match dst {
            IpAddr::V4(d) => Some(ElemKey::Pair(self.ip, d)),
            IpAddr::V6(d) => self.ip6.map(|s| ElemKey::Pair6(s, d)),
        }
    }

    fn keys(&self) -> impl Iterator<Item = ElemKey> {
        std::iter::once(IpAddr::V4(self.ip))
            .chain(self.ip6.map(IpAddr::V6))
            .map(ElemKey::Addr)
    }

    fn add(&self, ops: &mut Vec<NftOp>, v4: &'static str, v6: &'static str, data: ElemData) {
        for key in self.keys() {
            let set = if matches!(key, ElemKey::Addr(IpAddr::V4(_))) {
                v4
            } else {
                v6
            };
            ops.push(NftOp::AddElem {
                set,
                key,
                data: data.clone(),
            });
        }
    }

    fn delete(&self, ops: &mut Vec<NftOp>, v4: &'static str, v6: &'static str) {
        for key in self.keys() {
            let set = if matches!(key, ElemKey::Addr(IpAddr::V4(_))) {
                v4
            } else {
                v6
            };
            ops.push(NftOp::DelElem { set, key });
        }
    }
}

/// The rules of one sandbox's two chains, in evaluation order.
#[derive(Debug, Default, PartialEq)]
pub struct SandboxRules {
    /// Step 3: accepts for protected destinations the policy names (and the domain proxy);
    /// falls through to the shared chain otherwise.
    pub exempt: Vec<NftRule>,
    /// Steps 5–7; the last rule always decides.
    pub policy: Vec<NftRule>,
}

pub fn sandbox_rules(policy: &CheckedPolicy, ctx: &HostContext) -> SandboxRules {
    if policy.air_gapped {
        return SandboxRules {
            exempt: vec![],
            policy: vec![NftRule::new(Verdict::Reject, "air-gapped")],
        };
    }
    let mut exempt = Vec::new();
    if let (Some(r), Some(port), false) =
        (ctx.resolver, ctx.sni_proxy_port, policy.domains.is_empty())
    {
        let proxies = std::iter::once(r).chain(ctx.sni_proxy6.map(IpAddr::V6));
        exempt.extend(proxies.map(|addr| NftRule {
            daddr: Some(IpNet::from(addr)),
            l4proto: Some(IPPROTO_TCP),
            dport: Some((port, port)),
            ..NftRule::new(Verdict::Accept, "domain check proxy")
        }));
    }
    let (specific, broad): (Vec<_>, Vec<_>) = policy
        .allow
        .iter()
        .partition(|r| ctx.is_protected_net(&r.net));
    exempt.extend(specific.iter().flat_map(|r| rule_list(r, Verdict::Accept)));
    // Addresses admitted for this sandbox's allowed names get no rule here: their TCP 80 and
    // 443 are DNATed to the name-checking proxy before this chain (accepted above), and any
    // other port or protocol to them would carry no name to check, so it needs a CIDR rule.
    let mut out: Vec<NftRule> = broad
        .iter()
        .flat_map(|r| rule_list(r, Verdict::Accept))
        .collect();
    out.extend(
        policy
            .deny
            .iter()
            .flat_map(|r| rule_list(r, Verdict::Reject)),
    );
    out.push(match policy.default {
        DefaultAction::Allow => NftRule::new(Verdict::Accept, "default allow"),
        DefaultAction::Deny => NftRule::new(Verdict::Reject, "default deny"),
    });
    SandboxRules {
        exempt,
        policy: out,
    }
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

/// One policy rule as nft rules: one per protocol and port range (the kernel has no "tcp or
/// udp" without a set, and sets in per-sandbox chains would be one more object per sandbox).
fn rule_list(r: &CheckedRule, verdict: Verdict) -> Vec<NftRule> {
    let protos: &[u8] = match (r.protocol, r.ports.is_empty()) {
        (Some(Protocol::Icmp), _) => match r.net {
            IpNet::V4(_) => &[IPPROTO_ICMP],
            IpNet::V6(_) => &[IPPROTO_ICMPV6],
        },
        (Some(Protocol::Tcp), _) => &[IPPROTO_TCP],
        (Some(Protocol::Udp), _) => &[IPPROTO_UDP],
        (None, false) => &[IPPROTO_TCP, IPPROTO_UDP],
        (None, true) => &[],
    };
    let base = NftRule {
        daddr: Some(r.net),
        l4proto: None,
        dport: None,
        verdict,
        comment: None,
    };
    if protos.is_empty() {
        return vec![base];
    }
    let ports: Vec<Option<(u16, u16)>> = if r.ports.is_empty() {
        vec![None]
    } else {
        r.ports.iter().copied().map(Some).collect()
    };
    let mut out = Vec::with_capacity(protos.len() * ports.len());
    for &proto in protos {
        for &dport in &ports {
            out.push(NftRule {
                l4proto: Some(proto),
                dport,
                ..base.clone()
            });
        }
    }
    out
}

/// `0.0.0.0/0` is written as a range nft accepts in every version.
fn net_text(net: &IpNet) -> String {
    match net {
        IpNet::V4(n) if n.prefix_len() == 0 => "0.0.0.0-255.255.255.255".into(),
        IpNet::V6(n) if n.prefix_len() == 0 => "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into(),
        IpNet::V4(n) if n.prefix_len() == 32 => n.addr().to_string(),
        IpNet::V6(n) if n.prefix_len() == 128 => n.addr().to_string(),
        other => other.to_string(),
    }
}

/// The IPv6 cloud metadata address (AWS), covered by fc00::/7.
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The IPv4 cloud metadata address, covered by 169.254.0.0/16.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[cfg(test)]
mod tests {
    use super::*;

    /// One test of "is this a domain" for every surface (E2B's allowOut/denyOut included):
    /// addresses and CIDRs are not; names, wildcards and internationalized names are.
    #[test]
    fn domain_or_address() {
        for d in [
            "example.com",
            "*.example.com",
            "*",
            "bücher.de",
            "例え.jp",
            "localhost",
        ] {
            assert!(looks_like_domain(d), "{d}");
        }
        for a in [
            "203.0.113.7",
            "198.51.100.0/24",
            "2001:db8::/32",
            "::1",
            " 10.0.0.1 ",
        ] {
            assert!(!looks_like_domain(a), "{a}");
        }
    }

    fn ctx() -> HostContext {
        HostContext {
            host_addrs: vec!["192.0.2.2".parse().unwrap(), "10.88.0.1".parse().unwrap()],
            dns_servers: vec!["10.255.255.53".parse().unwrap()],
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_json_forms() {
        let p: NetworkPolicy = serde_json::from_str(
            r#"{"default":"deny","allow":[{"cidr":"198.51.100.0/24","protocol":"tcp","ports":[443,"8000-8100"]}],
                "deny":[{"cidr":"2001:db8::/32"}]}"#,
        )
        .unwrap();
        let c = p.check().unwrap();
        assert_eq!(c.default, DefaultAction::Deny);
        assert_eq!(c.allow[0].ports, vec![(443, 443), (8000, 8100)]);
        // Round trip keeps the short form.
        let back: NetworkPolicy =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            serde_json::to_string(&NetworkPolicy::default()).unwrap(),
            r#"{"default":"allow"}"#
        );
    }

    #[test]
    fn validation_errors_are_clear() {
        let bad = |json: &str| {
            serde_json::from_str::<NetworkPolicy>(json)
                .map_err(|e| e.to_string())
                .and_then(|p| p.check().map(|_| ()).map_err(|e| e.to_string()))
                .unwrap_err()
        };
        assert!(
            bad(r#"{"allow":[{"cidr":"300.1.1.1/8"}]}"#)
                .contains("allow[0]: '300.1.1.1/8' is not a CIDR")
        );
        assert!(
            bad(r#"{"deny":[{"cidr":"example.com"}]}"#).contains("domain names go in \"domains\"")
        );
        assert!(
            bad(r#"{"allow":[{"cidr":"1.2.3.4","ports":["90-80"]}]}"#).contains("port range 90-80")
        );
        assert!(bad(r#"{"allow":[{"cidr":"1.2.3.4","ports":[0]}]}"#).contains("ports are 1-65535"));
        assert!(
            bad(r#"{"allow":[{"cidr":"1.2.3.4","protocol":"icmp","ports":[1]}]}"#)
                .contains("icmp has no ports")
        );
        assert!(
            bad(r#"{"allow":[{"cidr":"1.2.3.4","protocol":"sctp"}]}"#).contains("unknown variant")
        );
        assert!(bad(r#"{"allowed":[]}"#).contains("unknown field"));
        assert!(bad(r#"{"default":"maybe"}"#).contains("unknown variant"));
        let many = NetworkPolicy {
            allow: vec![Rule::cidr("1.1.1.1"); MAX_RULES + 1],
            ..Default::default()
        };
        assert!(
            many.check()
                .unwrap_err()
                .to_string()
                .contains("at most 256 rules")
        );
        for bad in ["0", "-1", "1e9"] {
            let e = bad_bw(bad);
            assert!(e.contains("bandwidth_mbps must be between"), "{e}");
        }
    }

    fn bad_bw(v: &str) -> String {
        serde_json::from_str::<NetworkPolicy>(&format!(r#"{{"bandwidth_mbps":{v}}}"#))
            .unwrap()
            .check()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bandwidth() {
        let p: NetworkPolicy = serde_json::from_str(r#"{"bandwidth_mbps":40}"#).unwrap();
        assert_eq!(p.check().unwrap().bandwidth_bps, Some(40_000_000));
        assert_eq!(
            tbf_args(40_000_000).join(" "),
            "root tbf rate 40000000bit burst 100000 latency 50ms"
        );
        assert_eq!(
            tbf_args(1_000_000).join(" "),
            "root tbf rate 1000000bit burst 16384 latency 50ms"
        );
    }

    #[test]
    fn ports_merge_and_hosts_truncate() {
        let r = Rule {
            cidr: "198.51.100.77/24".into(),
            protocol: None,
            ports: vec![
                Port::Range("70-90".into()),
                Port::Single(80),
                Port::Single(91),
                Port::Single(443),
            ],
        }
        .check()
        .unwrap();
        assert_eq!(r.net.to_string(), "198.51.100.0/24");
        assert_eq!(r.ports, vec![(70, 91), (443, 443)]);
    }

    #[test]
    fn evaluation_order() {
        let c = ctx();
        let default = NetworkPolicy::default().check().unwrap();
        let tcp = Some(Protocol::Tcp);
        assert!(default.permits(&c, ip("198.51.100.5"), tcp, Some(80)));
        for p in [
            "169.254.169.254",
            "10.88.0.5",
            "10.88.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "192.0.2.2",
            "fd00:ec2::254",
        ] {
            assert!(
                !default.permits(&c, ip(p), tcp, Some(80)),
                "{p} must be protected"
            );
        }
        assert!(
            default.permits(&c, ip("10.255.255.53"), Some(Protocol::Udp), Some(53)),
            "resolver"
        );
        assert!(!default.permits(&c, ip("10.255.255.53"), tcp, Some(80)));

        // A broad allow never opens protected ranges; one naming them does.
        let p = NetworkPolicy {
            default: DefaultAction::Deny,
            allow: vec![Rule::cidr("0.0.0.0/0"), Rule::tcp("169.254.169.254", &[80])],
            ..Default::default()
        }
        .check()
        .unwrap();
        assert!(p.permits(&c, ip("203.0.113.9"), None, None));
        assert!(!p.permits(&c, ip("10.1.2.3"), tcp, Some(80)));
        assert!(p.permits(&c, ip("169.254.169.254"), tcp, Some(80)));
        assert!(!p.permits(&c, ip("169.254.169.254"), tcp, Some(81)));

        // Allow beats deny (E2B's allowOut/denyOut), ports and protocols narrow.
        let p = NetworkPolicy::from_e2b(None, &["198.51.100.7".into()], &["0.0.0.0/0".into()])
            .unwrap()
            .check()
            .unwrap();
        assert!(p.permits(&c, ip("198.51.100.7"), tcp, Some(1)));
        assert!(!p.permits(&c, ip("198.51.100.8"), tcp, Some(1)));
        let p = NetworkPolicy {
            default: DefaultAction::Deny,
            allow: vec![Rule {
                cidr: "198.51.100.0/24".into(),
                protocol: None,
                ports: vec![Port::Single(53)],
            }],
            ..Default::default()
        }
        .check()
        .unwrap();
        assert!(p.permits(&c, ip("198.51.100.1"), Some(Protocol::Udp), Some(53)));
        assert!(!p.permits(&c, ip("198.51.100.1"), Some(Protocol::Icmp), None));
        assert!(!p.permits(&c, ip("198.51.100.1"), tcp, Some(54)));

        let air = NetworkPolicy::from_e2b(Some(false), &[], &[])
            .unwrap()
            .check()
            .unwrap();
        assert!(!air.permits(&c, ip("10.255.255.53"), Some(Protocol::Udp), Some(53)));
        assert!(!air.permits(&c, ip("198.51.100.1"), tcp, Some(80)));
        let named = NetworkPolicy::from_e2b(
            None,
            &[
                "Example.com.".into(),
                "*.wild.test".into(),
                "1.1.1.1".into(),
            ],
            &["0.0.0.0/0".into()],
        )
        .unwrap();
        assert_eq!(named.domains, vec!["example.com", "*.wild.test"]);
        assert_eq!(named.allow, vec![Rule::cidr("1.1.1.1")]);
        assert!(
            !NetworkPolicy::from_e2b(Some(false), &["a.test".into()], &[])
                .unwrap()
                .air_gapped
        );
        let offline_but = NetworkPolicy::from_e2b(Some(false), &["198.51.100.7".into()], &[])
            .unwrap()
            .check()
            .unwrap();
        assert!(offline_but.permits(&c, ip("198.51.100.7"), tcp, Some(443)));
        assert!(!offline_but.permits(&c, ip("198.51.100.8"), tcp, Some(443)));
    }

    #[test]
    fn nft_text_golden() {
        let p: NetworkPolicy = serde_json::from_str(
            r#"{"default":"deny",
                "allow":[{"cidr":"198.51.100.0/24","protocol":"tcp","ports":[443,"8000-8100"]},
                         {"cidr":"10.9.0.0/16"},
                         {"cidr":"2001:db8::/32","ports":[80]},
                         {"cidr":"203.0.113.7","protocol":"icmp"}],
                "deny":[{"cidr":"0.0.0.0/0","protocol":"udp"}]}"#,
        )
        .unwrap();
        let text = |ops: Vec<NftOp>| ops.iter().map(|o| format!("{o}\n")).collect::<String>();
        let v4 = SandboxAddrs {
            ip: Ipv4Addr::new(10, 88, 0, 7),
            ip6: None,
        };
        let got = text(apply_ops(5, v4, &p.check().unwrap(), &ctx(), &[]));
        let want = "\
add chain inet coppice sbx5
add chain inet coppice sbx5_exempt
flush chain inet coppice sbx5
flush chain inet coppice sbx5_exempt
add rule inet coppice sbx5 ip daddr 198.51.100.0/24 meta l4proto tcp th dport 443 accept
add rule inet coppice sbx5 ip daddr 198.51.100.0/24 meta l4proto tcp th dport 8000-8100 accept
add rule inet coppice sbx5 ip6 daddr 2001:db8::/32 meta l4proto tcp th dport 80 accept
add rule inet coppice sbx5 ip6 daddr 2001:db8::/32 meta l4proto udp th dport 80 accept
add rule inet coppice sbx5 ip daddr 203.0.113.7 meta l4proto icmp accept
add rule inet coppice sbx5 ip daddr 0.0.0.0-255.255.255.255 meta l4proto udp goto policy_reject
add rule inet coppice sbx5 goto policy_reject comment \"default deny\"
add element inet coppice sandbox_policy { 10.88.0.7 : goto sbx5 }
add element inet coppice sandbox_exempt { 10.88.0.7 : jump sbx5_exempt }
add rule inet coppice sbx5_exempt ip daddr 10.9.0.0/16 accept
add element inet coppice airgapped4 { 10.88.0.7 }
delete element inet coppice airgapped4 { 10.88.0.7 }
";
        assert_eq!(got, want);

        // Without exemptions (and with IPv6) the exemption chain and entries are removed;
        // admitted domain pairs the policy drops go in the same transaction.
        let open = NetworkPolicy::default().check().unwrap();
        let ip6: Ipv6Addr = "fd88::7".parse().unwrap();
        let both = SandboxAddrs {
            ip6: Some(ip6),
            ..v4
        };
        let dropped: Vec<ElemKey> = ["198.51.100.42", "2001:db8:10::2a"]
            .iter()
            .filter_map(|d| both.admission(ip(d)))
            .collect();
        assert_eq!(
            v4.admission(ip("2001:db8:10::2a")),
            None,
            "no IPv6 admission without an IPv6 address"
        );
        let got = text(apply_ops(5, both, &open, &ctx(), &dropped));
        assert!(
            got.contains(
                "add element inet coppice sandbox_policy6 { fd88::7 : goto sbx5 }
add element inet coppice sandbox_exempt { 10.88.0.7 : jump sbx5_exempt }
add element inet coppice sandbox_exempt6 { fd88::7 : jump sbx5_exempt }
delete element inet coppice sandbox_exempt { 10.88.0.7 }
delete element inet coppice sandbox_exempt6 { fd88::7 }
delete chain inet coppice sbx5_exempt
"
            ),
            "{got}"
        );
        assert!(got.ends_with(
            "delete element inet coppice airgapped6 { fd88::7 }
add element inet coppice domain_admit4 { 10.88.0.7 . 198.51.100.42 }
delete element inet coppice domain_admit4 { 10.88.0.7 . 198.51.100.42 }
add element inet coppice domain_admit6 { fd88::7 . 2001:db8:10::2a }
delete element inet coppice domain_admit6 { fd88::7 . 2001:db8:10::2a }
"
        ));

        let air = NetworkPolicy {
            air_gapped: true,
            ..p
        }
        .check()
        .unwrap();
        assert_eq!(
            sandbox_rules(&air, &ctx()),
            SandboxRules {
                exempt: vec![],
                policy: vec![NftRule::new(Verdict::Reject, "air-gapped")],
            }
        );
        let got = text(apply_ops(5, v4, &air, &ctx(), &[]));
        assert!(got.ends_with("add element inet coppice airgapped4 { 10.88.0.7 }\n"));
        let default = sandbox_rules(&open, &ctx());
        assert_eq!(
            default.policy,
            vec![NftRule::new(Verdict::Accept, "default allow")]
        );
        assert!(default.exempt.is_empty());

        assert_eq!(
            text(remove_ops(5, both)),
            "add chain inet coppice sbx5
add chain inet coppice sbx5_exempt
add element inet coppice sandbox_policy { 10.88.0.7 : goto sbx5 }
add element inet coppice sandbox_policy6 { fd88::7 : goto sbx5 }
delete element inet coppice sandbox_policy { 10.88.0.7 }
delete element inet coppice sandbox_policy6 { fd88::7 }
add element inet coppice sandbox_exempt { 10.88.0.7 : jump sbx5_exempt }
add element inet coppice sandbox_exempt6 { fd88::7 : jump sbx5_exempt }
delete element inet coppice sandbox_exempt { 10.88.0.7 }
delete element inet coppice sandbox_exempt6 { fd88::7 }
add element inet coppice airgapped4 { 10.88.0.7 }
add element inet coppice airgapped6 { fd88::7 }
delete element inet coppice airgapped4 { 10.88.0.7 }
delete element inet coppice airgapped6 { fd88::7 }
flush chain inet coppice sbx5
delete chain inet coppice sbx5
flush chain inet coppice sbx5_exempt
delete chain inet coppice sbx5_exempt
"
        );
        let shared = nft_shared("coppice", &ctx());
        assert!(shared.contains(
            "elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16"
        ));
        assert!(shared.contains("fc00::/7, fe80::/10"));
        assert!(
            shared.contains("\tset domain_admit6 { type ipv6_addr . ipv6_addr; flags timeout; }\n")
        );
        assert!(shared.contains(
            "meta l4proto tcp reject with tcp reset\n\t\treject with icmpx admin-prohibited"
        ));
        // The shared order: air gap, resolvers, exemptions, protected, the host, the sandbox.
        let egress = egress_rules(&ctx());
        assert_eq!(
            egress,
            [
                "ip saddr @airgapped4 goto policy_reject comment \"air-gapped\"",
                "ip6 saddr @airgapped6 goto policy_reject comment \"air-gapped\"",
                "ip daddr 10.255.255.53 meta l4proto tcp th dport 53 accept comment \"resolver\"",
                "ip daddr 10.255.255.53 meta l4proto udp th dport 53 accept comment \"resolver\"",
                "ip saddr vmap @sandbox_exempt",
                "ip6 saddr vmap @sandbox_exempt6",
                "ip daddr @protected4 goto policy_reject",
                "ip6 daddr @protected6 goto policy_reject",
                "fib daddr type local goto policy_reject comment \"the host\"",
                "ip saddr vmap @sandbox_policy",
                "ip6 saddr vmap @sandbox_policy6",
            ]
        );
        let to_host = to_host_rules(&ctx());
        assert_eq!(to_host[..6], egress[..6]);
        assert_eq!(to_host[6..], ["goto policy_reject comment \"the host\""]);
        assert!(shared.contains(&format!("\tchain sandbox_egress {{\n\t\t{}\n", egress[0])));
    }

    #[test]
    fn ipv6_nameservers_only_through_the_resolver() {
        let ns6 = ip("2001:db8:ffff::2");
        let base = HostContext {
            dns_servers: vec![ip("10.255.255.53"), ns6],
            ..ctx()
        };
        let with_resolver = HostContext {
            resolver: Some(ip("10.88.0.1")),
            resolver6: Some("fd88::1".parse().unwrap()),
            ..base.clone()
        };
        // The IPv6 listener did not start: the IPv6 nameserver would be a way around it.
        let v4_resolver = HostContext {
            resolver6: None,
            ..with_resolver.clone()
        };
        let dns_rules = |c: &HostContext| {
            egress_rules(c)
                .into_iter()
                .filter(|r| r.contains("dport 53"))
                .collect::<Vec<_>>()
        };
        let ns6_rules = [
            "ip6 daddr 2001:db8:ffff::2 meta l4proto tcp th dport 53 accept comment \"resolver\"",
            "ip6 daddr 2001:db8:ffff::2 meta l4proto udp th dport 53 accept comment \"resolver\"",
        ];
        assert_eq!(dns_rules(&base)[2..], ns6_rules, "no resolver: as before");
        assert_eq!(
            dns_rules(&with_resolver)[..4],
            [
                "ip daddr 10.88.0.1 meta l4proto tcp th dport 53 accept comment \"coppice resolver\"",
                "ip daddr 10.88.0.1 meta l4proto udp th dport 53 accept comment \"coppice resolver\"",
                "ip6 daddr fd88::1 meta l4proto tcp th dport 53 accept comment \"coppice resolver\"",
                "ip6 daddr fd88::1 meta l4proto udp th dport 53 accept comment \"coppice resolver\"",
            ]
        );
        assert_eq!(dns_rules(&with_resolver)[6..], ns6_rules);
        let v4_only = dns_rules(&v4_resolver);
        assert_eq!(v4_only.len(), 4, "{v4_only:?}");
        assert!(
            v4_only.iter().all(|r| r.starts_with("ip daddr")),
            "{v4_only:?}"
        );

        // permits() agrees, for every sandbox (a domain-rule one included) and both protocols.
        let deny = NetworkPolicy {
            default: DefaultAction::Deny,
            domains: vec!["api.allowed.test".into()],
            ..Default::default()
        }
        .check()
        .unwrap();
        let gw6 = ip("fd88::1");
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let p = |c: &HostContext, dst| deny.permits(c, dst, Some(proto), Some(53));
            assert!(p(&base, ns6) && p(&with_resolver, ns6) && !p(&v4_resolver, ns6));
            assert!(p(&with_resolver, gw6) && !p(&v4_resolver, gw6) && !p(&base, gw6));
            assert!(p(&v4_resolver, ip("10.255.255.53")) && p(&v4_resolver, ip("10.88.0.1")));
            assert!(!deny.permits(&with_resolver, gw6, Some(proto), Some(54)));
        }
    }

    #[test]
    fn domains() {
        let p: NetworkPolicy = serde_json::from_str(
            r#"{"default":"deny","domains":["api.allowed.test","*.wild.test","xn--bcher-kva.test","_srv.a-b.test"]}"#,
        )
        .unwrap();
        let c = p.check().unwrap();
        assert!(c.allows_name("api.allowed.test"));
        assert!(c.allows_name("API.Allowed.test."));
        assert!(c.allows_name("x.wild.test"));
        assert!(c.allows_name("a.b.wild.test"));
        assert!(
            !c.allows_name("wild.test"),
            "a wildcard does not match its own base"
        );
        assert!(!c.allows_name("xwild.test"));
        assert!(!c.allows_name("allowed.test"));
        assert!(!c.allows_name("evil.test"));
        assert!(!c.allows_name("api.allowed.test.evil.test"));
        assert!(
            NetworkPolicy::default()
                .check()
                .unwrap()
                .allows_name("anything.test")
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap()["domains"][1],
            serde_json::json!("*.wild.test")
        );

        let bad = |d: &str| {
            NetworkPolicy {
                domains: vec![d.into()],
                ..Default::default()
            }
            .check()
            .unwrap_err()
            .to_string()
        };
        assert!(bad("Example.COM").contains("must be written 'example.com'"));
        assert!(bad("example.com.").contains("must be written 'example.com'"));
        assert!(bad("bücher.test").contains("'xn--bcher-kva.test'"));
        assert!(bad("*.Wild.test").contains("'*.wild.test'"));
        assert!(bad("a.*.test").contains("only allowed as the whole first label"));
        assert!(bad("*").contains("domains[0]"));
        assert!(bad("*.").contains("domains[0]"));
        assert!(bad("-a.test").contains("label '-a'"));
        assert!(bad(&format!("{}.test", "a".repeat(64))).contains("1-63"));
        assert!(bad(&["abcdefghi"; 26].join(".")).contains("253"));
        assert!(bad("a..test").contains("domains[0]"));
        assert!(bad("1.2.3.4").contains("is an address"));
        assert!(bad("a b.test").contains("domains[0]"));
        let many = NetworkPolicy {
            domains: vec!["a.test".into(); MAX_DOMAINS + 1],
            ..Default::default()
        };
        assert!(
            many.check()
                .unwrap_err()
                .to_string()
                .contains("at most 256 domains")
        );

        // The compiled chain: resolver and proxy first, admitted pairs after the protected
        // rejections, before broad allows; no proxy rule without domains.
        let ctx = HostContext {
            resolver: Some(ip("10.88.0.1")),
            sni_proxy_port: Some(15080),
            sni_proxy6: Some("fd88::1".parse().unwrap()),
            ..ctx()
        };
        let rules = sandbox_rules(&c, &ctx);
        assert_eq!(
            rules
                .exempt
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
            [
                "ip daddr 10.88.0.1 meta l4proto tcp th dport 15080 accept comment \"domain check proxy\"",
                "ip6 daddr fd88::1 meta l4proto tcp th dport 15080 accept comment \"domain check proxy\""
            ]
        );
        let v4_only = HostContext {
            sni_proxy6: None,
            ..ctx.clone()
        };
        assert_eq!(sandbox_rules(&c, &v4_only).exempt.len(), 1);
        assert_eq!(
            egress_rules(&ctx)[2..4],
            [
                "ip daddr 10.88.0.1 meta l4proto tcp th dport 53 accept comment \"coppice resolver\"",
                "ip daddr 10.88.0.1 meta l4proto udp th dport 53 accept comment \"coppice resolver\"",
            ]
        );
        assert_eq!(
            rules.policy,
            [NftRule::new(Verdict::Reject, "default deny")],
            "admitted addresses are reached only through the proxy"
        );
        let plain = sandbox_rules(&NetworkPolicy::default().check().unwrap(), &ctx);
        assert!(plain.exempt.is_empty(), "no proxy rule without domains");
        let air = NetworkPolicy {
            air_gapped: true,
            ..p
        }
        .check()
        .unwrap();
        assert!(sandbox_rules(&air, &ctx).exempt.is_empty());
        assert!(c.permits(&ctx, ip("10.88.0.1"), Some(Protocol::Udp), Some(53)));
        assert!(c.permits(&ctx, ip("10.88.0.1"), Some(Protocol::Tcp), Some(15080)));
        assert!(c.permits(&ctx, ip("fd88::1"), Some(Protocol::Tcp), Some(15080)));
        assert!(!c.permits(&ctx, ip("fd88::1"), Some(Protocol::Udp), Some(53)));
        assert!(!c.permits(&ctx, ip("10.88.0.1"), Some(Protocol::Tcp), Some(22)));
        assert!(!air.permits(&ctx, ip("10.88.0.1"), Some(Protocol::Udp), Some(53)));
    }

    #[test]
    fn nameservers() {
        assert_eq!(
            parse_nameservers("# x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch a\n"),
            vec![ip("10.255.255.53"), ip("fe80::1")]
        );
        assert!(ctx().is_protected_addr(IpAddr::V6(METADATA_V6)));
        assert!(ctx().is_protected_addr(IpAddr::V4(METADATA_V4)));
        // What a name must never open over IPv6 either (AAAA answers, dns.rs).
        for a in [
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "fd88::3",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(ctx().is_protected_addr(ip(a)), "{a}");
        }
        assert!(!ctx().is_protected_addr(ip("2001:db8:10::29")));
    }
}
