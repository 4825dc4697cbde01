//! Unix sockets made inside another network namespace, for connections to a sandbox's agent.
//!
//! Why: the end a unix listener accepts lives in the network namespace of the socket that
//! connected, not the listener's. Connections the host opens from its own namespace would put
//! sockets of the host's namespace into the agent's file table, and CRIU (a memory snapshot)
//! collects a tree's sockets in the tree's namespace only: it would fail on every connection
//! the daemon holds. Made inside the sandbox's namespace, all of the agent's sockets are where
//! CRIU looks. A path-bound socket is reached from any namespace, so nothing else changes.
//!
//! `setns` applies to the calling thread only. The hop in, `socket(2)` and the hop back run
//! synchronously on the caller's thread (no await between them, so no other task runs on it
//! meanwhile): a few microseconds, and concurrent callers do not queue behind one another.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

/// The daemon's own network namespace, where every thread returns.
static HOME: OnceLock<std::io::Result<File>> = OnceLock::new();

/// A non-blocking, close-on-exec unix stream socket made in the network namespace `netns`
/// (e.g. `/proc/<pid>/ns/net`).
pub fn stream_socket_in(netns: &Path) -> std::io::Result<OwnedFd> {
    let home = HOME
        .get_or_init(|| File::open("/proc/thread-self/ns/net"))
        .as_ref()
        .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let ns = File::open(netns)?;
    setns(&ns)?;
    // SAFETY: socket(2) with constant arguments; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    let made = if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: fd was just returned by socket(2).
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // Back home whatever happened: this thread goes on serving the host.
    setns(home).expect("returning to the host's network namespace");
    made
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
