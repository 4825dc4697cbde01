//! The network policy executor on Linux: puts what [`crate::policy`] compiles into the
//! `inet coppice` table (one transaction per update) and cuts the open connections an update
//! no longer permits (conntrack).
//!
//! A sandbox's own transaction (its chains, rules and map elements) is sent over netlink by
//! [`super::nftwire`], at a cost that does not grow with the number of sandboxes. The shared
//! objects, loaded once at start, and the resolver's admissions go through
//! [`super::nftrun`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;

use super::net::{self, NFT_TABLE};
use crate::error::{Error, Result};
use crate::linux::nftcompile::SandboxAddrs;
use crate::policy::{self, CheckedPolicy, HostContext, Protocol};

pub use super::nftrun::nft_run;

use std::sync::Arc;

use super::domains::DomainRegistry;
use super::nftcompile;

/// The host facts the compiler needs: every local address and the resolv.conf nameservers.
pub async fn host_context() -> Result<HostContext> {
    let (conn, h, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket")(e))?;
    tokio::spawn(conn);
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::Internal(format!("listing host addresses: {e}")))?;
    let mut host_addrs: Vec<IpAddr> = addrs
        .iter()
        .flat_map(|a| a.attributes.iter())
        .filter_map(|at| match at {
            AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
        .collect();
    host_addrs.sort();
    host_addrs.dedup();
    let mut dns_servers = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        dns_servers.extend(
            policy::parse_nameservers(&text)
                .into_iter()
                .filter(|ip| !ip.is_loopback()),
        );
    }
    dns_servers.sort();
    dns_servers.dedup();
    Ok(HostContext {
        host_addrs,
        dns_servers,
        ..Default::default()
    })
}

/// Loads the shared chains, maps and sets every sandbox's policy uses (idempotent; after
/// [`net::ensure_host`], with the final host context: it holds the resolver rules).
pub async fn ensure_shared(ctx: &HostContext) -> Result<()> {
    nft_run(&nftcompile::nft_shared(NFT_TABLE, ctx)).await
}

/// Makes `policy` the one in force for the sandbox at `ip` (slot `slot`, init `pid` once
/// started) in one transaction, then ends its open connections the new policy does not permit.
pub async fn apply(
    slot: u32,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    pid: Option<i32>,
    policy: &CheckedPolicy,
    ctx: &HostContext,
    domains: &Arc<DomainRegistry>,
) -> Result<()> {
    super::domains::check_supported(policy, ctx)?;
    // Domain-admitted addresses the new policy no longer allows go in the same transaction.
    let dropped = domains.pruned(ip, policy);
    let addrs = SandboxAddrs { ip, ip6 };
    let ops = nftcompile::apply_ops(slot, addrs, policy, ctx, &dropped);
    // Group-committed with other sandboxes' (fork fan-outs, linux/nftbatch.rs).
    super::nftbatch::run(ops).await?;
    let late = domains.register(addrs, policy);
    if !late.is_empty() {
        // Admitted under the old policy while the transaction ran.
        nft_run(&late).await?;
    }
    // The new rules already refuse every packet the policy forbids, so the update is complete
    // here; ending the forbidden connections (a few execs) happens right after, off the
    // caller's path.
    if let Some(pid) = pid {
        let (policy, ctx, domains) = (policy.clone(), ctx.clone(), domains.clone());
        tokio::spawn(async move {
            cut_flows(&domains, ip, IpAddr::V4(ip), pid, &policy, &ctx).await;
            if let Some(ip6) = ip6 {
                cut_flows(&domains, ip, IpAddr::V6(ip6), pid, &policy, &ctx).await;
            }
        });
    }
    Ok(())
}

/// Removes the sandbox's chains and map and set entries.
pub async fn remove(
    slot: u32,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    domains: &DomainRegistry,
) -> Result<()> {
    // Its admitted domain addresses first, on their own: a new sandbox on this address must
    // not inherit them even if removing the chain fails.
    let forget = domains.forget(ip);
    if !forget.is_empty() {
        nft_run(&forget).await?;
    }
    super::nftbatch::run(nftcompile::remove_ops(slot, SandboxAddrs { ip, ip6 })).await
}

/// Caps the sandbox's bandwidth at `bps` each way, or removes the cap: a tbf qdisc on the host
/// end of its veth (traffic to the sandbox) and one on `eth0` inside its netns (traffic from
/// it; the netns belongs to the host, so root in the sandbox cannot remove it).
pub async fn apply_bandwidth(host_if: &str, pid: i32, bps: Option<u64>) -> Result<()> {
    let pid = pid.to_string();
    let sides: [(Vec<&str>, &str); 2] = [
        (vec![], host_if),
        (vec!["nsenter", "-t", &pid, "-n", "--"], net::SANDBOX_IF),
    ];
    for (prefix, dev) in sides {
        let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        args.extend(["tc", "qdisc"].map(String::from));
        match bps {
            Some(bps) => {
                args.extend(["replace", "dev", dev].map(String::from));
                args.extend(tbf_args(bps));
            }
            None => args.extend(["del", "dev", dev, "root"].map(String::from)),
        }
        let out = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .output()
            .await
            .map_err(Error::io(format!("running {}", args[0])))?;
        // Deleting a cap that is not there fails; that is the state we want.
        if !out.status.success() && bps.is_some() {
            return Err(Error::Internal(format!(
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// One tracked connection from a sandbox, as `conntrack -L` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Protocol name as conntrack prints it, e.g. `tcp`.
    pub proto: String,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port, for protocols that have ports.
    pub sport: Option<u16>,
    /// Destination port, for protocols that have ports.
    pub dport: Option<u16>,
}

/// Parses `conntrack -L` lines (original direction: the first src/dst/sport/dport).
pub fn parse_conntrack(text: &str) -> Vec<Flow> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let mut proto = words.next()?;
            if proto == "ipv4" || proto == "ipv6" {
                words.next();
                proto = words.next()?;
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            Some(Flow {
                proto: proto.to_string(),
                dst: field("dst=")?.parse().ok()?,
                sport: field("sport=").and_then(|p| p.parse().ok()),
                dport: field("dport=").and_then(|p| p.parse().ok()),
            })
        })
        .collect()
}

/// The host's conntrack entries whose original source is `ip`. Read from
/// /proc/net/nf_conntrack where the kernel has it: an update then costs no process (a
/// `conntrack -L` exec per update took several ms of a 2-core host's CPU, and back-to-back
/// updates queued behind it). None when neither source is available.
async fn flows_from(ip: IpAddr) -> Option<Vec<Flow>> {
    let from_proc =
        tokio::task::spawn_blocking(|| std::fs::read_to_string("/proc/net/nf_conntrack"))
            .await
            .ok()
            .and_then(Result::ok);
    if let Some(text) = from_proc {
        let mine = text.lines().filter(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("src="))
                .and_then(|a| a.parse::<IpAddr>().ok())
                == Some(ip)
        });
        return Some(parse_conntrack(&mine.collect::<Vec<_>>().join("\n")));
    }
    let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    match tokio::process::Command::new("conntrack")
        .args(["-L", "-f", family, "-s", &ip.to_string()])
        .output()
        .await
    {
        Ok(out) => Some(parse_conntrack(&String::from_utf8_lossy(&out.stdout))),
        Err(e) => {
            tracing::debug!("conntrack not available ({e}); open flows end on their next packet");
            None
        }
    }
}

/// Ends the sandbox's connections that `policy` no longer permits, busy or idle: their sockets
/// in the sandbox are destroyed (`ss -K` in its netns: the program sees ECONNABORTED at once)
/// and their conntrack entries deleted (the remote end is reset by its next packet, which
/// finds no NAT entry). The rules alone already refuse every further packet of such a flow.
/// Best effort: without conntrack-tools only the rules act. `sandbox`: the sandbox's IPv4
/// address (the registry's key), `ip`: its address of the family being cut.
async fn cut_flows(
    domains: &DomainRegistry,
    sandbox: Ipv4Addr,
    ip: IpAddr,
    pid: i32,
    policy: &CheckedPolicy,
    ctx: &HostContext,
) {
    let Some(flows) = flows_from(ip).await else {
        return;
    };
    let doomed: Vec<&Flow> = flows
        .iter()
        .filter(|f| {
            let proto = match f.proto.as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                "icmp" | "icmpv6" => Some(Protocol::Icmp),
                _ => None,
            };
            let admitted = domains.is_admitted(sandbox, f.dst);
            !admitted && !policy.permits(ctx, f.dst, proto, f.dport)
        })
        .collect();
    let pid = pid.to_string();
    let kills = doomed.iter().filter(|f| f.proto == "tcp").map(|f| {
        let dst = ss_addr(f.dst);
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["-t", &pid, "-n", "--", "ss", "-K", "dst", &dst]);
        if let (Some(s), Some(d)) = (f.sport, f.dport) {
            cmd.args([
                "dport",
                "=",
                &format!(":{d}"),
                "sport",
                "=",
                &format!(":{s}"),
            ]);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        async move { cmd.status().await }
    });
    futures::future::join_all(kills).await;
    let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    let deletes = doomed.iter().map(|f| {
        let mut cmd = tokio::process::Command::new("conntrack");
        cmd.args(["-D", "-f", family, "-s", &ip.to_string()]);
        cmd.args(["-d", &f.dst.to_string()]);
        cmd.args(["-p", &f.proto]);
        if let (Some(s), Some(d)) = (f.sport, f.dport) {
            cmd.args(["--sport", &s.to_string(), "--dport", &d.to_string()]);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        async move { cmd.status().await }
    });
    let results = futures::future::join_all(deletes).await;
    if !doomed.is_empty() {
        tracing::debug!(sandbox_ip = %ip, cut = doomed.len(), ?results, "cut flows");
    }
}

/// An address as `ss` filters take it: IPv6 in brackets (bare, its colons read as a port).
fn ss_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `tc qdisc replace dev <if> ...` arguments that cap an interface's egress at `bps`. The
/// bucket holds 20 ms of traffic (at least 16 KiB): enough for TSO bursts, too little to show
/// up in a measured rate; up to 50 ms of packets queue before drops.
pub fn tbf_args(bps: u64) -> Vec<String> {
    let burst = (bps / 8 / 50).max(16 * 1024);
    vec![
        "root".into(),
        "tbf".into(),
        "rate".into(),
        format!("{bps}bit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_arguments() {
        assert_eq!(
            tbf_args(40_000_000).join(" "),
            "root tbf rate 40000000bit burst 100000 latency 50ms"
        );
        assert_eq!(
            tbf_args(1_000_000).join(" "),
            "root tbf rate 1000000bit burst 16384 latency 50ms"
        );
    }

    #[test]
    fn ss_filter_addresses() {
        assert_eq!(ss_addr("198.51.100.10".parse().unwrap()), "198.51.100.10");
        assert_eq!(
            ss_addr("2001:db8:10::29".parse().unwrap()),
            "[2001:db8:10::29]"
        );
    }

    #[test]
    fn conntrack_lines() {
        let text = "tcp      6 431999 ESTABLISHED src=10.88.0.7 dst=198.51.100.10 sport=40000 dport=8080 src=198.51.100.10 dst=192.0.2.2 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n\
                    udp      17 29 src=10.88.0.7 dst=10.255.255.53 sport=5353 dport=53 [UNREPLIED] src=10.255.255.53 dst=192.0.2.2 sport=53 dport=5353 mark=0 use=1\n\
                    icmp     1 29 src=10.88.0.7 dst=198.51.100.1 type=8 code=0 id=3 src=198.51.100.1 dst=192.0.2.2 type=0 code=0 id=3 mark=0 use=1\n\
                    conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n";
        let flows = parse_conntrack(text);
        assert_eq!(flows.len(), 3);
        assert_eq!(
            flows[0],
            Flow {
                proto: "tcp".into(),
                dst: "198.51.100.10".parse().unwrap(),
                sport: Some(40000),
                dport: Some(8080)
            }
        );
        assert_eq!(flows[1].dport, Some(53));
        assert_eq!((flows[2].proto.as_str(), flows[2].dport), ("icmp", None));
        // /proc/net/nf_conntrack writes IPv6 addresses in full.
        let v6 = "ipv6     10 tcp      6 431999 ESTABLISHED src=fd88:0000:0000:0000:0000:0000:0000:0004 dst=2001:0db8:0010:0000:0000:0000:0000:0029 sport=40000 dport=443 src=fd88:0000:0000:0000:0000:0000:0000:0001 dst=fd88:0000:0000:0000:0000:0000:0000:0004 sport=15080 dport=40000 [ASSURED] mark=0 zone=0 use=2\n";
        assert_eq!(
            parse_conntrack(v6),
            [Flow {
                proto: "tcp".into(),
                dst: "2001:db8:10::29".parse().unwrap(),
                sport: Some(40000),
                dport: Some(443)
            }]
        );
    }
}
