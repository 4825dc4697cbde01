//! Unix sockets made inside another network namespace, for connections to a sandbox's agent.
//!
//! Why: the end a unix listener accepts lives in the network namespace of the socket that
//! connected, not the listener's. Connections the host opens from its own namespace would put
//! sockets of the host's namespace into the agent's file table, and CRIU (a memory snapshot)
//! collects a tree's sockets in the tree's namespace only: it would fail on every connection
//! the daemon holds. Made inside the sandbox's namespace, all of the agent's sockets are where
//! CRIU looks. A path-bound socket is reached from any namespace, so nothing else changes.
//!
//! `setns` applies to the calling thread only; one long-lived thread hops into the asked
//! namespace, makes the socket and hops back, so the async threads never change namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

type Reply = tokio::sync::oneshot::Sender<std::io::Result<OwnedFd>>;

static MAKER: Mutex<Option<mpsc::Sender<(PathBuf, Reply)>>> = Mutex::new(None);

/// A non-blocking, close-on-exec unix stream socket made in the network namespace `netns`
/// (e.g. `/proc/<pid>/ns/net`).
pub async fn stream_socket_in(netns: &Path) -> std::io::Result<OwnedFd> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let mut maker = MAKER.lock().unwrap_or_else(|e| e.into_inner());
        let sender = match maker.as_ref() {
            Some(s) => s.clone(),
            None => {
                let s = start_maker()?;
                *maker = Some(s.clone());
                s
            }
        };
        if sender.send((netns.to_path_buf(), tx)).is_err() {
            *maker = None;
            return Err(std::io::Error::other("the socket maker thread is gone"));
        }
    }
    rx.await
        .map_err(|_| std::io::Error::other("the socket maker thread is gone"))?
}

fn start_maker() -> std::io::Result<mpsc::Sender<(PathBuf, Reply)>> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let (tx, rx) = mpsc::channel::<(PathBuf, Reply)>();
    std::thread::Builder::new()
        .name("netns-sockets".into())
        .spawn(move || {
            for (netns, reply) in rx {
                let _ = reply.send(make_in(&netns, &home));
            }
        })?;
    Ok(tx)
}

fn make_in(netns: &Path, home: &std::fs::File) -> std::io::Result<OwnedFd> {
    let ns = std::fs::File::open(netns)?;
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
    // Back home whatever happened: the next request must start from the host's namespace.
    setns(home).expect("returning to the host's network namespace");
    made
}

fn setns(ns: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
