//! Unit tests of the pure parts: names and addresses from slots, the ruleset text, IPv6.

use std::net::Ipv4Addr;

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
    // Each slot's eth0 has its own MAC, the same at every start of that slot.
    assert_eq!(p.mac, c.plan(p.slot).unwrap().mac);
    assert_ne!(p.mac, c.plan(p.slot + 1).unwrap().mac);
    assert_eq!(
        super::config::sandbox_mac(0x0102_0304),
        [2, 0x63, 0x73, 2, 3, 4]
    );
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
