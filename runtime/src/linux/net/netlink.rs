//! Small rtnetlink and /proc/sys helpers shared by the host and sandbox halves.

use std::fs;
use std::io::Write;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

use crate::error::{Error, IoContext, Result};

pub(super) fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => Error::Io {
            context: what,
            source: m.to_io(),
        },
        other => Error::Internal(format!("{what}: {other}")),
    }
}

pub(super) fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A host-netns rtnetlink handle whose connection runs on the current tokio runtime and ends
/// when the handle is dropped.
pub(super) fn host_handle() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().ctx(|| "opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Looks a link up by name: `Ok(None)` when it does not exist.
pub(super) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

pub(super) fn write_existing(path: &str, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .ctx(|| format!("opening {path}"))?;
    f.write_all(value.as_bytes())
        .ctx(|| format!("writing '{value}' to {path}"))
}

/// Deletes a link by name (the host end of a veth takes its peer with it). Already gone is Ok.
pub async fn destroy(host_if: &str) -> Result<()> {
    let h = host_handle()?;
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(host_if.to_owned()));
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(nl_err(format!("deleting link {host_if}"))(e)),
    }
}
