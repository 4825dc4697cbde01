//! What the compiler and evaluator need to know about the host: its addresses, nameservers,
//! the resolver and proxy, and the protected ranges a broad rule never opens.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The IPv6 cloud metadata address (AWS), covered by fc00::/7.
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The IPv4 cloud metadata address, covered by 169.254.0.0/16.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

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

    /// Whether `ip` lies inside a protected range or is one of the host's addresses.
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
    pub(crate) fn resolvers(&self) -> impl Iterator<Item = IpAddr> {
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

/// The host the policy tests (here and in the nft compiler's) judge against: a host address,
/// the bridge's, and one nameserver.
#[cfg(test)]
pub(crate) fn test_host() -> HostContext {
    HostContext {
        host_addrs: vec!["192.0.2.2".parse().unwrap(), "10.88.0.1".parse().unwrap()],
        dns_servers: vec!["10.255.255.53".parse().unwrap()],
        ..Default::default()
    }
}
