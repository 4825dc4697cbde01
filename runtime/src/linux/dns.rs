//! The host-side DNS resolver behind domain rules (docs/decisions/0008-network-domains.md).
//!
//! Sandboxes keep the resolv.conf their template was built with (the host's nameservers); nft
//! redirects their port-53 traffic to those nameservers here, on the bridge address (see
//! [`nft_redirect`]), so no template rebuild is needed and a sandbox cannot pick a different
//! path to the same servers. The asker is identified by its source address (spoofing is
//! impossible: the sandbox cannot change its address, and the bridge drops foreign sources).
//!
//! - no domain rules: the query is forwarded to the upstream as it is (today's behaviour);
//! - domain rules: a name outside the list is answered REFUSED; an allowed one is forwarded,
//!   and every A record of the answer is admitted into `domain_admit4` as (sandbox . address)
//!   with the record's TTL as the element timeout, before the answer is returned (so the
//!   sandbox's first connect already finds it);
//! - air-gapped sandboxes get nothing (nft already rejects their packets; this is the second
//!   lock), and unknown sources get REFUSED.
//!
//! Why REFUSED and not NXDOMAIN: NXDOMAIN claims the name does not exist and is cached
//! negatively (by nscd, systemd-resolved or the program) for the zone's SOA minimum, so a
//! policy update that allows the name would keep failing for minutes; REFUSED ("this server
//! will not answer you") is never cached as a fact about the name, says what happened (`dig`
//! shows `status: REFUSED`), and glibc turns it into a resolution failure at once.
//!
//! Why hickory-proto with a small UDP+TCP loop and not hickory-server: we never answer from a
//! zone or a cache, only decide per query and forward the bytes unchanged (EDNS, DNSSEC bits
//! and TC included), so the server crate's catalog/authority machinery would be unused weight;
//! hickory-proto does the part that must not be hand-written: parsing and building messages.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::net::NFT_TABLE;
use crate::error::{Error, Result};
use crate::policy::{CheckedPolicy, DOMAIN_SET4, HostContext, Protocol};

/// Shortest time an admitted address stays in the allow set. DNS answers with TTL 0 or 1 are
/// common (load balancers, CDNs); admitting for that long would let the entry expire between
/// the answer and the program's connect (or its retry after a slow TLS handshake start), so
/// the connection would fail although the name is allowed. 5 s covers resolve-then-connect
/// of any sane client; it widens the window by at most a few seconds, for an address the
/// policy already accepted for this name.
pub const MIN_ADMIT: Duration = Duration::from_secs(5);
/// Longest: a day, so a huge TTL does not pin an address for weeks after the name moved.
pub const MAX_ADMIT: Duration = Duration::from_secs(24 * 3600);
/// How long one upstream exchange may take before the sandbox gets SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);

/// What the resolver and the SNI proxy know about one sandbox.
struct Entry {
    policy: CheckedPolicy,
    /// Admitted destination → (when it expires, the names it was admitted for).
    admitted: HashMap<Ipv4Addr, (Instant, Vec<String>)>,
}

fn registry() -> &'static Mutex<HashMap<Ipv4Addr, Entry>> {
    static REG: OnceLock<Mutex<HashMap<Ipv4Addr, Entry>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

fn host_ctx() -> &'static OnceLock<HostContext> {
    static CTX: OnceLock<HostContext> = OnceLock::new();
    &CTX
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<Ipv4Addr, Entry>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

fn pair(sandbox: Ipv4Addr, dst: Ipv4Addr) -> String {
    format!("{sandbox} . {dst}")
}

/// nft lines that delete (sandbox . dst) whether or not the kernel still holds it (expired
/// elements are gone; `add` first makes the `delete` always valid, as in `nft_remove`).
fn delete_lines(sandbox: Ipv4Addr, dsts: impl IntoIterator<Item = Ipv4Addr>) -> String {
    let mut s = String::new();
    for d in dsts {
        let p = pair(sandbox, d);
        s += &format!(
            "add element inet {NFT_TABLE} {DOMAIN_SET4} {{ {p} }}\n\
             delete element inet {NFT_TABLE} {DOMAIN_SET4} {{ {p} }}\n"
        );
    }
    if !s.is_empty() {
        s.insert_str(0, &crate::policy::nft_domain_set(NFT_TABLE));
    }
    s
}

/// Records `policy` as the sandbox's (after its nft transaction succeeded) and returns an nft
/// script removing admitted addresses whose names it no longer allows (empty when none).
pub fn register(sandbox: Ipv4Addr, policy: &CheckedPolicy) -> String {
    let mut reg = lock();
    let entry = reg.entry(sandbox).or_insert_with(|| Entry {
        policy: policy.clone(),
        admitted: HashMap::new(),
    });
    entry.policy = policy.clone();
    let keep = |names: &Vec<String>| {
        !policy.air_gapped
            && !policy.domains.is_empty()
            && names.iter().any(|n| policy.allows_name(n))
    };
    let stale: Vec<Ipv4Addr> = entry
        .admitted
        .iter()
        .filter(|(_, (_, names))| !keep(names))
        .map(|(ip, _)| *ip)
        .collect();
    for ip in &stale {
        entry.admitted.remove(ip);
    }
    delete_lines(sandbox, stale)
}

/// The admitted (sandbox, address) pairs to delete when the policy of `sandbox` is replaced by
/// `policy`: those it no longer allows, so the swap and their removal are one transaction.
pub fn pruned(sandbox: Ipv4Addr, policy: &CheckedPolicy) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let reg = lock();
    let Some(entry) = reg.get(&sandbox) else {
        return Vec::new();
    };
    entry
        .admitted
        .iter()
        .filter(|(_, (_, names))| {
            policy.air_gapped
                || policy.domains.is_empty()
                || !names.iter().any(|n| policy.allows_name(n))
        })
        .map(|(ip, _)| (sandbox, *ip))
        .collect()
}

/// Forgets a removed sandbox; returns the nft lines deleting what was admitted for it (a new
/// sandbox on the same address must not inherit them).
pub fn forget(sandbox: Ipv4Addr) -> String {
    match lock().remove(&sandbox) {
        Some(e) => delete_lines(sandbox, e.admitted.into_keys()),
        None => String::new(),
    }
}

/// Whether `dst` is currently admitted for `sandbox` by one of its allowed names.
pub fn is_admitted(sandbox: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let now = Instant::now();
    lock()
        .get(&sandbox)
        .and_then(|e| e.admitted.get(&dst))
        .is_some_and(|(until, _)| *until > now)
}

/// The policy of the sandbox at `ip`, if it is one of ours.
pub fn policy_of(ip: Ipv4Addr) -> Option<CheckedPolicy> {
    lock().get(&ip).map(|e| e.policy.clone())
}

/// Admits `addrs` (address, TTL) for `sandbox` because they answered `name`: one nft
/// transaction, then the registry. Addresses the policy already allows by address (CIDR
/// rules: reached directly, without the SNI check) and protected ones (private ranges,
/// metadata, the host: a name never opens them) are skipped.
async fn admit(sandbox: Ipv4Addr, name: &str, addrs: &[(Ipv4Addr, u32)]) -> Result<()> {
    let ctx = host_ctx().get().cloned().unwrap_or_default();
    let now = Instant::now();
    let mut script = String::new();
    let mut planned = Vec::new();
    {
        let reg = lock();
        let Some(entry) = reg.get(&sandbox) else {
            return Ok(());
        };
        for &(ip, ttl) in addrs {
            let dst = IpAddr::V4(ip);
            if ctx.is_protected_addr(dst) {
                tracing::info!(%sandbox, %ip, name, "not admitting a protected address");
                continue;
            }
            let by_cidr = [80, 443].iter().all(|p| {
                let direct = CheckedPolicy {
                    domains: vec![],
                    ..entry.policy.clone()
                };
                direct.permits(&ctx, dst, Some(Protocol::Tcp), Some(*p))
            });
            if by_cidr {
                continue;
            }
            let ttl = Duration::from_secs(ttl.into()).clamp(MIN_ADMIT, MAX_ADMIT);
            let until = entry
                .admitted
                .get(&ip)
                .map_or(now + ttl, |(u, _)| (*u).max(now + ttl));
            let secs = (until - now).as_secs().max(1);
            let p = pair(sandbox, ip);
            // add (if absent), delete, add with the new timeout: one transaction, so the pair
            // is never missing, and the timeout is reset on every nft version.
            script += &format!(
                "add element inet {NFT_TABLE} {DOMAIN_SET4} {{ {p} }}\n\
                 delete element inet {NFT_TABLE} {DOMAIN_SET4} {{ {p} }}\n\
                 add element inet {NFT_TABLE} {DOMAIN_SET4} {{ {p} timeout {secs}s }}\n"
            );
            planned.push((ip, until));
        }
    }
    if planned.is_empty() {
        return Ok(());
    }
    super::netpolicy::nft_run(&(crate::policy::nft_domain_set(NFT_TABLE) + &script)).await?;
    let mut reg = lock();
    if let Some(entry) = reg.get_mut(&sandbox) {
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

// ---------------------------------------------------------------------------------------------
// The server.

/// Where the resolver listens and forwards.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The bridge address (every sandbox's gateway), port 53.
    pub listen: Ipv4Addr,
    /// The nameserver queries are forwarded to.
    pub upstream: SocketAddr,
}

/// Binds UDP and TCP port 53 on the bridge address and serves in the background. `ctx` is
/// what protected addresses and CIDR rules are judged against.
pub async fn start(cfg: ResolverConfig, ctx: HostContext) -> Result<()> {
    let _ = host_ctx().set(ctx);
    let addr = SocketAddr::from((cfg.listen, 53));
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(Error::io(format!("binding the DNS resolver to udp {addr}")))?;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("binding the DNS resolver to tcp {addr}")))?;
    let udp = Arc::new(udp);
    let upstream = cfg.upstream;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("resolver recv: {e}");
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let udp = udp.clone();
            tokio::spawn(async move {
                if let Some(answer) = handle(&query, from.ip(), upstream, false).await {
                    let _ = udp.send_to(&answer, from).await;
                }
            });
        }
    });
    tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((conn, from)) => {
                    tokio::spawn(serve_tcp(conn, from.ip(), upstream));
                }
                Err(e) => tracing::debug!("resolver accept: {e}"),
            }
        }
    });
    tracing::info!(%addr, %upstream, "DNS resolver for sandboxes listening");
    Ok(())
}

async fn serve_tcp(mut conn: TcpStream, from: IpAddr, upstream: SocketAddr) {
    loop {
        let query =
            match tokio::time::timeout(Duration::from_secs(10), read_framed(&mut conn)).await {
                Ok(Ok(q)) => q,
                _ => return,
            };
        let Some(answer) = handle(&query, from, upstream, true).await else {
            return;
        };
        if write_framed(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}

async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u16().await?;
    let mut msg = vec![0u8; len.into()];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    conn.write_all(&out).await
}

/// The answer to one query from `from`, or None to stay silent.
async fn handle(query: &[u8], from: IpAddr, upstream: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let IpAddr::V4(sandbox) = from else {
        return error_answer(&msg, ResponseCode::Refused);
    };
    let Some(policy) = policy_of(sandbox) else {
        return error_answer(&msg, ResponseCode::Refused);
    };
    if policy.air_gapped {
        return None;
    }
    let name = match msg.queries() {
        [q] => q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase(),
        _ if policy.domains.is_empty() => String::new(),
        _ => return error_answer(&msg, ResponseCode::Refused),
    };
    if !policy.allows_name(&name) {
        tracing::debug!(%sandbox, name, "DNS refused by policy");
        return error_answer(&msg, ResponseCode::Refused);
    }
    let answer = match forward(query, upstream, tcp).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%upstream, "DNS upstream: {e}");
            return error_answer(&msg, ResponseCode::ServFail);
        }
    };
    if policy.domains.is_empty() {
        return Some(answer);
    }
    let Ok(mut parsed) = Message::from_vec(&answer) else {
        return error_answer(&msg, ResponseCode::ServFail);
    };
    // Domain admissions are IPv4 (the proxy and its redirect are): an IPv6 address of an
    // allowed name would be unreachable under a deny default, so clients are not offered one
    // and connect over IPv4 at once instead of after a refused IPv6 attempt.
    let answer = if parsed
        .answers()
        .iter()
        .chain(parsed.additionals())
        .any(|r| r.record_type() == RecordType::AAAA)
    {
        let keep = |v: Vec<hickory_proto::rr::Record>| {
            v.into_iter()
                .filter(|r| r.record_type() != RecordType::AAAA)
                .collect()
        };
        let answers = keep(parsed.take_answers());
        let additionals = keep(parsed.take_additionals());
        parsed.insert_answers(answers);
        parsed.insert_additionals(additionals);
        match parsed.to_vec() {
            Ok(v) => v,
            Err(_) => return error_answer(&msg, ResponseCode::ServFail),
        }
    } else {
        answer
    };
    let addrs: Vec<(Ipv4Addr, u32)> = parsed
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((a.0, r.ttl())),
            _ => None,
        })
        .collect();
    if !addrs.is_empty()
        && let Err(e) = admit(sandbox, &name, &addrs).await
    {
        // An answer whose addresses cannot be reached would only mislead.
        tracing::warn!(%sandbox, name, "admitting addresses: {e}");
        return error_answer(&msg, ResponseCode::ServFail);
    }
    Some(answer)
}

fn error_answer(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.id(), query.op_code(), code);
    m.add_queries(query.queries().to_vec());
    m.set_recursion_desired(query.recursion_desired());
    m.set_recursion_available(true);
    m.to_vec().ok()
}

/// One exchange with the upstream, over the transport the sandbox used (a truncated UDP
/// answer goes back as it is; the client then retries over TCP, which is forwarded as TCP).
async fn forward(query: &[u8], upstream: SocketAddr, tcp: bool) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        if tcp {
            let mut c = TcpStream::connect(upstream).await?;
            write_framed(&mut c, query).await?;
            return read_framed(&mut c).await;
        }
        let bind: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let s = UdpSocket::bind(bind).await?;
        s.connect(upstream).await?;
        let mut buf = vec![0u8; 65535];
        // One retry: a lost datagram should not cost the sandbox its resolver's full timeout.
        for _ in 0..2 {
            s.send(query).await?;
            if let Ok(n) = tokio::time::timeout(UPSTREAM_TIMEOUT / 2, s.recv(&mut buf)).await {
                let n = n?;
                // The same id: a connected socket only hears the upstream, and the id guards
                // against a late answer to an earlier try.
                if n >= 2 && buf[..2] == query[..2] {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        }
        Err(std::io::ErrorKind::TimedOut.into())
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The upstream when none is configured: the first nameserver of the host's resolv.conf
/// (loopback ones included: the daemon runs in the host's namespace).
pub fn default_upstream() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::policy::parse_nameservers(&text)
        .first()
        .map(|ip| SocketAddr::new(*ip, 53))
}

/// Parses `dns_upstream`: "10.255.255.53", "198.51.100.251:53" or "[2001:db8::1]:53".
pub fn parse_upstream(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "dns_upstream '{s}' is not an address or address:port (e.g. 10.255.255.53 or \
                 198.51.100.251:53)"
            ))
        })
}

/// The nat rules that bring sandbox DNS and domain-admitted web traffic to the daemon: a base
/// chain of its own in the shared table (declared, flushed, filled: idempotent), and the
/// admitted-pairs set (flushed: after a restart the registry is empty, and sandboxes resolve
/// again). `dns_servers`: the nameservers sandboxes' resolv.conf names.
pub fn nft_redirect(
    bridge: &str,
    gateway: Ipv4Addr,
    dns_servers: &[IpAddr],
    proxy_port: u16,
) -> String {
    let v4: Vec<String> = dns_servers
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v) => Some(v.to_string()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut s = crate::policy::nft_domain_set(NFT_TABLE);
    s += &format!(
        "table inet {NFT_TABLE} {{ chain domain_redirect {{ type nat hook prerouting priority dstnat; policy accept; }}; }}\n\
         flush chain inet {NFT_TABLE} domain_redirect\n\
         flush set inet {NFT_TABLE} {DOMAIN_SET4}\n"
    );
    if !v4.is_empty() {
        s += &format!(
            "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {gateway}:53 comment \"sandbox DNS to the coppice resolver\"\n",
            v4.join(", ")
        );
    }
    s += &format!(
        "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip saddr . ip daddr @{DOMAIN_SET4} tcp dport {{ 80, 443 }} dnat ip to {gateway}:{proxy_port} comment \"domain check proxy\"\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NetworkPolicy;

    #[test]
    fn upstream_forms() {
        assert_eq!(
            parse_upstream("10.255.255.53").unwrap(),
            "10.255.255.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("198.51.100.251:5353").unwrap(),
            "198.51.100.251:5353".parse().unwrap()
        );
        assert!(parse_upstream("dns.example").is_err());
    }

    #[test]
    fn registry_prunes_names_no_longer_allowed() {
        let sbx = Ipv4Addr::new(10, 88, 200, 9);
        let p = |d: &[&str]| {
            NetworkPolicy {
                domains: d.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }
            .check()
            .unwrap()
        };
        assert_eq!(register(sbx, &p(&["a.test", "*.b.test"])), "");
        {
            let mut reg = lock();
            let e = reg.get_mut(&sbx).unwrap();
            let later = Instant::now() + Duration::from_secs(60);
            e.admitted.insert(
                Ipv4Addr::new(198, 51, 100, 1),
                (later, vec!["a.test".into()]),
            );
            e.admitted.insert(
                Ipv4Addr::new(198, 51, 100, 2),
                (later, vec!["x.b.test".into()]),
            );
        }
        assert!(is_admitted(sbx, Ipv4Addr::new(198, 51, 100, 1)));
        let next = p(&["*.b.test"]);
        assert_eq!(
            pruned(sbx, &next),
            [(sbx, Ipv4Addr::new(198, 51, 100, 1))],
            "only the address of the name no longer allowed"
        );
        register(sbx, &next);
        assert!(!is_admitted(sbx, Ipv4Addr::new(198, 51, 100, 1)));
        assert!(is_admitted(sbx, Ipv4Addr::new(198, 51, 100, 2)));
        let gone = forget(sbx);
        assert!(gone.contains("198.51.100.2"));
        assert!(!is_admitted(sbx, Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(forget(sbx), "");
    }

    #[test]
    fn redirect_rules() {
        let s = nft_redirect(
            "coppice0",
            Ipv4Addr::new(10, 88, 0, 1),
            &["10.255.255.53".parse().unwrap(), "fe80::1".parse().unwrap()],
            15080,
        );
        assert!(s.contains("ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 dnat ip to 10.88.0.1:53"));
        assert!(s.contains(
            "ip saddr . ip daddr @domain_admit4 tcp dport { 80, 443 } dnat ip to 10.88.0.1:15080"
        ));
    }
}
