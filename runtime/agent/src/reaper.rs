//! Child reaping (PID 1 duty). One task waits for SIGCHLD and reaps every exited child with
//! `waitpid(-1, WNOHANG)`: statuses of children we spawned go to whoever registered them,
//! orphans reparented to us are just discarded (otherwise they stay zombies forever).
//!
//! Spawning goes through [`spawn`] or [`spawn_with`], which hold the registry lock across the
//! start of the child and its registration. The reaper takes the same lock around its `waitpid`
//! loop, so a child that exits at once can never be reaped before someone is listening for its
//! status (and the spawner's own `waitpid` on a failed exec cannot race with ours).

use std::collections::BTreeMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

type Registry = BTreeMap<u32, oneshot::Sender<WaitStatus>>;

/// Children spawned through [`spawn`] and not reaped yet.
static CHILDREN: Mutex<Registry> = Mutex::new(BTreeMap::new());

fn children() -> MutexGuard<'static, Registry> {
    // The map stays consistent even if a holder panicked; keep reaping.
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the reaper task. Must run inside the tokio runtime.
pub fn start() {
    if std::process::id() != 1 {
        // Outside a pid namespace (development, tests) orphans of our children would go to the
        // host's init; as a subreaper they come to us, like they would to PID 1.
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            tracing::warn!("cannot become a child subreaper: {e}");
        }
    }
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGCHLD, children will not be reaped: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            // Reap first: children may have exited before the handler was installed.
            reap_all();
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
}

/// Reaps every child that has exited (SIGCHLDs coalesce, so one signal may mean many).
fn reap_all() {
    let mut registry = children();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                match registry.remove(&(pid.as_raw() as u32)) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => tracing::debug!(pid = pid.as_raw(), "reaped orphan"),
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid failed: {e}");
                break;
            }
        }
    }
}

/// Spawns `cmd` and registers the child; the receiver gets its wait status once reaped.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<WaitStatus>)> {
    let mut registry = children();
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    registry.insert(child.id(), tx);
    Ok((child, rx))
}

/// As [`spawn`] for a child started by `start` (which returns its pid, having reaped it
/// itself if it failed to start).
pub fn spawn_with(
    start: impl FnOnce() -> io::Result<u32>,
) -> io::Result<(u32, oneshot::Receiver<WaitStatus>)> {
    let mut registry = children();
    let pid = start()?;
    let (tx, rx) = oneshot::channel();
    registry.insert(pid, tx);
    Ok((pid, rx))
}

/// Sends `sig` to the process group led by `pid` (to `pid` alone if it has no group of its
/// own). Returns false when `pid` is not a live child of ours: checked under the registry lock,
/// so a reaped pid that the kernel has handed to another process is never signalled.
pub fn signal_group(pid: u32, sig: Signal) -> bool {
    let registry = children();
    if !registry.contains_key(&pid) {
        return false;
    }
    let target = Pid::from_raw(pid as i32);
    match killpg(target, sig) {
        Ok(()) => true,
        Err(_) => kill(target, sig).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reaps_registered_child_and_reports_status() {
        start();
        let (_child, rx) = spawn(Command::new("/bin/sh").args(["-c", "exit 3"])).unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("reaped in time")
            .unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 3)));
    }
}
