//! The host half: the bridge, IPv4/IPv6 forwarding and the nft table, made idempotently at
//! every daemon start, and removed for uninstall.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::process::Stdio;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkFlags;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use tokio::io::AsyncWriteExt;

use super::config::{Ipv6Subnet, NFT_TABLE, NetConfig};
use super::netlink::destroy;
use super::netlink::{host_handle, link_by_name, nl_err, nl_errno, write_existing};
use super::ruleset::{host_ruleset, host_ruleset_recreate};
use crate::error::{Error, IoContext, Result};

/// Makes the host ready for sandboxes: the bridge (with its gateway address, up), IPv4
/// forwarding, and the `inet coppice` nft table. Idempotent; safe to call at every start.
pub async fn ensure_host(cfg: &NetConfig) -> Result<()> {
    let h = host_handle()?;
    let link = match link_by_name(&h, &cfg.bridge).await? {
        Some(l) => l,
        None => {
            let msg = LinkBridge::new(&cfg.bridge)
                .address(cfg.bridge_mac().to_vec())
                .build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) if nl_errno(&e) == Some(libc::EOPNOTSUPP) => {
                    return Err(Error::HostUnsupported(format!(
                        "cannot create bridge {}: the kernel has no bridge support (CONFIG_BRIDGE)",
                        cfg.bridge
                    )));
                }
                Err(e) => return Err(nl_err(format!("creating bridge {}", cfg.bridge))(e)),
            }
            link_by_name(&h, &cfg.bridge)
                .await?
                .ok_or_else(|| Error::internal(format!("bridge {} vanished", cfg.bridge)))?
        }
    };
    let index = link.header.index;
    let has_gateway = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing bridge addresses"))?
        .iter()
        .any(|a| {
            a.header.prefix_len == cfg.subnet.prefix
                && a.attributes.iter().any(|at| {
                    matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == cfg.gateway)
                })
        });
    if !has_gateway {
        match h
            .address()
            .add(index, IpAddr::V4(cfg.gateway), cfg.subnet.prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(nl_err(format!("adding {} to {}", cfg.gateway, cfg.bridge))(
                    e,
                ));
            }
        }
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting {} up", cfg.bridge)))?;
    }
    if let Some(v6) = cfg.ipv6 {
        ensure_bridge_v6(&h, index, &cfg.bridge, v6).await?;
    }
    drop(h);

    let fwd = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(fwd)
        .ctx(|| format!("reading {fwd}"))?
        .trim()
        != "1"
    {
        write_existing(fwd, "1")?;
    }

    // Fast path: this process already loaded exactly this ruleset and the table is still
    // there (one netlink round trip instead of an `nft` exec, ~10 ms here).
    let ruleset = host_ruleset(cfg);
    let cached = LOADED_RULESET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        == Some(ruleset.as_str());
    if cached && nft_table_exists(NFT_TABLE).unwrap_or(false) {
        return Ok(());
    }
    load_ruleset(cfg).await
}

/// Checks that the host can give sandboxes IPv6 and turns IPv6 forwarding on; `Err` says why
/// not (the daemon then runs IPv4 only). `proc_sys` is `/proc/sys` (a copy in tests).
/// Forwarding makes the kernel ignore router advertisements on interfaces with `accept_ra=1`,
/// which would drop the host's own autoconfigured addresses and default route: those
/// interfaces are switched to `accept_ra=2` (accept them even when forwarding) first.
pub fn prepare_ipv6_host(proc_sys: &std::path::Path) -> std::result::Result<(), String> {
    let conf = proc_sys.join("net/ipv6/conf");
    let read = |p: std::path::PathBuf| fs::read_to_string(&p).map(|s| s.trim().to_string());
    match read(conf.join("all/disable_ipv6")) {
        Err(e) => return Err(format!("the kernel has no IPv6 ({e})")),
        Ok(v) if v != "0" => {
            return Err("IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1)".into());
        }
        Ok(_) => {}
    }
    if read(conf.join("default/disable_ipv6")).ok().as_deref() == Some("1") {
        return Err(
            "new interfaces get no IPv6 on this host (net.ipv6.conf.default.disable_ipv6=1)".into(),
        );
    }
    if read(conf.join("all/forwarding")).ok().as_deref() == Some("1") {
        return Ok(());
    }
    let entries = fs::read_dir(&conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
    for entry in entries.flatten() {
        let ra = entry.path().join("accept_ra");
        if entry.file_name() != "all" && read(ra.clone()).ok().as_deref() == Some("1") {
            fs::write(&ra, "2").map_err(|e| format!("writing 2 to {}: {e}", ra.display()))?;
        }
    }
    let fwd = conf.join("all/forwarding");
    fs::write(&fwd, "1").map_err(|e| format!("writing 1 to {}: {e}", fwd.display()))
}

/// Gives the bridge its IPv6 address (no duplicate address detection: the address would stay
/// tentative, unusable, for a second after the first sandbox joins).
pub(super) async fn ensure_bridge_v6(
    h: &Handle,
    index: u32,
    bridge: &str,
    v6: Ipv6Subnet,
) -> Result<()> {
    let dad = format!("/proc/sys/net/ipv6/conf/{bridge}/accept_dad");
    if fs::read_to_string(&dad)
        .map(|v| v.trim() != "0")
        .unwrap_or(false)
    {
        write_existing(&dad, "0")?;
    }
    let has = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing bridge addresses"))?
        .iter()
        .any(|a| {
            a.header.prefix_len == v6.prefix
                && a.attributes.iter().any(
                    |at| matches!(at, AddressAttribute::Address(IpAddr::V6(ip)) if *ip == v6.gateway),
                )
        });
    if has {
        return Ok(());
    }
    match h
        .address()
        .add(index, IpAddr::V6(v6.gateway), v6.prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(format!(
            "adding {}/{} to {bridge}",
            v6.gateway, v6.prefix
        ))(e)),
    }
}

/// Loads [`host_ruleset`] unconditionally (flushing our rules, keeping our sets' elements);
/// falls back to [`host_ruleset_recreate`] when a chain cannot be redeclared.
pub async fn load_ruleset(cfg: &NetConfig) -> Result<()> {
    let ruleset = host_ruleset(cfg);
    if let Err(first) = nft_load(&ruleset).await {
        if matches!(first, Error::HostUnsupported(_)) {
            return Err(first);
        }
        tracing::warn!(error = %first, "reloading the nft table in place failed; recreating it");
        nft_load(&host_ruleset_recreate(cfg)).await?;
    }
    *LOADED_RULESET.lock().unwrap_or_else(|e| e.into_inner()) = Some(ruleset);
    Ok(())
}

/// The ruleset this process last loaded with [`ensure_host`].
pub(super) static LOADED_RULESET: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Whether `table inet <name>` exists: one NFT_MSG_GETTABLE over nfnetlink, no exec.
pub fn nft_table_exists(name: &str) -> io::Result<bool> {
    use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    const NLMSG_ERROR: u16 = 2;

    let sock = Socket::new(NETLINK_NETFILTER)?;
    let mut name_z = name.as_bytes().to_vec();
    name_z.push(0);
    let attr_len = 4 + name_z.len();
    let total = 16 + 4 + ((attr_len + 3) & !3);
    let mut req = Vec::with_capacity(total);
    req.extend((total as u32).to_ne_bytes());
    req.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // sequence number
    req.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend([libc::NFPROTO_INET as u8, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id
    req.extend((attr_len as u16).to_ne_bytes());
    req.extend(NFTA_TABLE_NAME.to_ne_bytes());
    req.extend(&name_z);
    req.resize(total, 0);
    sock.send(&req, 0)?;

    let mut found = false;
    for _ in 0..8 {
        let (buf, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > buf.len() {
                break;
            }
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                found = true;
            } else if kind == NLMSG_ERROR && len >= 20 {
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                return match -err {
                    0 => Ok(found),
                    libc::ENOENT => Ok(false),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            off += (len + 3) & !3;
        }
    }
    Ok(found)
}

/// Removes what [`ensure_host`] made: the nft table and the bridge (IP forwarding is left as
/// it is). For uninstall and tests; sandboxes must be gone first.
pub async fn remove_host(cfg: &NetConfig) -> Result<()> {
    let _ = nft_load(&format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
    ))
    .await;
    destroy(&cfg.bridge).await
}

/// Runs `nft -f -` with `script` on stdin.
pub async fn nft_load(script: &str) -> Result<()> {
    let mut child = match tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::HostUnsupported(
                "the `nft` command (nftables) is not installed; sandbox networking needs it \
                 (Debian: apt-get install nftables)"
                    .into(),
            ));
        }
        Err(e) => return Err(Error::io("running nft")(e)),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .ctx(|| "writing the ruleset to nft")?;
    drop(stdin);
    let out = child.wait_with_output().await.ctx(|| "waiting for nft")?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("Operation not supported") || err.contains("Protocol not supported") {
        return Err(Error::HostUnsupported(format!(
            "the kernel rejected the nftables ruleset (nf_tables, nft_nat, nft_ct needed): {err}"
        )));
    }
    Err(Error::Internal(format!(
        "nft -f failed ({}): {err}",
        out.status
    )))
}
