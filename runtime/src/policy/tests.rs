//! Unit tests of the policy model, validation and evaluation.

use std::net::IpAddr;

use super::check::looks_like_domain;
use super::host::{METADATA_V4, METADATA_V6, parse_nameservers};
use super::model::{DefaultAction, MAX_RULES, NetworkPolicy, Port, Protocol, Rule};

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

use super::host::test_host as ctx;

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
    let back: NetworkPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
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
    assert!(bad(r#"{"deny":[{"cidr":"example.com"}]}"#).contains("domain names go in \"domains\""));
    assert!(
        bad(r#"{"allow":[{"cidr":"1.2.3.4","ports":["90-80"]}]}"#).contains("port range 90-80")
    );
    assert!(bad(r#"{"allow":[{"cidr":"1.2.3.4","ports":[0]}]}"#).contains("ports are 1-65535"));
    assert!(
        bad(r#"{"allow":[{"cidr":"1.2.3.4","protocol":"icmp","ports":[1]}]}"#)
            .contains("icmp has no ports")
    );
    assert!(bad(r#"{"allow":[{"cidr":"1.2.3.4","protocol":"sctp"}]}"#).contains("unknown variant"));
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
