//! The host's `inet coppice` nft table as text: pure, so a test reads the exact ruleset.

use std::net::Ipv4Addr;

use super::config::{Ipv4Subnet, NFT_TABLE, NetConfig};

/// Base chains of the table and their hooks (declared before they are flushed).
pub(super) const BASE_CHAINS: [(&str, &str); 3] = [
    (
        "input",
        "type filter hook input priority filter - 5; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority filter - 5; policy accept;",
    ),
    (
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
];

/// Open TCP connections one sandbox may hold to the daemon's services on the bridge (the
/// resolver and the domain check proxy cap theirs lower still, per service).
pub const HOST_CONNS_PER_SANDBOX: usize = 256;

/// The complete `inet coppice` table, as an `nft -f` script that is idempotent: it creates the
/// table if needed, flushes the rules of its base chains only (the per-sandbox network policy
/// chains, sets and maps of [`crate::policy`] keep working while the daemon restarts), and
/// declares everything again. Other tables are untouched, and our base chains only
/// `accept`/`drop` bridge traffic, so the host's own rules still apply.
pub fn host_ruleset(cfg: &NetConfig) -> String {
    let mut s = format!("table inet {NFT_TABLE} {{\n");
    for (name, hook) in BASE_CHAINS {
        s.push_str(&format!("\tchain {name} {{ {hook} }}\n"));
    }
    s.push_str("}\n");
    for (name, _) in BASE_CHAINS {
        s.push_str(&format!("flush chain inet {NFT_TABLE} {name}\n"));
    }
    s + &ruleset_body(cfg)
}

/// Fallback when [`host_ruleset`] cannot redeclare a chain (its hook or priority changed
/// between versions): drop the whole table and create it again.
pub fn host_ruleset_recreate(cfg: &NetConfig) -> String {
    format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n{}",
        ruleset_body(cfg)
    )
}

fn ruleset_body(cfg: &NetConfig) -> String {
    let br = &cfg.bridge;
    let net = Ipv4Subnet::new(
        Ipv4Addr::from(u32::from(cfg.subnet.base) & cfg.subnet.mask()),
        cfg.subnet.prefix,
    );
    let v6 = ruleset_v6(cfg);
    format!(
        r#"table inet {NFT_TABLE} {{
	comment "Coppice sandboxes on {br} ({net}); managed by coppice, reloaded at start"

	# Host services sandboxes may reach on the bridge, e.g. udp . 53 for the host-side
	# resolver of the network policy. Empty: sandboxes reach nothing on the host.
	set host_services {{
		type inet_proto . inet_service
	}}
	# Open connections per sandbox address to those services (the resolver's TCP port, the
	# domain check proxy): one sandbox cannot take the daemon's descriptors.
	set host_conns4 {{
		type ipv4_addr; size 65535; flags dynamic;
	}}
	set host_conns6 {{
		type ipv6_addr; size 65535; flags dynamic;
	}}

	# Network policy (filled by crate::policy, with the maps and sets they use): every
	# sandbox's traffic through the host, and to it, goes through these shared chains, which
	# end in that sandbox's own chain. A sandbox without a policy entry returns from
	# sandbox_egress to the rules below; IPv6 from it is dropped (it only flows under a policy).
	chain {egress} {{
	}}
	chain {to_host} {{
	}}

	chain input {{
		type filter hook input priority filter - 5; policy accept;
		iifname != "{br}" accept
		ct state established,related accept
		icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept comment "IPv6 neighbour discovery"
		meta l4proto tcp ct state new meta l4proto . th dport @host_services add @host_conns4 {{ ip saddr ct count over {HOST_CONNS_PER_SANDBOX} }} counter reject with tcp reset comment "connections per sandbox"
		meta l4proto tcp ct state new meta l4proto . th dport @host_services add @host_conns6 {{ ip6 saddr ct count over {HOST_CONNS_PER_SANDBOX} }} counter reject with tcp reset comment "connections per sandbox"
		meta l4proto . th dport @host_services accept
		jump {to_host}
		counter drop comment "sandbox -> host"
	}}

	chain forward {{
		type filter hook forward priority filter - 5; policy accept;
		iifname "{br}" ip saddr != {net} counter drop comment "spoofed source"
{v6_spoof}		oifname "{br}" ct state established,related accept
		iifname "{br}" jump {egress}
		iifname "{br}" oifname != "{br}" meta nfproto ipv4 accept
		iifname "{br}" counter drop comment "sandbox -> sandbox via host, or ipv6 without a policy"
		oifname "{br}" counter drop comment "new connection into the bridge"
	}}

	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {net} oifname != "{br}" counter masquerade
{v6_nat}	}}
}}
"#,
        v6_spoof = v6.spoof,
        v6_nat = v6.nat,
        egress = crate::linux::nftcompile::EGRESS_CHAIN,
        to_host = crate::linux::nftcompile::HOST_CHAIN,
    )
}

/// The IPv6 lines of the base chains (empty strings with IPv6 off).
struct RulesetV6 {
    spoof: String,
    nat: String,
}

fn ruleset_v6(cfg: &NetConfig) -> RulesetV6 {
    let br = &cfg.bridge;
    match cfg.ipv6 {
        None => RulesetV6 {
            spoof: String::new(),
            nat: String::new(),
        },
        Some(v6) => RulesetV6 {
            spoof: format!(
                "\t\tiifname \"{br}\" ip6 saddr != {v6} counter drop comment \"spoofed source\"\n"
            ),
            nat: format!("\t\tip6 saddr {v6} oifname != \"{br}\" counter masquerade\n"),
        },
    }
}
