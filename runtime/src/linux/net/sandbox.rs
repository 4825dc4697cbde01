//! One sandbox's half: its netns, veth pair, addresses and routes, made over rtnetlink without
//! an exec; and their removal.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::config::{HOST_IF_PREFIX, NetConfig, SandboxNetPlan};
use super::netlink::{destroy, host_handle, link_by_name, nl_err, nl_errno, write_existing};
use crate::error::{Error, IoContext, Result};

/// One sandbox's network: its netns (alive while `netns` is open or a process is inside) and
/// the host end of its veth.
#[derive(Debug)]
pub struct SandboxNet {
    /// The sandbox's slot.
    pub slot: u32,
    /// The sandbox's IPv4 address.
    pub ip: Ipv4Addr,
    /// Host end of its veth, `cps<slot>`.
    pub host_if: String,
    /// The netns, open.
    pub netns: OwnedFd,
}

/// Creates slot `slot`'s netns, veth pair, addresses and routes. The bridge must exist
/// ([`ensure_host`]). A leftover `cps<slot>` from a crash is replaced.
pub async fn create(cfg: &NetConfig, slot: u32) -> Result<SandboxNet> {
    prepare(cfg, slot).await?.wire().await
}

/// A sandbox netns that exists but is not wired to the bridge yet. Splitting the two lets the
/// sandbox start (it only needs to join the netns) while its veth is being set up.
pub struct PendingNet {
    plan: SandboxNetPlan,
    netns: OwnedFd,
    ns_sock: OwnedFd,
}

/// Creates the netns, its sysctls and a netlink socket inside it, from a short-lived thread.
pub async fn prepare(cfg: &NetConfig, slot: u32) -> Result<PendingNet> {
    let plan = cfg.plan(slot)?;
    let (netns, ns_sock) = new_netns(plan.sysctls).await?;
    Ok(PendingNet {
        plan,
        netns,
        ns_sock,
    })
}

impl PendingNet {
    /// The netns, for the sandbox to join (e.g. through `/proc/<pid>/fd/<n>`).
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Wires the veth (host end on the bridge, `eth0` inside), addresses and routes.
    pub async fn wire(self) -> Result<SandboxNet> {
        wire(self.plan, self.netns, self.ns_sock).await
    }
}

pub(super) async fn wire(
    plan: SandboxNetPlan,
    netns: OwnedFd,
    ns_sock: OwnedFd,
) -> Result<SandboxNet> {
    let slot = plan.slot;
    // SAFETY: `ns_sock` is a netlink socket we own; ownership moves into the TokioSocket.
    let ns_sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(ns_sock.into_raw_fd()) };
    let (conn, ns, _) = rtnetlink::from_socket(ns_sock);
    tokio::spawn(conn);
    let host = host_handle()?;

    let bridge = link_by_name(&host, &plan.bridge).await?.ok_or_else(|| {
        Error::Unavailable(format!(
            "bridge {} is missing (ensure_host not run?)",
            plan.bridge
        ))
    })?;

    // veth: host end joins the bridge and comes up; the peer is born inside the netns as eth0.
    let peer = single_queue(
        LinkMessageBuilder::<LinkUnspec>::new()
            .name(plan.sandbox_if)
            .address(plan.mac.to_vec())
            .setns_by_fd(netns.as_raw_fd()),
    )
    .build();
    let veth = || {
        single_queue(
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(plan.host_if.clone())
                .controller(bridge.header.index)
                .up()
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.clone()))),
        )
        .build()
    };
    match host.link().add(veth()).execute().await {
        Ok(()) => {}
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {
            tracing::warn!(host_if = %plan.host_if, "replacing a leftover veth");
            destroy(&plan.host_if).await?;
            host.link()
                .add(veth())
                .execute()
                .await
                .map_err(nl_err(format!("creating veth {}", plan.host_if)))?;
        }
        Err(e) => return Err(nl_err(format!("creating veth {}", plan.host_if))(e)),
    }

    let host_side = async {
        let msg = LinkBridgePort::new(0)
            .name(plan.host_if.clone())
            .isolated(true)
            .build();
        host.link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl_err(format!("isolating bridge port {}", plan.host_if)))
    };
    let ns_side = async {
        let lo_up = ns
            .link()
            .set(LinkUnspec::new_with_index(1).up().build())
            .execute();
        let (lo, eth0) = futures::join!(lo_up, link_by_name(&ns, plan.sandbox_if));
        lo.map_err(nl_err("setting lo up in the sandbox netns"))?;
        let eth0 = eth0?
            .ok_or_else(|| Error::internal("eth0 did not appear in the sandbox netns"))?
            .header
            .index;
        ns.address()
            .add(eth0, IpAddr::V4(plan.ip), plan.prefix)
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding {}/{} to eth0",
                plan.ip, plan.prefix
            )))?;
        if let Some((ip6, prefix6, _)) = plan.ip6 {
            ns.address()
                .add(eth0, IpAddr::V6(ip6), prefix6)
                .execute()
                .await
                .map_err(nl_err(format!("adding {ip6}/{prefix6} to eth0")))?;
        }
        ns.link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl_err("setting eth0 up"))?;
        ns.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(plan.gateway)
                    .output_interface(eth0)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding the default route via {}",
                plan.gateway
            )))?;
        if let Some((_, _, gateway6)) = plan.ip6 {
            ns.route()
                .add(
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .gateway(gateway6)
                        .output_interface(eth0)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding the IPv6 default route via {gateway6}"
                )))?;
        }
        Ok(())
    };
    let res = futures::try_join!(host_side, ns_side);
    if let Err(e) = res {
        let _ = destroy(&plan.host_if).await;
        return Err(e);
    }
    Ok(SandboxNet {
        slot,
        ip: plan.ip,
        host_if: plan.host_if,
        netns,
    })
}

/// One TX and one RX queue, asked for explicitly. Without these attributes veth is created
/// with a queue per possible CPU and then trimmed to one (`veth_init_queues`), and trimming a
/// registered device waits for an RCU grace period while holding RTNL: every other netlink
/// change on the host (other sandboxes' creates and deletes) queued behind it at cc=50.
pub(super) fn single_queue<T>(b: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
    b.append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
}

/// Creates a netns on a dedicated thread (so no pooled thread is left inside it): unshare,
/// keep a handle on it, write its sysctls, open a netlink socket bound to it.
pub(super) async fn new_netns(
    sysctls: &'static [(&'static str, &'static str)],
) -> Result<(OwnedFd, OwnedFd)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("coppice-netns".into())
        .spawn(move || {
            let _ = tx.send(new_netns_on_this_thread(sysctls));
        })
        .ctx(|| "spawning the netns thread")?;
    rx.await
        .map_err(|_| Error::internal("the netns thread died"))?
}

pub(super) fn new_netns_on_this_thread(sysctls: &[(&str, &str)]) -> Result<(OwnedFd, OwnedFd)> {
    // SAFETY: NEWNET only changes this thread's network namespace; the thread ends right after
    // and no fd table or memory is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.map_err(
        |e| {
            if e == rustix::io::Errno::PERM {
                Error::HostUnsupported(
                    "creating a network namespace needs root (CAP_SYS_ADMIN)".into(),
                )
            } else {
                Error::io("unshare(CLONE_NEWNET)")(e.into())
            }
        },
    )?;
    let ns: OwnedFd = fs::File::open("/proc/thread-self/ns/net")
        .ctx(|| "opening /proc/thread-self/ns/net")?
        .into();
    for (key, value) in sysctls {
        write_existing(&format!("/proc/sys/{key}"), value)?;
    }
    let sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        .ctx(|| "opening a netlink socket in the sandbox netns")?;
    // SAFETY: into_raw_fd hands us sole ownership of the socket's fd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) };
    Ok((ns, sock))
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`; sockets it creates
/// stay in that namespace. For probes, tests and in-netns helpers.
pub fn run_in_netns<T: Send + 'static>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let fd = netns
        .try_clone_to_owned()
        .ctx(|| "duplicating the netns fd")?;
    std::thread::spawn(move || -> Result<T> {
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| Error::io("setns(CLONE_NEWNET)")(e.into()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::internal("netns thread panicked"))?
}

/// Every `cps<N>` link in the host netns (for leak cleanup after a crash).
pub async fn list_host_ifs() -> Result<Vec<String>> {
    let h = host_handle()?;
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))?;
    let mut out: Vec<String> = links
        .iter()
        .flat_map(|l| l.attributes.iter())
        .filter_map(|a| match a {
            LinkAttribute::IfName(n) if is_host_ifname(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `cps` followed by a slot number.
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IF_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
