//! The nft compiler: a checked policy (crate::policy) to nftables operations and text, pure
//! and golden-tested. The operations go to the kernel through `nftwire` (per sandbox, over
//! netlink) and `nftrun` (shared objects).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::policy::{
    CheckedPolicy, CheckedRule, DefaultAction, HostContext, Protocol, protected_ranges,
};

/// Name of the verdict map (sandbox address → `goto sbx<slot>`), declared with the table.
pub const POLICY_MAP: &str = "sandbox_policy";
/// The same for the sandboxes' IPv6 addresses (sandbox IPv6 address → `goto sbx<slot>`).
pub const POLICY_MAP6: &str = "sandbox_policy6";
/// Verdict maps of exemptions (sandbox address → `jump sbx<slot>_exempt`), for sandboxes
/// whose policy opens protected destinations or has domains.
pub const EXEMPT_MAP: &str = "sandbox_exempt";
/// The same for the sandboxes' IPv6 addresses.
pub const EXEMPT_MAP6: &str = "sandbox_exempt6";
/// Addresses of air-gapped sandboxes, rejected before anything else.
pub const AIRGAP_SET: &str = "airgapped4";
/// The same for air-gapped sandboxes' IPv6 addresses.
pub const AIRGAP_SET6: &str = "airgapped6";
/// Shared chain every rejection jumps to.
pub const REJECT_CHAIN: &str = "policy_reject";
/// Shared chain the forward base chain jumps to for sandbox traffic through the host.
pub const EGRESS_CHAIN: &str = "sandbox_egress";
/// Shared chain the input base chain jumps to for sandbox traffic to the host itself.
pub const HOST_CHAIN: &str = "sandbox_to_host";

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
pub fn common_rules(ctx: &HostContext) -> Vec<String> {
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
    AddRule {
        /// Chain the rule is appended to.
        chain: String,
        /// The rule.
        rule: NftRule,
    },
    /// Adds an element to a set or map (no change when the same element exists).
    AddElem {
        /// Set or map the element goes in.
        set: &'static str,
        /// Key of the element.
        key: ElemKey,
        /// Its value in a map; [`ElemData::None`] for a set.
        data: ElemData,
    },
    /// Deletes an element of a set or map.
    DelElem {
        /// Set or map to delete from.
        set: &'static str,
        /// Key of the element.
        key: ElemKey,
    },
}

/// The key of a set element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ElemKey {
    /// A sandbox's address, as in the verdict maps and the air-gap sets.
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
    /// No value: an element of a set.
    None,
    /// `goto <chain>`: the chain decides, nothing after it runs.
    Goto(String),
    /// `jump <chain>`: the chain may return to the rule after the lookup.
    Jump(String),
}

/// One rule of a sandbox's chains: every packet to `daddr` (of its family; `None`: any packet)
/// with IP protocol `l4proto` and destination port in `dport` gets `verdict`.
#[derive(Debug, Clone, PartialEq)]
pub struct NftRule {
    /// Destination network; `None`: any destination.
    pub daddr: Option<IpNet>,
    /// IP protocol number (`IPPROTO_*`); `None`: any protocol.
    pub l4proto: Option<u8>,
    /// Destination port range, inclusive; `None`: any port.
    pub dport: Option<(u16, u16)>,
    /// What happens to a matching packet.
    pub verdict: Verdict,
    /// Comment attached to the rule, shown by `nft list`.
    pub comment: Option<&'static str>,
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// `goto` [`REJECT_CHAIN`].
    Reject,
}

/// IP protocol numbers of the protocols policy rules name.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMP (IPv4).
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

impl NftRule {
    pub(crate) fn new(verdict: Verdict, comment: &'static str) -> NftRule {
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
    /// The sandbox's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, when the host has IPv6.
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

    pub(crate) fn keys(&self) -> impl Iterator<Item = ElemKey> {
        std::iter::once(IpAddr::V4(self.ip))
            .chain(self.ip6.map(IpAddr::V6))
            .map(ElemKey::Addr)
    }

    pub(crate) fn add(
        &self,
        ops: &mut Vec<NftOp>,
        v4: &'static str,
        v6: &'static str,
        data: ElemData,
    ) {
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

    pub(crate) fn delete(&self, ops: &mut Vec<NftOp>, v4: &'static str, v6: &'static str) {
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

/// The rules of one sandbox's exemption and policy chains for `policy` on this host.
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

/// The nft address family keyword of a network: `ip` or `ip6`.
pub fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

/// One policy rule as nft rules: one per protocol and port range (the kernel has no "tcp or
/// udp" without a set, and sets in per-sandbox chains would be one more object per sandbox).
pub fn rule_list(r: &CheckedRule, verdict: Verdict) -> Vec<NftRule> {
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
pub fn net_text(net: &IpNet) -> String {
    match net {
        IpNet::V4(n) if n.prefix_len() == 0 => "0.0.0.0-255.255.255.255".into(),
        IpNet::V6(n) if n.prefix_len() == 0 => "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into(),
        IpNet::V4(n) if n.prefix_len() == 32 => n.addr().to_string(),
        IpNet::V6(n) if n.prefix_len() == 128 => n.addr().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MAX_DOMAINS, NetworkPolicy};

    use crate::policy::host::test_host as ctx;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
}
