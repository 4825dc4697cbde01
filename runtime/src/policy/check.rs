//! Validation: a policy becomes the checked form every later step works on (CheckedPolicy),
//! or an error naming what to fix.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{
    DefaultAction, MAX_DOMAINS, MAX_RULES, NetworkPolicy, Port, Protocol, Rule, check_expose,
    invalid,
};
use crate::error::Result;

/// A rule after validation: network normalised (host bits cleared), ports merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRule {
    /// Destination network, host bits cleared.
    pub net: IpNet,
    /// Protocol the rule is narrowed to; None: any (tcp and udp when it has ports).
    pub protocol: Option<Protocol>,
    /// Sorted, non-overlapping inclusive ranges; empty = every port.
    pub ports: Vec<(u16, u16)>,
}

/// A validated policy, ready to compile or evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPolicy {
    /// What happens to traffic no rule decides.
    pub default: DefaultAction,
    /// Destinations allowed; they beat deny rules.
    pub allow: Vec<CheckedRule>,
    /// Destinations denied.
    pub deny: Vec<CheckedRule>,
    /// No egress at all, DNS included; the rules then have no effect.
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

impl Rule {
    pub(crate) fn check(&self) -> std::result::Result<CheckedRule, String> {
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

pub(super) fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
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

pub(super) fn check_domains(list: &[String]) -> Result<Vec<DomainPattern>> {
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
pub(super) fn check_domain(raw: &str) -> std::result::Result<DomainPattern, String> {
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
    pub(crate) fn range(&self) -> std::result::Result<(u16, u16), String> {
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
