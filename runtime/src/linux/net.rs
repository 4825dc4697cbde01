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

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::process::Stdio;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, IoContext, Result};

/// Name of the nft table that holds every Coppice rule (`table inet coppice`).
pub const NFT_TABLE: &str = "coppice";

/// Prefix of the host end of every sandbox veth (`cps<slot>`).
pub const HOST_IF_PREFIX: &str = "cps";

/// Name of the sandbox end inside its netns.
pub const SANDBOX_IF: &str = "eth0";

/// An IPv4 network: base address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Subnet {
    pub const fn new(base: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Subnet { base, prefix }
    }

    /// Number of addresses in the subnet (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix.min(32)))
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base) & self.mask()
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Host networking settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host bridge every sandbox veth joins.
    pub bridge: String,
    /// Sandbox addresses are `base + 2 + slot`.
    pub subnet: Ipv4Subnet,
    /// The bridge's address: every sandbox's default gateway.
    pub gateway: Ipv4Addr,
    /// IPv6 for sandboxes (the bridge's address and prefix, e.g. fd88::1/64); None: IPv4 only.
    pub ipv6: Option<Ipv6Subnet>,
}

/// The sandboxes' IPv6 network, given as the bridge's address and the prefix length
/// (`fd88::1/64`): sandbox addresses are `network + 2 + slot`, like the IPv4 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Subnet {
    pub gateway: Ipv6Addr,
    pub prefix: u8,
}

/// The default sandbox IPv6 network: a ULA prefix, the bridge at ::1.
pub const DEFAULT_IPV6: &str = "fd88::1/64";

impl Ipv6Subnet {
    /// Parses `fd88::1/64` (address of the bridge / prefix length, 64..=120).
    pub fn parse(s: &str) -> Result<Ipv6Subnet> {
        let bad = || {
            Error::InvalidArgument(format!(
                "network_ipv6 '{s}' must be the bridge's IPv6 address and a prefix length \
                 between 64 and 120, like {DEFAULT_IPV6} (empty: IPv4 only)"
            ))
        };
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let gateway: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(64..=120).contains(&prefix) {
            return Err(bad());
        }
        let net = Ipv6Subnet { gateway, prefix };
        if net.network() == gateway {
            return Err(bad());
        }
        Ok(net)
    }

    fn mask(&self) -> u128 {
        u128::MAX << (128 - u32::from(self.prefix.min(128)))
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.gateway) & self.mask())
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.network())
    }
}

impl fmt::Display for Ipv6Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bridge: "coppice0".into(),
            subnet: Ipv4Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16),
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            ipv6: Some(Ipv6Subnet::parse(DEFAULT_IPV6).expect("static")),
        }
    }
}

/// Host-side name of slot `slot`'s veth: `cps<slot>` (at most 13 of the 15 allowed bytes).
pub fn host_ifname(slot: u32) -> String {
    format!("{HOST_IF_PREFIX}{slot}")
}

/// Per-netns sysctls every sandbox gets: root-in-userns may bind low ports and ping without
/// CAP_NET_RAW (the netns is owned by the initial user ns, so it has neither capability).
pub const SANDBOX_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_unprivileged_port_start", "0"),
    ("net/ipv4/ping_group_range", "0 2147483647"),
];

/// Everything [`create`] will set up for one slot (pure data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNetPlan {
    pub slot: u32,
    pub host_if: String,
    pub sandbox_if: &'static str,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    /// Paths under `/proc/sys/` of the sandbox's netns, and their values.
    pub sysctls: &'static [(&'static str, &'static str)],
    /// The sandbox's IPv6 address and the bridge's (its gateway), with IPv6 on.
    pub ip6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
}

/// [`SANDBOX_SYSCTLS`] plus IPv6's: no duplicate address detection (each address is unique by
/// construction, and DAD would hold the address back for a second) and no router
/// advertisements (the route is static).
pub const SANDBOX_SYSCTLS_V6: &[(&str, &str)] = &[
    ("net/ipv4/ip_unprivileged_port_start", "0"),
    ("net/ipv4/ping_group_range", "0 2147483647"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
];

impl NetConfig {
    /// Address of the sandbox in `slot`: slot 0 → 10.88.0.2, slot 1 → 10.88.0.3, …
    pub fn sandbox_ip(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::from(self.subnet.base)
                .wrapping_add(2)
                .wrapping_add(slot),
        )
    }

    /// IPv6 address of the sandbox in `slot` (with IPv6 on): fd88::2 for slot 0, …
    pub fn sandbox_ip6(&self, slot: u32) -> Option<Ipv6Addr> {
        self.ipv6.map(|v6| {
            Ipv6Addr::from(
                u128::from(v6.network())
                    .wrapping_add(2)
                    .wrapping_add(u128::from(slot)),
            )
        })
    }

    /// Slots that fit in the subnet (network, gateway and broadcast addresses excluded).
    pub fn max_slots(&self) -> u32 {
        let v6 = self
            .ipv6
            .map(|v6| (1u64 << (128 - u32::from(v6.prefix)).min(63)).saturating_sub(3))
            .unwrap_or(u64::MAX);
        self.subnet
            .size()
            .saturating_sub(3)
            .min(v6)
            .min(u64::from(u32::MAX)) as u32
    }

    pub fn host_ifname(&self, slot: u32) -> String {
        host_ifname(slot)
    }

    pub fn plan(&self, slot: u32) -> Result<SandboxNetPlan> {
        if slot >= self.max_slots() {
            return Err(Error::InvalidArgument(format!(
                "network slot {slot} does not fit in {} ({} slots)",
                self.subnet,
                self.max_slots()
            )));
        }
        Ok(SandboxNetPlan {
            slot,
            host_if: host_ifname(slot),
            sandbox_if: SANDBOX_IF,
            ip: self.sandbox_ip(slot),
            prefix: self.subnet.prefix,
            gateway: self.gateway,
            bridge: self.bridge.clone(),
            sysctls: if self.ipv6.is_some() {
                SANDBOX_SYSCTLS_V6
            } else {
                SANDBOX_SYSCTLS
            },
            ip6: self
                .ipv6
                .zip(self.sandbox_ip6(slot))
                .map(|(v6, ip)| (ip, v6.prefix, v6.gateway)),
        })
    }

    /// A fixed, locally administered MAC for the bridge (02:63:70 + low gateway bytes), so the
    /// bridge's address does not change whenever a port with a lower MAC joins (which would
    /// leave every sandbox with a stale ARP entry for its gateway).
    pub fn bridge_mac(&self) -> [u8; 6] {
        let g = self.gateway.octets();
        [0x02, 0x63, 0x70, g[1], g[2], g[3]]
    }
}

/// Base chains of the table and their hooks (declared before they are flushed).
const BASE_CHAINS: [(&str, &str); 3] = [
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

/// The complete `inet coppice` table, as an `nft -f` script that is idempotent: it creates the
/// table if needed, flushes the rules of its base chains only (the per-sandbox network policy
/// chains, sets and maps of [`crate::policy`] keep working while the daemon restarts), and
/// declares everything again. Other tables are untouched, and our base chains only
/// `accept`/`drop` bridge traffic, so the host's own rules still apply.
/// Open TCP connections one sandbox may hold to the daemon's services on the bridge (the
/// resolver and the domain check proxy cap theirs lower still, per service).
pub const HOST_CONNS_PER_SANDBOX: usize = 256;

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

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => Error::Io {
            context: what,
            source: m.to_io(),
        },
        other => Error::Internal(format!("{what}: {other}")),
    }
}

fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A host-netns rtnetlink handle whose connection runs on the current tokio runtime and ends
/// when the handle is dropped.
fn host_handle() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().ctx(|| "opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Looks a link up by name: `Ok(None)` when it does not exist.
async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

/// Makes the host ready for sandboxes: the bridge (with its gateway address, up), IPv4
/// forwarding, and the `inet coppice` nft table. Idempotent; safe to call at every start.
pub async fn ensure_host(cfg: &NetConfig) -> Result<()> {
    let h = host_handle()?;
    let link = match link_by_name(&h, &cfg.bridge).await? {
        Some(l) => l,
        None => {
            let msg = LinkBridge::new(&cfg.bridge)
                .address(cfg.bridge_mac().to_vec())
                .build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) if nl_errno(&e) == Some(libc::EOPNOTSUPP) => {
                    return Err(Error::HostUnsupported(format!(
                        "cannot create bridge {}: the kernel has no bridge support (CONFIG_BRIDGE)",
                        cfg.bridge
                    )));
                }
                Err(e) => return Err(nl_err(format!("creating bridge {}", cfg.bridge))(e)),
            }
            link_by_name(&h, &cfg.bridge)
                .await?
                .ok_or_else(|| Error::internal(format!("bridge {} vanished", cfg.bridge)))?
        }
    };
    let index = link.header.index;
    let has_gateway = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing bridge addresses"))?
        .iter()
        .any(|a| {
            a.header.prefix_len == cfg.subnet.prefix
                && a.attributes.iter().any(|at| {
                    matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == cfg.gateway)
                })
        });
    if !has_gateway {
        match h
            .address()
            .add(index, IpAddr::V4(cfg.gateway), cfg.subnet.prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(nl_err(format!("adding {} to {}", cfg.gateway, cfg.bridge))(
                    e,
                ));
            }
        }
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting {} up", cfg.bridge)))?;
    }
    if let Some(v6) = cfg.ipv6 {
        ensure_bridge_v6(&h, index, &cfg.bridge, v6).await?;
    }
    drop(h);

    let fwd = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(fwd)
        .ctx(|| format!("reading {fwd}"))?
        .trim()
        != "1"
    {
        write_existing(fwd, "1")?;
    }

    // Fast path: this process already loaded exactly this ruleset and the table is still
    // there (one netlink round trip instead of an `nft` exec, ~10 ms here).
    let ruleset = host_ruleset(cfg);
    let cached = LOADED_RULESET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        == Some(ruleset.as_str());
    if cached && nft_table_exists(NFT_TABLE).unwrap_or(false) {
        return Ok(());
    }
    load_ruleset(cfg).await
}

/// Checks that the host can give sandboxes IPv6 and turns IPv6 forwarding on; `Err` says why
/// not (the daemon then runs IPv4 only). `proc_sys` is `/proc/sys` (a copy in tests).
/// Forwarding makes the kernel ignore router advertisements on interfaces with `accept_ra=1`,
/// which would drop the host's own autoconfigured addresses and default route: those
/// interfaces are switched to `accept_ra=2` (accept them even when forwarding) first.
pub fn prepare_ipv6_host(proc_sys: &std::path::Path) -> std::result::Result<(), String> {
    let conf = proc_sys.join("net/ipv6/conf");
    let read = |p: std::path::PathBuf| fs::read_to_string(&p).map(|s| s.trim().to_string());
    match read(conf.join("all/disable_ipv6")) {
        Err(e) => return Err(format!("the kernel has no IPv6 ({e})")),
        Ok(v) if v != "0" => {
            return Err("IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1)".into());
        }
        Ok(_) => {}
    }
    if read(conf.join("default/disable_ipv6")).ok().as_deref() == Some("1") {
        return Err(
            "new interfaces get no IPv6 on this host (net.ipv6.conf.default.disable_ipv6=1)".into(),
        );
    }
    if read(conf.join("all/forwarding")).ok().as_deref() == Some("1") {
        return Ok(());
    }
    let entries = fs::read_dir(&conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
    for entry in entries.flatten() {
        let ra = entry.path().join("accept_ra");
        if entry.file_name() != "all" && read(ra.clone()).ok().as_deref() == Some("1") {
            fs::write(&ra, "2").map_err(|e| format!("writing 2 to {}: {e}", ra.display()))?;
        }
    }
    let fwd = conf.join("all/forwarding");
    fs::write(&fwd, "1").map_err(|e| format!("writing 1 to {}: {e}", fwd.display()))
}

/// Gives the bridge its IPv6 address (no duplicate address detection: the address would stay
/// tentative, unusable, for a second after the first sandbox joins).
async fn ensure_bridge_v6(h: &Handle, index: u32, bridge: &str, v6: Ipv6Subnet) -> Result<()> {
    let dad = format!("/proc/sys/net/ipv6/conf/{bridge}/accept_dad");
    if fs::read_to_string(&dad)
        .map(|v| v.trim() != "0")
        .unwrap_or(false)
    {
        write_existing(&dad, "0")?;
    }
    let has = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing bridge addresses"))?
        .iter()
        .any(|a| {
            a.header.prefix_len == v6.prefix
                && a.attributes.iter().any(
                    |at| matches!(at, AddressAttribute::Address(IpAddr::V6(ip)) if *ip == v6.gateway),
                )
        });
    if has {
        return Ok(());
    }
    match h
        .address()
        .add(index, IpAddr::V6(v6.gateway), v6.prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(format!(
            "adding {}/{} to {bridge}",
            v6.gateway, v6.prefix
        ))(e)),
    }
}

/// Loads [`host_ruleset`] unconditionally (flushing our rules, keeping our sets' elements);
/// falls back to [`host_ruleset_recreate`] when a chain cannot be redeclared.
pub async fn load_ruleset(cfg: &NetConfig) -> Result<()> {
    let ruleset = host_ruleset(cfg);
    if let Err(first) = nft_load(&ruleset).await {
        if matches!(first, Error::HostUnsupported(_)) {
            return Err(first);
        }
        tracing::warn!(error = %first, "reloading the nft table in place failed; recreating it");
        nft_load(&host_ruleset_recreate(cfg)).await?;
    }
    *LOADED_RULESET.lock().unwrap_or_else(|e| e.into_inner()) = Some(ruleset);
    Ok(())
}

/// The ruleset this process last loaded with [`ensure_host`].
static LOADED_RULESET: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Whether `table inet <name>` exists: one NFT_MSG_GETTABLE over nfnetlink, no exec.
pub fn nft_table_exists(name: &str) -> io::Result<bool> {
    use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    const NLMSG_ERROR: u16 = 2;

    let sock = Socket::new(NETLINK_NETFILTER)?;
    let mut name_z = name.as_bytes().to_vec();
    name_z.push(0);
    let attr_len = 4 + name_z.len();
    let total = 16 + 4 + ((attr_len + 3) & !3);
    let mut req = Vec::with_capacity(total);
    req.extend((total as u32).to_ne_bytes());
    req.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // sequence number
    req.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend([libc::NFPROTO_INET as u8, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id
    req.extend((attr_len as u16).to_ne_bytes());
    req.extend(NFTA_TABLE_NAME.to_ne_bytes());
    req.extend(&name_z);
    req.resize(total, 0);
    sock.send(&req, 0)?;

    let mut found = false;
    for _ in 0..8 {
        let (buf, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > buf.len() {
                break;
            }
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                found = true;
            } else if kind == NLMSG_ERROR && len >= 20 {
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                return match -err {
                    0 => Ok(found),
                    libc::ENOENT => Ok(false),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            off += (len + 3) & !3;
        }
    }
    Ok(found)
}

/// Removes what [`ensure_host`] made: the nft table and the bridge (IP forwarding is left as
/// it is). For uninstall and tests; sandboxes must be gone first.
pub async fn remove_host(cfg: &NetConfig) -> Result<()> {
    let _ = nft_load(&format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
    ))
    .await;
    destroy(&cfg.bridge).await
}

/// Runs `nft -f -` with `script` on stdin.
pub async fn nft_load(script: &str) -> Result<()> {
    let mut child = match tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::HostUnsupported(
                "the `nft` command (nftables) is not installed; sandbox networking needs it \
                 (Debian: apt-get install nftables)"
                    .into(),
            ));
        }
        Err(e) => return Err(Error::io("running nft")(e)),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .ctx(|| "writing the ruleset to nft")?;
    drop(stdin);
    let out = child.wait_with_output().await.ctx(|| "waiting for nft")?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("Operation not supported") || err.contains("Protocol not supported") {
        return Err(Error::HostUnsupported(format!(
            "the kernel rejected the nftables ruleset (nf_tables, nft_nat, nft_ct needed): {err}"
        )));
    }
    Err(Error::Internal(format!(
        "nft -f failed ({}): {err}",
        out.status
    )))
}

/// One sandbox's network: its netns (alive while `netns` is open or a process is inside) and
/// the host end of its veth.
#[derive(Debug)]
pub struct SandboxNet {
    pub slot: u32,
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub netns: OwnedFd,
}

/// Creates slot `slot`'s netns, veth pair, addresses and routes. The bridge must exist
/// ([`ensure_host`]). A leftover `cps<slot>` from a crash is replaced.
pub async fn create(cfg: &NetConfig, slot: u32) -> Result<SandboxNet> {
    prepare(cfg, slot).await?.wire().await
}

/// A sandbox netns that exists but is not wired to the bridge yet. Splitting the two lets the
/// sandbox start (it only needs to join the netns) while its veth is being set up.
pub struct PendingNet {
    plan: SandboxNetPlan,
    netns: OwnedFd,
    ns_sock: OwnedFd,
}

/// Creates the netns, its sysctls and a netlink socket inside it, from a short-lived thread.
pub async fn prepare(cfg: &NetConfig, slot: u32) -> Result<PendingNet> {
    let plan = cfg.plan(slot)?;
    let (netns, ns_sock) = new_netns(plan.sysctls).await?;
    Ok(PendingNet {
        plan,
        netns,
        ns_sock,
    })
}

impl PendingNet {
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Wires the veth (host end on the bridge, `eth0` inside), addresses and routes.
    pub async fn wire(self) -> Result<SandboxNet> {
        wire(self.plan, self.netns, self.ns_sock).await
    }
}

async fn wire(plan: SandboxNetPlan, netns: OwnedFd, ns_sock: OwnedFd) -> Result<SandboxNet> {
    let slot = plan.slot;
    // SAFETY: `ns_sock` is a netlink socket we own; ownership moves into the TokioSocket.
    let ns_sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(ns_sock.into_raw_fd()) };
    let (conn, ns, _) = rtnetlink::from_socket(ns_sock);
    tokio::spawn(conn);
    let host = host_handle()?;

    let bridge = link_by_name(&host, &plan.bridge).await?.ok_or_else(|| {
        Error::Unavailable(format!(
            "bridge {} is missing (ensure_host not run?)",
            plan.bridge
        ))
    })?;

    // veth: host end joins the bridge and comes up; the peer is born inside the netns as eth0.
    let peer = single_queue(
        LinkMessageBuilder::<LinkUnspec>::new()
            .name(plan.sandbox_if)
            .setns_by_fd(netns.as_raw_fd()),
    )
    .build();
    let veth = || {
        single_queue(
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(plan.host_if.clone())
                .controller(bridge.header.index)
                .up()
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.clone()))),
        )
        .build()
    };
    match host.link().add(veth()).execute().await {
        Ok(()) => {}
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {
            tracing::warn!(host_if = %plan.host_if, "replacing a leftover veth");
            destroy(&plan.host_if).await?;
            host.link()
                .add(veth())
                .execute()
                .await
                .map_err(nl_err(format!("creating veth {}", plan.host_if)))?;
        }
        Err(e) => return Err(nl_err(format!("creating veth {}", plan.host_if))(e)),
    }

    let host_side = async {
        let msg = LinkBridgePort::new(0)
            .name(plan.host_if.clone())
            .isolated(true)
            .build();
        host.link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl_err(format!("isolating bridge port {}", plan.host_if)))
    };
    let ns_side = async {
        let lo_up = ns
            .link()
            .set(LinkUnspec::new_with_index(1).up().build())
            .execute();
        let (lo, eth0) = futures::join!(lo_up, link_by_name(&ns, plan.sandbox_if));
        lo.map_err(nl_err("setting lo up in the sandbox netns"))?;
        let eth0 = eth0?
            .ok_or_else(|| Error::internal("eth0 did not appear in the sandbox netns"))?
            .header
            .index;
        ns.address()
            .add(eth0, IpAddr::V4(plan.ip), plan.prefix)
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding {}/{} to eth0",
                plan.ip, plan.prefix
            )))?;
        if let Some((ip6, prefix6, _)) = plan.ip6 {
            ns.address()
                .add(eth0, IpAddr::V6(ip6), prefix6)
                .execute()
                .await
                .map_err(nl_err(format!("adding {ip6}/{prefix6} to eth0")))?;
        }
        ns.link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl_err("setting eth0 up"))?;
        ns.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(plan.gateway)
                    .output_interface(eth0)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding the default route via {}",
                plan.gateway
            )))?;
        if let Some((_, _, gateway6)) = plan.ip6 {
            ns.route()
                .add(
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .gateway(gateway6)
                        .output_interface(eth0)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding the IPv6 default route via {gateway6}"
                )))?;
        }
        Ok(())
    };
    let res = futures::try_join!(host_side, ns_side);
    if let Err(e) = res {
        let _ = destroy(&plan.host_if).await;
        return Err(e);
    }
    Ok(SandboxNet {
        slot,
        ip: plan.ip,
        host_if: plan.host_if,
        netns,
    })
}

/// One TX and one RX queue, asked for explicitly. Without these attributes veth is created
/// with a queue per possible CPU and then trimmed to one (`veth_init_queues`), and trimming a
/// registered device waits for an RCU grace period while holding RTNL: every other netlink
/// change on the host (other sandboxes' creates and deletes) queued behind it at cc=50.
fn single_queue<T>(b: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
    b.append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
}

/// Creates a netns on a dedicated thread (so no pooled thread is left inside it): unshare,
/// keep a handle on it, write its sysctls, open a netlink socket bound to it.
async fn new_netns(sysctls: &'static [(&'static str, &'static str)]) -> Result<(OwnedFd, OwnedFd)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("coppice-netns".into())
        .spawn(move || {
            let _ = tx.send(new_netns_on_this_thread(sysctls));
        })
        .ctx(|| "spawning the netns thread")?;
    rx.await
        .map_err(|_| Error::internal("the netns thread died"))?
}

fn new_netns_on_this_thread(sysctls: &[(&str, &str)]) -> Result<(OwnedFd, OwnedFd)> {
    // SAFETY: NEWNET only changes this thread's network namespace; the thread ends right after
    // and no fd table or memory is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.map_err(
        |e| {
            if e == rustix::io::Errno::PERM {
                Error::HostUnsupported(
                    "creating a network namespace needs root (CAP_SYS_ADMIN)".into(),
                )
            } else {
                Error::io("unshare(CLONE_NEWNET)")(e.into())
            }
        },
    )?;
    let ns: OwnedFd = fs::File::open("/proc/thread-self/ns/net")
        .ctx(|| "opening /proc/thread-self/ns/net")?
        .into();
    for (key, value) in sysctls {
        write_existing(&format!("/proc/sys/{key}"), value)?;
    }
    let sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        .ctx(|| "opening a netlink socket in the sandbox netns")?;
    // SAFETY: into_raw_fd hands us sole ownership of the socket's fd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) };
    Ok((ns, sock))
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`; sockets it creates
/// stay in that namespace. For probes, tests and in-netns helpers.
pub fn run_in_netns<T: Send + 'static>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let fd = netns
        .try_clone_to_owned()
        .ctx(|| "duplicating the netns fd")?;
    std::thread::spawn(move || -> Result<T> {
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| Error::io("setns(CLONE_NEWNET)")(e.into()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::internal("netns thread panicked"))?
}

/// Deletes a link by name (the host end of a veth takes its peer with it). Already gone is Ok.
pub async fn destroy(host_if: &str) -> Result<()> {
    let h = host_handle()?;
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(host_if.to_owned()));
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(nl_err(format!("deleting link {host_if}"))(e)),
    }
}

/// Every `cps<N>` link in the host netns (for leak cleanup after a crash).
pub async fn list_host_ifs() -> Result<Vec<String>> {
    let h = host_handle()?;
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))?;
    let mut out: Vec<String> = links
        .iter()
        .flat_map(|l| l.attributes.iter())
        .filter_map(|a| match a {
            LinkAttribute::IfName(n) if is_host_ifname(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `cps` followed by a slot number.
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IF_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn write_existing(path: &str, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .ctx(|| format!("opening {path}"))?;
    f.write_all(value.as_bytes())
        .ctx(|| format!("writing '{value}' to {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `want` stands, trimmed, as a whole line of the ruleset `r`.
    fn assert_has_lines(r: &str, want: &[&str]) {
        for line in want {
            assert!(
                r.lines().any(|l| l.trim() == *line),
                "missing `{line}` in:\n{r}"
            );
        }
    }

    #[test]
    fn names_and_addresses_from_slots() {
        let c = NetConfig::default();
        assert_eq!(c.sandbox_ip(0), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(c.sandbox_ip(1), Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(c.sandbox_ip(254), Ipv4Addr::new(10, 88, 1, 0));
        assert_eq!(c.max_slots(), 65533);
        assert_eq!(
            c.sandbox_ip(c.max_slots() - 1),
            Ipv4Addr::new(10, 88, 255, 254)
        );
        assert!(c.plan(c.max_slots()).is_err());
        assert_eq!(host_ifname(0), "cps0");
        assert!(host_ifname(u32::MAX).len() <= 15);
        assert!(is_host_ifname("cps12") && !is_host_ifname("cps") && !is_host_ifname("cpsx"));
        assert!(!is_host_ifname("eth0"));
        let p = c.plan(7).unwrap();
        assert_eq!(
            (p.host_if.as_str(), p.sandbox_if, p.ip, p.prefix, p.gateway),
            (
                "cps7",
                "eth0",
                Ipv4Addr::new(10, 88, 0, 9),
                16,
                Ipv4Addr::new(10, 88, 0, 1)
            )
        );
        assert!(
            p.sysctls
                .contains(&("net/ipv4/ip_unprivileged_port_start", "0"))
        );
        assert!(
            p.sysctls
                .contains(&("net/ipv4/ping_group_range", "0 2147483647"))
        );
        assert_eq!(c.bridge_mac(), [0x02, 0x63, 0x70, 88, 0, 1]);
        assert!(c.subnet.contains(Ipv4Addr::new(10, 88, 7, 7)));
        assert!(!c.subnet.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(c.subnet.to_string(), "10.88.0.0/16");
    }

    #[test]
    fn ruleset_text() {
        let r = host_ruleset(&NetConfig::default());
        // Idempotent preamble: create if missing, flush rules (sets survive), redeclare.
        assert!(r.starts_with(
            "table inet coppice {\n\tchain input { type filter hook input priority filter - 5; policy accept; }\n"
        ));
        assert!(r.contains(
            "}\nflush chain inet coppice input\nflush chain inet coppice forward\nflush chain inet coppice postrouting\ntable inet coppice {"
        ));
        assert!(!r.contains("flush table"), "policy chains survive a reload");
        assert_eq!(r.matches("table inet").count(), 2, "one table only:\n{r}");
        assert!(r.contains("iifname \"coppice0\" jump sandbox_egress"));
        assert!(r.contains("\t\tjump sandbox_to_host\n\t\tcounter drop"));
        assert!(
            r.contains("chain sandbox_egress {\n\t}"),
            "declared empty:\n{r}"
        );
        assert_has_lines(
            &r,
            &[
                "type filter hook input priority filter - 5; policy accept;",
                "iifname != \"coppice0\" accept",
                "meta l4proto tcp ct state new meta l4proto . th dport @host_services add @host_conns4 { ip saddr ct count over 256 } counter reject with tcp reset comment \"connections per sandbox\"",
                "meta l4proto . th dport @host_services accept",
                "counter drop comment \"sandbox -> host\"",
                "type filter hook forward priority filter - 5; policy accept;",
                "iifname \"coppice0\" ip saddr != 10.88.0.0/16 counter drop comment \"spoofed source\"",
                "oifname \"coppice0\" ct state established,related accept",
                "iifname \"coppice0\" oifname != \"coppice0\" meta nfproto ipv4 accept",
                "oifname \"coppice0\" counter drop comment \"new connection into the bridge\"",
                "type nat hook postrouting priority srcnat; policy accept;",
                "ip saddr 10.88.0.0/16 oifname != \"coppice0\" counter masquerade",
            ],
        );
        // Input: host traffic leaves first, then established, then the drop.
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s}"));
        assert!(pos("iifname != \"coppice0\" accept") < pos("ct state established,related accept"));
        assert!(pos("spoofed source") < pos("oifname != \"coppice0\" meta nfproto ipv4 accept"));
        // The fallback drops and recreates instead of flushing.
        let f = host_ruleset_recreate(&NetConfig::default());
        assert!(f.starts_with("table inet coppice {}\ndelete table inet coppice\n"));
        // Custom config flows through.
        let c = NetConfig {
            bridge: "br-x".into(),
            subnet: Ipv4Subnet::new(Ipv4Addr::new(172, 30, 0, 0), 20),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            ipv6: None,
        };
        let r = host_ruleset(&c);
        assert!(r.contains("ip saddr 172.30.0.0/20 oifname != \"br-x\" counter masquerade"));
        assert!(
            !r.contains("iifname \"br-x\" ip6") && !r.contains("masquerade\n\t\tip6"),
            "IPv4 only: no IPv6 is forwarded\n{r}"
        );
    }

    #[test]
    fn ipv6_addresses_and_rules() {
        let c = NetConfig::default();
        assert_eq!(c.sandbox_ip6(0), Some("fd88::2".parse().unwrap()));
        assert_eq!(c.sandbox_ip6(300), Some("fd88::12e".parse().unwrap()));
        let p = c.plan(7).unwrap();
        assert_eq!(
            p.ip6,
            Some(("fd88::9".parse().unwrap(), 64, "fd88::1".parse().unwrap()))
        );
        assert!(
            p.sysctls
                .contains(&("net/ipv6/conf/default/accept_dad", "0"))
        );
        let v4only = NetConfig {
            ipv6: None,
            ..NetConfig::default()
        };
        assert_eq!(v4only.sandbox_ip6(0), None);
        assert_eq!(v4only.plan(0).unwrap().sysctls, SANDBOX_SYSCTLS);
        let small = Ipv6Subnet::parse("fd99:1::1/120").unwrap();
        assert_eq!(small.to_string(), "fd99:1::/120");
        assert!(small.contains("fd99:1::ff".parse().unwrap()));
        assert!(!small.contains("fd99:1::100".parse().unwrap()));
        let c120 = NetConfig {
            ipv6: Some(small),
            ..NetConfig::default()
        };
        assert_eq!(c120.max_slots(), 253, "the smaller of the two networks");
        for bad in [
            "fd88::1",
            "fd88::1/48",
            "fd88::/64",
            "10.0.0.1/24",
            "fd88::1/x",
        ] {
            assert!(
                Ipv6Subnet::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("network_ipv6"),
                "{bad}"
            );
        }
        let r = host_ruleset(&c);
        assert_has_lines(
            &r,
            &[
                "iifname \"coppice0\" ip6 saddr != fd88::/64 counter drop comment \"spoofed source\"",
                "ip6 saddr fd88::/64 oifname != \"coppice0\" counter masquerade",
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment \"IPv6 neighbour discovery\"",
            ],
        );
        // IPv6 is only forwarded through a policy chain (no blanket accept).
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s}"));
        assert!(pos("ip6 saddr != fd88::/64") < pos("iifname \"coppice0\" jump sandbox_egress"));
        assert!(!r.contains("meta nfproto ipv6 accept"));
    }

    #[test]
    fn ipv6_host_preparation() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv6/conf");
        assert!(
            prepare_ipv6_host(dir.path())
                .unwrap_err()
                .contains("no IPv6")
        );
        let set = |path: &str, v: &str| {
            std::fs::create_dir_all(conf.join(path).parent().unwrap()).unwrap();
            std::fs::write(conf.join(path), v).unwrap();
        };
        let get = |path: &str| std::fs::read_to_string(conf.join(path)).unwrap();
        set("all/disable_ipv6", "1\n");
        assert!(
            prepare_ipv6_host(dir.path())
                .unwrap_err()
                .contains("disabled")
        );
        set("all/disable_ipv6", "0\n");
        set("default/disable_ipv6", "0\n");
        set("all/forwarding", "0\n");
        set("all/accept_ra", "1\n");
        set("eth0/accept_ra", "1\n");
        set("eth1/accept_ra", "0\n");
        set("default/accept_ra", "1\n");
        prepare_ipv6_host(dir.path()).unwrap();
        assert_eq!(get("all/forwarding"), "1");
        assert_eq!(
            get("eth0/accept_ra"),
            "2",
            "RAs keep working with forwarding on"
        );
        assert_eq!(get("default/accept_ra"), "2");
        assert_eq!(get("eth1/accept_ra"), "0\n", "left alone");
        set("default/disable_ipv6", "1\n");
        assert!(
            prepare_ipv6_host(dir.path())
                .unwrap_err()
                .contains("default")
        );
    }
}
