//! Host networking settings and the per-slot plan: names, addresses and sysctls, pure data
//! the host and sandbox halves apply.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// Name of the nft table that holds every Coppice rule (`table inet coppice`).
pub const NFT_TABLE: &str = "coppice";

/// Prefix of the host end of every sandbox veth (`cps<slot>`).
pub const HOST_IF_PREFIX: &str = "cps";

/// Name of the sandbox end inside its netns.
pub const SANDBOX_IF: &str = "eth0";

/// An IPv4 network: base address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Subnet {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Ipv4Subnet {
    /// The subnet `base`/`prefix`.
    pub const fn new(base: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Subnet { base, prefix }
    }

    /// Number of addresses in the subnet (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix.min(32)))
    }

    pub(super) fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix.min(32)))
        }
    }

    /// Whether `ip` lies in the subnet.
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
    /// The bridge's address in the network, every sandbox's IPv6 gateway.
    pub gateway: Ipv6Addr,
    /// Prefix length in bits (64..=120).
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

    pub(super) fn mask(&self) -> u128 {
        u128::MAX << (128 - u32::from(self.prefix.min(128)))
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.gateway) & self.mask())
    }

    /// Whether `ip` lies in the network.
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
    /// The sandbox's slot.
    pub slot: u32,
    /// Host end of its veth, `cps<slot>`.
    pub host_if: String,
    /// Sandbox end of its veth, inside the netns ([`SANDBOX_IF`]).
    pub sandbox_if: &'static str,
    /// The sandbox's IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of the sandbox subnet.
    pub prefix: u8,
    /// MAC of its `eth0`: fixed per slot, so that a sandbox restarted in place (a restore,
    /// a resume from disk) answers at the address the host's neighbour cache holds for its
    /// IP (a new random one goes unanswered until that entry goes stale).
    pub mac: [u8; 6],
    /// The bridge's address, its default gateway.
    pub gateway: Ipv4Addr,
    /// Host bridge the veth's host end joins.
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

    /// Host-side name of slot `slot`'s veth, as [`host_ifname`].
    pub fn host_ifname(&self, slot: u32) -> String {
        host_ifname(slot)
    }

    /// The network setup of slot `slot`; `InvalidArgument` when the slot does not fit the subnets.
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
            mac: sandbox_mac(slot),
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

/// The locally administered MAC of slot `slot`'s `eth0` (02:63:73 + the slot's low 24 bits;
/// slots are far fewer than 2^24).
pub fn sandbox_mac(slot: u32) -> [u8; 6] {
    let b = slot.to_be_bytes();
    [0x02, 0x63, 0x73, b[1], b[2], b[3]]
}
