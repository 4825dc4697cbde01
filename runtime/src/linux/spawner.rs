//! The spawn server: one long-lived, single-threaded `coppice-spawn --serve` per daemon that
//! forks a fresh helper for every sandbox start (see `spawn::execute`).
//!
//! Why a server rather than one `coppice-spawn` exec per sandbox: on this kind of host (a VM
//! where each `cpuid` is a VM exit) a process start — exec, the dynamic loader's relocations,
//! glibc's CPU feature probing, and the exit that tears the image down again — cost about a
//! millisecond of CPU, a quarter of the helper's work per sandbox. A fork of a small idle
//! process costs a fraction of that, and the fork is still a fresh single-threaded process
//! with its own mount namespace to spend, which is all `execute` needs.
//!
//! Protocol. The daemon holds one end of a `SOCK_SEQPACKET` socketpair; the server has the
//! other as its stdin. Per start the daemon makes a stream socketpair and passes one end over
//! the control socket (`SCM_RIGHTS`); the server forks, and the child reads the JSON
//! `SpawnPlan` from that stream until EOF and answers with one JSON line (a `SpawnResult` or
//! `{"error": ...}`) before exiting. Only the daemon holds the control socket, so nobody else
//! can ask the root server for anything. When the daemon dies the control socket reads EOF and
//! the server exits; sandboxes do not depend on it (their inits are reparented to the host's
//! init when their helper exits).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::spawn::{SpawnPlan, SpawnResult, execute};
use crate::error::{Error, IoContext, Result};

/// The daemon's handle on its spawn server; restarts the server if it died.
pub struct Spawner {
    binary: PathBuf,
    server: std::sync::Mutex<Option<Server>>,
}

struct Server {
    child: std::process::Child,
    control: OwnedFd,
}

impl Server {
    fn start(binary: &Path) -> Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Internal(format!("making the spawn server's socket: {e}")))?;
        let child = std::process::Command::new(binary)
            .arg("--serve")
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .ctx(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            control: ours,
        })
    }

    fn stop(mut self) {
        drop(self.control); // EOF: the server exits on its own
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawner {
    /// Starts the server now, so that a missing or broken helper fails the daemon's start.
    pub fn new(binary: PathBuf) -> Result<Self> {
        let server = Server::start(&binary)?;
        Ok(Self {
            binary,
            server: std::sync::Mutex::new(Some(server)),
        })
    }

    /// Starts the sandbox described by `plan`; returns once its agent was exec'd.
    pub async fn spawn(&self, plan: &SpawnPlan) -> Result<SpawnResult> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().ctx(|| "making a spawn request socket")?;
        self.hand_over(theirs.as_fd())?;
        drop(theirs);
        ours.set_nonblocking(true)
            .ctx(|| "making a spawn request socket")?;
        let mut stream =
            tokio::net::UnixStream::from_std(ours).ctx(|| "making a spawn request socket")?;
        let input = serde_json::to_vec(plan).map_err(Error::internal)?;
        stream
            .write_all(&input)
            .await
            .ctx(|| "sending the spawn plan")?;
        stream.shutdown().await.ctx(|| "sending the spawn plan")?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .ctx(|| "reading coppice-spawn's answer")?;
        parse_answer(&answer)
    }

    /// Passes one end of a request socket to the server, restarting the server once if it is
    /// gone (killed, crashed).
    fn hand_over(&self, request: BorrowedFd<'_>) -> Result<()> {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_error = String::new();
        for _ in 0..2 {
            if server.is_none() {
                *server = Some(Server::start(&self.binary)?);
            }
            let control = server.as_ref().expect("started above").control.as_raw_fd();
            match send_fd(control, request.as_raw_fd()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!("the spawn server is gone ({e}); starting a new one");
                    last_error = e.to_string();
                    if let Some(dead) = server.take() {
                        dead.stop();
                    }
                }
            }
        }
        Err(Error::Internal(format!(
            "the spawn server does not take requests: {last_error}"
        )))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let server = self.server.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = server.take() {
            server.stop();
        }
    }
}

/// One answer line: the result, or the helper's reason for failing.
fn parse_answer(answer: &str) -> Result<SpawnResult> {
    let line = answer.trim();
    if let Ok(result) = serde_json::from_str::<SpawnResult>(line) {
        return Ok(result);
    }
    let reason = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| match line {
            "" => "coppice-spawn exited without answering".to_string(),
            other => format!("coppice-spawn answered {other:?}"),
        });
    Err(Error::Internal(format!("starting the sandbox: {reason}")))
}

fn send_fd(control: RawFd, fd: RawFd) -> nix::Result<()> {
    let fds = [fd];
    sendmsg::<()>(
        control,
        &[IoSlice::new(b"s")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// Next request socket from the control socket; None once the daemon closed it.
fn recv_fd(control: RawFd) -> nix::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        control,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table; nothing else owns it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Err(nix::errno::Errno::EBADMSG)
}

/// The server's loop (`coppice-spawn --serve`, control socket on stdin): one forked helper per
/// request. Returns when the daemon closes the control socket.
pub fn serve(control: OwnedFd) -> std::result::Result<(), String> {
    // Finished helpers are reaped by the kernel: no zombies between requests.
    // SAFETY: setting a signal disposition in a single-threaded process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let request = match recv_fd(control.as_raw_fd()) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("reading the control socket: {e}")),
        };
        // SAFETY: this process is single-threaded, so the child may do anything.
        match unsafe { libc::fork() } {
            0 => {
                // The helper waits for its own children, and the agent (PID 1 of the sandbox)
                // must reap: neither may inherit the ignored SIGCHLD.
                // SAFETY: as above, in the single-threaded child.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                // stdin becomes /dev/null rather than a free fd number: `execute` moves fds to
                // the numbers the agent expects and must not find one of its own at 0.
                if let Ok(null) = std::fs::File::open("/dev/null") {
                    // SAFETY: replaces fd 0 (the control socket, unused in the helper).
                    unsafe { libc::dup2(null.as_raw_fd(), 0) };
                }
                std::mem::forget(control); // fd 0, replaced above
                let code = answer(request);
                // SAFETY: ending the forked helper without running the server's exit handlers.
                unsafe { libc::_exit(code) }
            }
            -1 => {
                let e = std::io::Error::last_os_error();
                let _ = write_answer(
                    &std::fs::File::from(request),
                    &serde_json::json!({ "error": format!("fork of the spawn helper: {e}") })
                        .to_string(),
                );
            }
            _ => drop(request),
        }
    }
}

/// The forked helper: reads the plan, runs it, answers. Returns the exit code.
fn answer(request: OwnedFd) -> i32 {
    use std::io::Read;
    let request = std::fs::File::from(request);
    let mut input = String::new();
    let reply = match (&request).read_to_string(&mut input) {
        Err(e) => Err(format!("reading the plan: {e}")),
        Ok(_) => serde_json::from_str::<SpawnPlan>(&input)
            .map_err(|e| format!("malformed plan: {e}"))
            .and_then(|plan| execute(&plan)),
    };
    let (line, code) = match reply {
        Ok(result) => (
            serde_json::to_string(&result).expect("result serializes"),
            0,
        ),
        Err(e) => (serde_json::json!({ "error": e }).to_string(), 1),
    };
    let _ = write_answer(&request, &line);
    code
}

fn write_answer(request: &std::fs::File, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = request;
    out.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_results_or_reasons() {
        let ok = parse_answer("{\"pid\":42,\"steps_us\":[[\"clone\",7]]}\n").unwrap();
        assert_eq!(ok.pid, 42);
        let err = parse_answer("{\"error\":\"mounting /proc: EPERM\"}").unwrap_err();
        assert!(err.to_string().contains("mounting /proc: EPERM"), "{err}");
        let silent = parse_answer("").unwrap_err();
        assert!(silent.to_string().contains("without answering"), "{silent}");
    }

    #[test]
    fn request_fds_cross_the_control_socket() {
        let (daemon, server) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(daemon.as_raw_fd(), theirs.as_raw_fd()).unwrap();
        drop(theirs);
        let received = recv_fd(server.as_raw_fd()).unwrap().expect("a request");
        write_answer(&std::fs::File::from(received), "hello").unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut &ours, &mut got).unwrap();
        assert_eq!(got, "hello\n");
        drop(daemon);
        assert!(
            recv_fd(server.as_raw_fd()).unwrap().is_none(),
            "EOF once the daemon is gone"
        );
    }
}
