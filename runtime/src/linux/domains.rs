//! What domain rules know at run time, per sandbox: its checked policy, its addresses and the
//! destinations the resolver admitted for its allowed names (until their TTL runs out). One
//! value, made by the Linux backend and shared by the resolver ([`super::dns`], which admits),
//! the SNI / Host proxy ([`super::sniproxy`], which checks) and the policy executor
//! ([`super::netpolicy`], which registers, prunes and forgets); nothing here is a global.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::net::NFT_TABLE;
use crate::error::{Error, Result};
use crate::linux::nftcompile::{DOMAIN_SET4, DOMAIN_SET6, ElemData, ElemKey, NftOp, SandboxAddrs};
use crate::policy::{CheckedPolicy, HostContext, Protocol};

/// Shortest time an admitted address stays in the allow set. DNS answers with TTL 0 or 1 are
/// common (load balancers, CDNs); admitting for that long would let the entry expire between
/// the answer and the program's connect (or its retry after a slow TLS handshake start), so
/// the connection would fail although the name is allowed. 5 s covers resolve-then-connect
/// of any sane client; it widens the window by at most a few seconds, for an address the
/// policy already accepted for this name.
pub const MIN_ADMIT: Duration = Duration::from_secs(5);
/// Longest: a day, so a huge TTL does not pin an address for weeks after the name moved.
pub const MAX_ADMIT: Duration = Duration::from_secs(24 * 3600);

/// What the resolver and the SNI proxy know about one sandbox.
struct Entry {
    policy: CheckedPolicy,
    addrs: SandboxAddrs,
    /// Admitted destination (IPv4 or IPv6) → (when it expires, the names it was admitted for).
    admitted: HashMap<IpAddr, (Instant, Vec<String>)>,
}

/// Sandboxes by IPv4 address (what DNS queries come from), and the IPv6 index the proxy
/// needs for connections from a sandbox's IPv6 address.
#[derive(Default)]
struct Registry {
    sandboxes: HashMap<Ipv4Addr, Entry>,
    by_ip6: HashMap<Ipv6Addr, Ipv4Addr>,
}

/// nft lines that delete the sandbox's admissions of `dsts` whether or not the kernel still
/// holds them (expired elements are gone; `add` first makes the `delete` always valid, as in
/// `nft_remove`).
fn delete_lines(addrs: SandboxAddrs, dsts: impl IntoIterator<Item = IpAddr>) -> String {
    let mut s = String::new();
    for key in dsts.into_iter().filter_map(|d| addrs.admission(d)) {
        let Some(set) = key.domain_set() else {
            continue;
        };
        let add = NftOp::AddElem {
            set,
            key,
            data: ElemData::None,
        };
        s += &format!("{add}\n{}\n", NftOp::DelElem { set, key });
    }
    if !s.is_empty() {
        s.insert_str(0, &crate::linux::nftcompile::nft_domain_set(NFT_TABLE));
    }
    s
}

fn keeps(policy: &CheckedPolicy, names: &[String]) -> bool {
    !policy.air_gapped && !policy.domains.is_empty() && names.iter().any(|n| policy.allows_name(n))
}

/// The registry: sandboxes and their admissions, and the host context admissions are judged
/// against (set once the resolver runs).
#[derive(Default)]
pub struct DomainRegistry {
    reg: Mutex<Registry>,
    host: OnceLock<HostContext>,
}

impl DomainRegistry {
    /// Records the final host context (with the addresses the resolver and proxy bound).
    pub fn set_host(&self, ctx: HostContext) {
        let _ = self.host.set(ctx);
    }

    /// Records `policy` as the sandbox's (after its nft transaction succeeded) and returns an nft
    /// script removing admitted addresses whose names it no longer allows (empty when none).
    pub fn register(&self, addrs: SandboxAddrs, policy: &CheckedPolicy) -> String {
        let mut guard = self.reg.lock();
        let reg = &mut *guard;
        let entry = reg.sandboxes.entry(addrs.ip).or_insert_with(|| Entry {
            policy: policy.clone(),
            addrs,
            admitted: HashMap::new(),
        });
        if let Some(old) = entry.addrs.ip6.filter(|_| entry.addrs.ip6 != addrs.ip6) {
            reg.by_ip6.remove(&old);
        }
        if let Some(ip6) = addrs.ip6 {
            reg.by_ip6.insert(ip6, addrs.ip);
        }
        entry.policy = policy.clone();
        entry.addrs = addrs;
        let stale: Vec<IpAddr> = entry
            .admitted
            .iter()
            .filter(|(_, (_, names))| !keeps(policy, names))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &stale {
            entry.admitted.remove(ip);
        }
        delete_lines(addrs, stale)
    }

    /// The admission elements to delete when the policy of `sandbox` is replaced by `policy`:
    /// those it no longer allows, so the swap and their removal are one transaction.
    pub fn pruned(&self, sandbox: Ipv4Addr, policy: &CheckedPolicy) -> Vec<ElemKey> {
        let reg = self.reg.lock();
        let Some(entry) = reg.sandboxes.get(&sandbox) else {
            return Vec::new();
        };
        entry
            .admitted
            .iter()
            .filter(|(_, (_, names))| !keeps(policy, names))
            .filter_map(|(ip, _)| entry.addrs.admission(*ip))
            .collect()
    }

    /// Forgets a removed sandbox; returns the nft lines deleting what was admitted for it (a new
    /// sandbox on the same addresses must not inherit them).
    pub fn forget(&self, sandbox: Ipv4Addr) -> String {
        let mut reg = self.reg.lock();
        let Some(e) = reg.sandboxes.remove(&sandbox) else {
            return String::new();
        };
        if let Some(ip6) = e.addrs.ip6 {
            reg.by_ip6.remove(&ip6);
        }
        delete_lines(e.addrs, e.admitted.into_keys())
    }

    /// Whether `dst` is currently admitted for `sandbox` by one of its allowed names.
    pub fn is_admitted(&self, sandbox: Ipv4Addr, dst: IpAddr) -> bool {
        let now = Instant::now();
        self.reg
            .lock()
            .sandboxes
            .get(&sandbox)
            .and_then(|e| e.admitted.get(&dst))
            .is_some_and(|(until, _)| *until > now)
    }

    /// The sandbox (by its IPv4 address) a connection from `src`, of either family, comes from.
    pub fn sandbox_of(&self, src: IpAddr) -> Option<Ipv4Addr> {
        let reg = self.reg.lock();
        match src {
            IpAddr::V4(ip) => reg.sandboxes.contains_key(&ip).then_some(ip),
            IpAddr::V6(ip) => reg.by_ip6.get(&ip).copied(),
        }
    }

    /// The policy of the sandbox at `ip`, if it is one of ours.
    pub fn policy_of(&self, ip: Ipv4Addr) -> Option<CheckedPolicy> {
        self.reg.lock().sandboxes.get(&ip).map(|e| e.policy.clone())
    }

    /// Whether the sandbox's IPv6 side can be admitted to: it has an IPv6 address and the proxy
    /// listens on the bridge's.
    pub fn admits_v6(&self, sandbox: Ipv4Addr) -> bool {
        let proxy6 = self.host.get().is_some_and(|c| c.sni_proxy6.is_some());
        proxy6
            && self
                .reg
                .lock()
                .sandboxes
                .get(&sandbox)
                .is_some_and(|e| e.addrs.ip6.is_some())
    }

    /// Admits `addrs` (address, TTL) for `sandbox` because they answered `name`: one nft
    /// transaction, then the registry. Addresses the policy already allows by address (CIDR
    /// rules: reached directly, without the SNI check) and protected ones (private and unique
    /// local ranges, loopback, link-local, metadata, v4-mapped, the host: a name never opens
    /// them) are skipped, in both families.
    pub async fn admit(
        &self,
        sandbox: Ipv4Addr,
        name: &str,
        addrs: &[(IpAddr, u32)],
    ) -> Result<()> {
        let ctx = self.host.get().cloned().unwrap_or_default();
        let now = Instant::now();
        let mut script = String::new();
        let mut planned = Vec::new();
        {
            let reg = self.reg.lock();
            let Some(entry) = reg.sandboxes.get(&sandbox) else {
                return Ok(());
            };
            let direct = CheckedPolicy {
                domains: vec![],
                ..entry.policy.clone()
            };
            for &(dst, ttl) in addrs {
                let Some(key) = entry.addrs.admission(dst) else {
                    continue;
                };
                let set = if dst.is_ipv4() {
                    DOMAIN_SET4
                } else {
                    DOMAIN_SET6
                };
                if ctx.is_protected_addr(dst) {
                    tracing::info!(%sandbox, %dst, name, "not admitting a protected address");
                    continue;
                }
                let by_cidr = [80, 443]
                    .iter()
                    .all(|p| direct.permits(&ctx, dst, Some(Protocol::Tcp), Some(*p)));
                if by_cidr {
                    continue;
                }
                let ttl = Duration::from_secs(ttl.into()).clamp(MIN_ADMIT, MAX_ADMIT);
                let until = entry
                    .admitted
                    .get(&dst)
                    .map_or(now + ttl, |(u, _)| (*u).max(now + ttl));
                let secs = (until - now).as_secs().max(1);
                // add (if absent), delete, add with the new timeout: one transaction, so the pair
                // is never missing, and the timeout is reset on every nft version.
                script += &format!(
                    "add element inet {NFT_TABLE} {set} {{ {key} }}\n\
                     delete element inet {NFT_TABLE} {set} {{ {key} }}\n\
                     add element inet {NFT_TABLE} {set} {{ {key} timeout {secs}s }}\n"
                );
                planned.push((dst, until));
            }
        }
        if planned.is_empty() {
            return Ok(());
        }
        super::nftrun::nft_run(&(crate::linux::nftcompile::nft_domain_set(NFT_TABLE) + &script))
            .await?;
        let mut reg = self.reg.lock();
        if let Some(entry) = reg.sandboxes.get_mut(&sandbox) {
            entry.admitted.retain(|_, (u, _)| *u > now);
            for (ip, until) in planned {
                let slot = entry.admitted.entry(ip).or_insert((until, vec![]));
                slot.0 = slot.0.max(until);
                if !slot.1.iter().any(|n| n == name) {
                    slot.1.push(name.to_string());
                }
            }
        }
        tracing::debug!(%sandbox, name, "admitted addresses");
        Ok(())
    }
}

/// Refuses a policy with domain rules on a host where the resolver is not running.
pub fn check_supported(policy: &CheckedPolicy, ctx: &HostContext) -> Result<()> {
    if !policy.domains.is_empty() && !policy.air_gapped && ctx.resolver.is_none() {
        return Err(Error::Unavailable(
            "domain rules need Coppice's DNS resolver, which is not running on this host (see \
             the daemon log: no upstream nameserver, or port 53 on the bridge address is taken); \
             use CIDR rules instead"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NetworkPolicy;

    #[test]
    fn registry_prunes_names_no_longer_allowed() {
        let r = DomainRegistry::default();
        let addrs = SandboxAddrs {
            ip: Ipv4Addr::new(10, 88, 200, 9),
            ip6: Some("fd88::c8:9".parse().unwrap()),
        };
        let sbx = addrs.ip;
        let p = |d: &[&str]| {
            NetworkPolicy {
                domains: d.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }
            .check()
            .unwrap()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.register(addrs, &p(&["a.test", "*.b.test"])), "");
        assert_eq!(r.sandbox_of(ip("fd88::c8:9")), Some(sbx));
        assert_eq!(r.sandbox_of(IpAddr::V4(sbx)), Some(sbx));
        assert_eq!(r.sandbox_of(ip("fd88::c8:10")), None);
        {
            let mut reg = r.reg.lock();
            let e = reg.sandboxes.get_mut(&sbx).unwrap();
            let later = Instant::now() + Duration::from_secs(60);
            for (dst, name) in [
                ("198.51.100.1", "a.test"),
                ("2001:db8::1", "a.test"),
                ("198.51.100.2", "x.b.test"),
                ("2001:db8::2", "x.b.test"),
            ] {
                e.admitted.insert(ip(dst), (later, vec![name.into()]));
            }
        }
        assert!(r.is_admitted(sbx, ip("198.51.100.1")));
        assert!(r.is_admitted(sbx, ip("2001:db8::1")));
        let next = p(&["*.b.test"]);
        let mut gone = r.pruned(sbx, &next);
        gone.sort_by_key(|k| k.to_string());
        assert_eq!(
            gone,
            [
                ElemKey::Pair(sbx, "198.51.100.1".parse().unwrap()),
                ElemKey::Pair6(addrs.ip6.unwrap(), "2001:db8::1".parse().unwrap()),
            ],
            "only the addresses of the name no longer allowed, each in its family's set"
        );
        r.register(addrs, &next);
        assert!(!r.is_admitted(sbx, ip("198.51.100.1")));
        assert!(!r.is_admitted(sbx, ip("2001:db8::1")));
        assert!(r.is_admitted(sbx, ip("2001:db8::2")));
        let gone = r.forget(sbx);
        assert!(gone.contains(
            "add element inet coppice domain_admit4 { 10.88.200.9 . 198.51.100.2 }\n\
             delete element inet coppice domain_admit4 { 10.88.200.9 . 198.51.100.2 }\n"
        ));
        assert!(
            gone.contains(
                "delete element inet coppice domain_admit6 { fd88::c8:9 . 2001:db8::2 }\n"
            )
        );
        assert!(!r.is_admitted(sbx, ip("2001:db8::2")));
        assert_eq!(r.sandbox_of(ip("fd88::c8:9")), None);
        assert_eq!(r.forget(sbx), "");
    }
}
