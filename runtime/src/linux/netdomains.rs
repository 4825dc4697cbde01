//! Starts what domain rules need when the daemon starts: the DNS resolver ([`super::dns`]),
//! the SNI / Host check proxy ([`super::sniproxy`]) and the nat rules that bring sandbox
//! traffic to them. Without them (no upstream nameserver, port 53 taken on the bridge
//! address) sandboxes keep reaching the host's nameservers directly and policies with
//! domains are refused with a message saying why.

use std::net::IpAddr;
use std::sync::Arc;

use super::domains::DomainRegistry;
use super::net::NetConfig;
use super::{dns, nftrun, sniproxy};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::policy::HostContext;

/// Starts the resolver and the proxy; returns `ctx` with them filled in (unchanged when they
/// could not start: that is logged, and the daemon runs without domain rules).
pub async fn start(
    cfg: &Config,
    net: &NetConfig,
    mut ctx: HostContext,
    domains: &Arc<DomainRegistry>,
) -> Result<HostContext> {
    let upstream = match &cfg.dns_upstream {
        Some(s) => dns::parse_upstream(s)?,
        None => match dns::default_upstream() {
            Some(u) => u,
            None => {
                tracing::warn!(
                    "no nameserver in /etc/resolv.conf and no dns_upstream configured: \
                     sandboxes get no Coppice resolver and domain rules are unavailable"
                );
                return Ok(ctx);
            }
        },
    };
    let gw = net.gateway;
    let mut full = ctx.clone();
    full.resolver = Some(IpAddr::V4(gw));
    full.sni_proxy_port = Some(sniproxy::PROXY_PORT);
    let started = async {
        sniproxy::start(IpAddr::V4(gw), domains.clone()).await?;
        // IPv6 admissions need the proxy on the bridge's IPv6 address; without it domain
        // rules stay IPv4 (AAAA records withheld) rather than unavailable.
        if let Some(v6) = net.ipv6 {
            match sniproxy::start(IpAddr::V6(v6.gateway), domains.clone()).await {
                Ok(()) => full.sni_proxy6 = Some(v6.gateway),
                Err(e) => tracing::warn!("domain rules are IPv4 only: {e}"),
            }
        }
        let mut listeners = vec![dns::bind(IpAddr::V4(gw)).await?];
        if let Some(v6) = net.ipv6 {
            match dns::bind(IpAddr::V6(v6.gateway)).await {
                Ok(l) => {
                    listeners.push(l);
                    full.resolver6 = Some(v6.gateway);
                }
                Err(e) => warn_no_resolver6(&ctx.dns_servers, &e),
            }
        }
        dns::serve(listeners, upstream, full.clone(), domains.clone());
        nftrun::nft_run(&dns::nft_redirect(
            &net.bridge,
            gw,
            full.sni_proxy6,
            full.resolver6,
            &ctx.dns_servers,
            sniproxy::PROXY_PORT,
        ))
        .await
    };
    match started.await {
        Ok(()) => Ok(full),
        Err(e) => {
            tracing::warn!("domain rules unavailable: {e}");
            // A redirect left by an earlier daemon would send DNS to nobody.
            let _ = nftrun::nft_run(&format!(
                "table inet {t} {{ chain domain_redirect {{ type nat hook prerouting priority dstnat; policy accept; }}; }}\n\
                 flush chain inet {t} domain_redirect\n",
                t = super::net::NFT_TABLE
            ))
            .await;
            ctx.resolver = None;
            ctx.sni_proxy_port = None;
            ctx.sni_proxy6 = None;
            ctx.resolver6 = None;
            Ok(ctx)
        }
    }
}

/// Says what the resolver missing on IPv6 costs: the host's IPv6 nameservers are then closed
/// to sandboxes rather than open around it (`HostContext::open_dns_servers`).
fn warn_no_resolver6(dns_servers: &[IpAddr], e: &Error) {
    let v4 = dns_servers.iter().any(IpAddr::is_ipv4);
    match (dns_servers.iter().any(IpAddr::is_ipv6), v4) {
        (false, _) => tracing::warn!("the DNS resolver listens on IPv4 only: {e}"),
        (true, true) => tracing::warn!(
            "the host's IPv6 nameservers are closed to sandboxes (they fall back to its IPv4 \
             ones): the DNS resolver cannot listen on IPv6 to redirect them: {e}"
        ),
        (true, false) => tracing::warn!(
            "sandboxes get no DNS: the host's nameservers are all IPv6 and the DNS resolver \
             cannot listen on IPv6 to redirect them: {e}"
        ),
    }
}
