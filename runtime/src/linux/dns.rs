//! The host-side DNS resolver behind domain rules (docs/decisions/0008-network-domains.md).
//!
//! Sandboxes keep the resolv.conf their template was built with (the host's nameservers); nft
//! redirects their port-53 traffic to those nameservers here, on the bridge's address of the
//! same family (see [`nft_redirect`]), so no template rebuild is needed and a sandbox cannot
//! pick a different path to the same servers. The asker is identified by its source address,
//! IPv4 or IPv6 (spoofing is impossible: the sandbox cannot change its addresses, and the
//! bridge drops foreign sources).
//!
//! - no domain rules: the query is forwarded to the upstream as it is;
//! - domain rules: a name outside the list is answered REFUSED; an allowed one is forwarded,
//!   and every A record of the answer is admitted into `domain_admit4` as (sandbox . address),
//!   every AAAA record into `domain_admit6` as (sandbox's IPv6 address . address), with the
//!   record's TTL as the element timeout, before the answer is returned (so the sandbox's
//!   first connect already finds it); a sandbox without IPv6 gets no AAAA records;
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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::domains::DomainRegistry;
use super::net::NFT_TABLE;
use crate::error::{Error, Result};
use crate::linux::nftcompile::{DOMAIN_SET4, DOMAIN_SET6};
use crate::policy::HostContext;

/// How long one upstream exchange may take before the sandbox gets SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------------------------
// The server.

/// The resolver's UDP and TCP port 53 on one address, bound but not served yet.
pub struct Listener {
    addr: SocketAddr,
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Binds UDP and TCP port 53 on `ip` (the bridge's address of one family).
pub async fn bind(ip: IpAddr) -> Result<Listener> {
    let addr = SocketAddr::new(ip, 53);
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(Error::io(format!("binding the DNS resolver to udp {addr}")))?;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("binding the DNS resolver to tcp {addr}")))?;
    Ok(Listener { addr, udp, tcp })
}

/// Open TCP connections one sandbox may hold to the resolver (DNS over TCP is for the rare
/// large answer; a resolver library keeps one or two).
const TCP_CONNS_PER_SANDBOX: usize = 16;

/// Serves queries arriving on `listeners` in the background, forwarding to `upstream`. `ctx`
/// (final: with the addresses that did bind) is what protected addresses and CIDR rules are
/// judged against.
pub fn serve(
    listeners: Vec<Listener>,
    upstream: SocketAddr,
    ctx: HostContext,
    domains: Arc<DomainRegistry>,
) {
    domains.set_host(ctx);
    for Listener { addr, udp, tcp } in listeners {
        let udp = Arc::new(udp);
        let (udp_domains, tcp_domains) = (domains.clone(), domains.clone());
        tokio::spawn(async move {
            let domains = udp_domains;
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
                let domains = domains.clone();
                tokio::spawn(async move {
                    if let Some(answer) = handle(&domains, &query, from.ip(), upstream, false).await
                    {
                        let _ = udp.send_to(&answer, from).await;
                    }
                });
            }
        });
        tokio::spawn(async move {
            let domains = tcp_domains;
            let caps = crate::accept::PerSource::new(TCP_CONNS_PER_SANDBOX);
            loop {
                let (conn, from) = crate::accept::next(&tcp, "resolver").await;
                // Past the cap the connection is closed at once (its descriptor freed).
                if let Some(slot) = caps.take(from.ip()) {
                    let domains = domains.clone();
                    tokio::spawn(async move {
                        serve_tcp(&domains, conn, from.ip(), upstream).await;
                        drop(slot);
                    });
                }
            }
        });
        tracing::info!(%addr, %upstream, "DNS resolver for sandboxes listening");
    }
}

async fn serve_tcp(
    domains: &DomainRegistry,
    mut conn: TcpStream,
    from: IpAddr,
    upstream: SocketAddr,
) {
    loop {
        let query =
            match tokio::time::timeout(Duration::from_secs(10), read_framed(&mut conn)).await {
                Ok(Ok(q)) => q,
                _ => return,
            };
        let Some(answer) = handle(domains, &query, from, upstream, true).await else {
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
async fn handle(
    domains: &DomainRegistry,
    query: &[u8],
    from: IpAddr,
    upstream: SocketAddr,
    tcp: bool,
) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.message_type() != MessageType::Query {
        return None;
    }
    // Over either family: a sandbox's IPv6 address maps to the same entry.
    let Some((sandbox, policy)) = domains
        .sandbox_of(from)
        .and_then(|s| Some((s, domains.policy_of(s)?)))
    else {
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
    let Some((answer, addrs)) = plan_answer(answer, domains.admits_v6(sandbox)) else {
        return error_answer(&msg, ResponseCode::ServFail);
    };
    if !addrs.is_empty()
        && let Err(e) = domains.admit(sandbox, &name, &addrs).await
    {
        // An answer whose addresses cannot be reached would only mislead.
        tracing::warn!(%sandbox, name, "admitting addresses: {e}");
        return error_answer(&msg, ResponseCode::ServFail);
    }
    Some(answer)
}

/// (address, TTL) pairs of an answer, to admit.
type Admissions = Vec<(IpAddr, u32)>;

/// What an upstream answer to a sandbox with domain rules becomes: the bytes to send back and
/// the addresses to admit first. `v6`: whether the sandbox's IPv6 side can be admitted to.
/// None: the answer does not parse.
fn plan_answer(answer: Vec<u8>, v6: bool) -> Option<(Vec<u8>, Admissions)> {
    let mut parsed = Message::from_vec(&answer).ok()?;
    // Without it an IPv6 address of an allowed name could not be admitted, so it would be
    // unreachable under a deny default: clients are not offered one and connect over IPv4 at
    // once instead of after a refused IPv6 attempt.
    let answer = if !v6
        && parsed
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
        parsed.to_vec().ok()?
    } else {
        // Unchanged, byte for byte.
        answer
    };
    let addrs = parsed
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) if v6 => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect();
    Some((answer, addrs))
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
/// again). `dns_servers`: the nameservers sandboxes' resolv.conf names; `proxy6` and
/// `resolver6`: the bridge's IPv6 address when the proxy, the resolver, listens there.
pub fn nft_redirect(
    bridge: &str,
    gateway: Ipv4Addr,
    proxy6: Option<Ipv6Addr>,
    resolver6: Option<Ipv6Addr>,
    dns_servers: &[IpAddr],
    proxy_port: u16,
) -> String {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = dns_servers.iter().partition(|ip| ip.is_ipv4());
    let list = |v: &[IpAddr]| {
        v.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = crate::linux::nftcompile::nft_domain_set(NFT_TABLE);
    s += &format!(
        "table inet {NFT_TABLE} {{ chain domain_redirect {{ type nat hook prerouting priority dstnat; policy accept; }}; }}\n\
         flush chain inet {NFT_TABLE} domain_redirect\n\
         flush set inet {NFT_TABLE} {DOMAIN_SET4}\n\
         flush set inet {NFT_TABLE} {DOMAIN_SET6}\n"
    );
    if !v4.is_empty() {
        s += &format!(
            "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {gateway}:53 comment \"sandbox DNS to the coppice resolver\"\n",
            list(&v4)
        );
    }
    // Without `resolver6` the IPv6 nameservers stay out of the chains' accepted list
    // (`HostContext::open_dns_servers`): nothing to redirect.
    if let (Some(gw6), false) = (resolver6, v6.is_empty()) {
        s += &format!(
            "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip6 daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 dnat ip6 to [{gw6}]:53 comment \"sandbox DNS to the coppice resolver\"\n",
            list(&v6)
        );
    }
    s += &format!(
        "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip saddr . ip daddr @{DOMAIN_SET4} tcp dport {{ 80, 443 }} dnat ip to {gateway}:{proxy_port} comment \"domain check proxy\"\n"
    );
    if let Some(gw6) = proxy6 {
        s += &format!(
            "add rule inet {NFT_TABLE} domain_redirect iifname \"{bridge}\" ip6 saddr . ip6 daddr @{DOMAIN_SET6} tcp dport {{ 80, 443 }} dnat ip6 to [{gw6}]:{proxy_port} comment \"domain check proxy\"\n"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::nftcompile::SandboxAddrs;
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
    fn answers_keep_aaaa_only_with_ipv6() {
        use hickory_proto::rr::rdata::{A, AAAA};
        use hickory_proto::rr::{Name, Record};
        let name = Name::from_ascii("api.allowed.test.").unwrap();
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Response);
        m.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(198, 51, 100, 41)),
        ));
        m.add_answer(Record::from_rdata(
            name,
            60,
            RData::AAAA(AAAA("2001:db8:10::29".parse().unwrap())),
        ));
        let bytes = m.to_vec().unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 41));
        let v6 = "2001:db8:10::29".parse::<IpAddr>().unwrap();

        let (out, addrs) = plan_answer(bytes.clone(), true).unwrap();
        assert_eq!(out, bytes, "forwarded unchanged");
        assert_eq!(addrs, [(v4, 300), (v6, 60)]);

        let (out, addrs) = plan_answer(bytes, false).unwrap();
        let back = Message::from_vec(&out).unwrap();
        assert_eq!(back.id(), 7);
        assert_eq!(back.answers().len(), 1, "AAAA withheld without IPv6");
        assert_eq!(back.answers()[0].record_type(), RecordType::A);
        assert_eq!(addrs, [(v4, 300)]);

        assert!(plan_answer(vec![1, 2, 3], true).is_none());
    }

    /// A query for `name` (type A), as a client sends it.
    fn query(name: &str) -> Vec<u8> {
        use hickory_proto::op::Query;
        use hickory_proto::rr::Name;
        let mut m = Message::new();
        m.set_id(0x4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn rcode(answer: &[u8]) -> ResponseCode {
        Message::from_vec(answer).unwrap().response_code()
    }

    #[tokio::test]
    async fn queries_over_ipv6_are_attributed_like_ipv4() {
        // A real upstream on loopback: NOERROR without records (nothing to admit, so no nft).
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::new();
                r.set_id(q.id()).set_message_type(MessageType::Response);
                r.add_queries(q.queries().to_vec());
                let _ = up.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        let sbx = |n: u8| SandboxAddrs {
            ip: Ipv4Addr::new(10, 88, 201, n),
            ip6: Some(format!("fd88::c9:{n}").parse().unwrap()),
        };
        let (plain, doms, gapped) = (sbx(2), sbx(3), sbx(4));
        let policy = |p: NetworkPolicy| p.check().unwrap();
        let domains = DomainRegistry::default();
        domains.register(plain, &policy(NetworkPolicy::default()));
        domains.register(
            doms,
            &policy(NetworkPolicy {
                domains: vec!["api.allowed.test".into()],
                ..Default::default()
            }),
        );
        domains.register(
            gapped,
            &policy(NetworkPolicy {
                air_gapped: true,
                ..Default::default()
            }),
        );
        let ask = |name: &str, from: IpAddr| {
            let q = query(name);
            let domains = &domains;
            async move { handle(domains, &q, from, upstream, false).await }
        };
        for v6 in [false, true] {
            let of = |a: SandboxAddrs| match a.ip6 {
                Some(ip6) if v6 => IpAddr::V6(ip6),
                _ => IpAddr::V4(a.ip),
            };
            let code = async |name, a| ask(name, of(a)).await.map(|r| rcode(&r));
            let fam = if v6 { "v6" } else { "v4" };
            assert_eq!(
                code("evil.test.", plain).await,
                Some(ResponseCode::NoError),
                "{fam}"
            );
            let allowed = code("api.allowed.test.", doms).await;
            assert_eq!(allowed, Some(ResponseCode::NoError), "{fam}");
            let outside = code("evil.test.", doms).await;
            assert_eq!(outside, Some(ResponseCode::Refused), "{fam}");
            assert_eq!(code("evil.test.", gapped).await, None, "{fam}: air gap");
        }
        for unknown in ["10.88.201.99", "fd88::c9:99", "2001:db8::c9:2"] {
            let got = ask("evil.test.", unknown.parse().unwrap()).await.unwrap();
            assert_eq!(rcode(&got), ResponseCode::Refused, "{unknown}");
        }
        for a in [plain, doms, gapped] {
            domains.forget(a.ip);
        }
    }

    #[test]
    fn redirect_rules() {
        let gw6 = Some("fd88::1".parse().unwrap());
        let servers = [
            "10.255.255.53".parse().unwrap(),
            "2001:db8:ffff::2".parse().unwrap(),
            "fe80::1".parse().unwrap(),
        ];
        let rules = |proxy6, resolver6| {
            let gw = Ipv4Addr::new(10, 88, 0, 1);
            nft_redirect("coppice0", gw, proxy6, resolver6, &servers, 15080)
        };
        let s = rules(gw6, gw6);
        assert!(s.contains("ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 dnat ip to 10.88.0.1:53"));
        assert!(s.contains(
            "iifname \"coppice0\" ip6 daddr { 2001:db8:ffff::2, fe80::1 } meta l4proto { tcp, udp } th dport 53 dnat ip6 to [fd88::1]:53"
        ));
        assert!(s.contains(
            "ip saddr . ip daddr @domain_admit4 tcp dport { 80, 443 } dnat ip to 10.88.0.1:15080"
        ));
        assert!(s.contains(
            "ip6 saddr . ip6 daddr @domain_admit6 tcp dport { 80, 443 } dnat ip6 to [fd88::1]:15080"
        ));
        assert!(s.contains("flush set inet coppice domain_admit6\n"));
        let v4 = rules(None, None);
        assert!(!v4.contains("dnat ip6"), "{v4}");
        // Each IPv6 listener gets its own redirect only.
        let proxy6 = rules(gw6, None);
        assert!(!proxy6.contains("dport 53 dnat ip6"), "{proxy6}");
        assert!(proxy6.contains("dport { 80, 443 } dnat ip6"), "{proxy6}");
        let dns6 = rules(None, gw6);
        assert!(dns6.contains("dport 53 dnat ip6 to [fd88::1]:53"), "{dns6}");
        assert!(!dns6.contains("dport { 80, 443 } dnat ip6"), "{dns6}");
    }
}
