//! Turning a `StartRequest` into a running child: environment, cwd, credentials, stdio or PTY.
//!
//! Children of `process.Process/Start` are started by [`super::vfork`] (no copy of the agent)
//! and registered with [`crate::reaper`]; their pipes or PTY master become async fds here.
//! Code kernels still use std's `Command` with [`prepare_as_user`] (not tokio's, whose SIGCHLD
//! handling would fight the PID-1 reaper).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use coppice_envd::process::{PtySize, StartRequest};
use coppice_envd::{Code, ConnectError};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Uid};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::vfork::{self, SpawnPlan};
use crate::users::{self, UserIdentity};

/// PATH for children when neither the agent nor the request has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PTY size when a request asks for a PTY without one.
const DEFAULT_PTY_SIZE: PtySize = PtySize { cols: 80, rows: 24 };

/// A freshly started child and the agent's ends of its stdio.
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<WaitStatus>,
    pub io: ChildIo,
}

pub enum ChildIo {
    Pipes {
        /// None when the request said `stdin: false` (the child got /dev/null).
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    /// The PTY master, non-blocking; the child has the slave as stdin, stdout and stderr.
    Pty(AsyncFd<OwnedFd>),
}

/// Environment of a child, lowest precedence first: the basics for the user, then the
/// sandbox-wide env, then the request's envs.
pub fn child_env(
    user: &UserIdentity,
    sandbox: &BTreeMap<String, String>,
    request: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let mut env = BTreeMap::from([
        ("PATH".to_string(), path),
        ("HOME".to_string(), user.home.display().to_string()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
        ("SHELL".to_string(), user.shell.display().to_string()),
    ]);
    env.extend(sandbox.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The working directory: the request's cwd resolved against the user's home, which must exist.
pub fn child_cwd(cwd: Option<&str>, user: &UserIdentity) -> Result<PathBuf, ConnectError> {
    let path = users::resolve_path(cwd.unwrap_or(""), user);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConnectError::invalid_argument(
            format!("cwd '{}' does not exist", path.display()),
        )),
        _ => Ok(path),
    }
}

/// Starts the requested command as `user`. Must be called inside the tokio runtime.
pub fn spawn(
    req: &StartRequest,
    user: &UserIdentity,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Result<Spawned, ConnectError> {
    let user_cmd = std::iter::once(req.process.cmd.as_str())
        .chain(req.process.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let start_error = |e: std::io::Error| start_error(&user_cmd, e);

    let mut plan = SpawnPlan::new(
        &req.process.cmd,
        req.process.args.iter().map(String::as_str),
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        cwd,
    )
    .map_err(start_error)?;

    // The child's ends stay open here until it has exec'd (it gets dups), then are dropped so
    // that EOF/hangup reach the agent once the child side closes.
    let pty = req.pty.map(|p| p.size.unwrap_or(DEFAULT_PTY_SIZE));
    let (child_ends, io) = match pty {
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(start_error)?;
            plan.stdio = [slave.as_raw_fd(); 3];
            plan.controlling_tty = true;
            (vec![slave], Io::Pty(master))
        }
        None => {
            let (stdin_child, stdin) = if req.stdin == Some(false) {
                let null = rustix::fs::open(
                    c"/dev/null",
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| start_error(e.into()))?;
                (null, None)
            } else {
                let (r, w) = cloexec_pipe().map_err(start_error)?;
                (r, Some(w))
            };
            let (stdout, stdout_child) = cloexec_pipe().map_err(start_error)?;
            let (stderr, stderr_child) = cloexec_pipe().map_err(start_error)?;
            plan.stdio = [
                stdin_child.as_raw_fd(),
                stdout_child.as_raw_fd(),
                stderr_child.as_raw_fd(),
            ];
            (
                vec![stdin_child, stdout_child, stderr_child],
                Io::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
            )
        }
    };

    // Resolved here, not in the child: the child may only make raw system calls.
    // A non-root agent (development) cannot switch users; its children run as itself.
    plan.credentials = Uid::effective().is_root().then(|| {
        let groups = users::groups(user)
            .into_iter()
            .map(|g| g as libc::gid_t)
            .collect();
        (user.uid, user.gid, groups)
    });

    let (pid, exit) = crate::reaper::spawn_with(|| vfork::spawn(&plan)).map_err(start_error)?;
    drop(child_ends);

    let io = match io {
        Io::Pty(master) => {
            rustix::io::ioctl_fionbio(&master, true).map_err(|e| internal(e.into()))?;
            // SAFETY: the OwnedFd is moved into the AsyncFd and stays open as long as it lives.
            let master = unsafe { AsyncFd::register(master) }.map_err(|e| internal(e.into()))?;
            ChildIo::Pty(master)
        }
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => ChildIo::Pipes {
            stdin: match stdin {
                Some(s) => Some(pipe::Sender::from_owned_fd(s).map_err(internal)?),
                None => None,
            },
            stdout: pipe::Receiver::from_owned_fd(stdout).map_err(internal)?,
            stderr: pipe::Receiver::from_owned_fd(stderr).map_err(internal)?,
        },
    };
    Ok(Spawned { pid, exit, io })
}

/// The agent's ends of a child's stdio before they are registered with tokio.
enum Io {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty(OwnedFd),
}

/// A close-on-exec pipe: (read end, write end).
fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Makes `cmd` start like every child of the agent (own session, OOM score reset, signals
/// unblocked) as `user`; for children spawned outside `process.Process/Start` (code kernels).
pub fn prepare_as_user(cmd: &mut Command, user: &UserIdentity) {
    let credentials = Uid::effective().is_root().then(|| Credentials {
        uid: Uid::from_raw(user.uid),
        gid: Gid::from_raw(user.gid),
        groups: users::groups(user).into_iter().map(Gid::from_raw).collect(),
    });
    // SAFETY: the closure only makes raw syscalls (no allocation, no locks) on data owned by it.
    unsafe {
        cmd.pre_exec(move || child_setup(credentials.as_ref(), false));
    }
}

fn internal(e: std::io::Error) -> ConnectError {
    ConnectError::internal(format!("setting up process I/O: {e}"))
}

/// envd's mapping of spawn failures: resource shortages are retryable, the rest is the request.
fn start_error(user_cmd: &str, e: std::io::Error) -> ConnectError {
    let code = match e.raw_os_error() {
        Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOSPC) => {
            Code::ResourceExhausted
        }
        _ => Code::InvalidArgument,
    };
    ConnectError::new(code, format!("error starting process '{user_cmd}': {e}"))
}

/// A PTY pair with the given size; both ends close-on-exec (the child gets dups of the slave).
fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, size)?;
    Ok((master, slave))
}

/// Sets the terminal size (the kernel sends SIGWINCH to the foreground group).
pub fn resize(master: &OwnedFd, size: PtySize) -> std::io::Result<()> {
    let winsize = rustix::termios::Winsize {
        ws_row: size.rows.min(u16::MAX as u32) as u16,
        ws_col: size.cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, winsize)?;
    Ok(())
}

/// Who the child becomes: the user, their primary group and their supplementary groups.
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Runs in the child between fork and exec (std has set up stdio and cwd already).
/// `oom_score_adj` of every process the agent starts. Above the agent's own (-998 where the
/// host grants CAP_SYS_RESOURCE, else 0): raising needs no privilege, so the agent stays the
/// OOM killer's last choice inside its sandbox even where it cannot lower its own, and a
/// sandbox's processes go before the host's own under host-wide memory pressure.
pub const CHILD_OOM_SCORE_ADJ: &[u8] = b"500";

fn child_setup(credentials: Option<&Credentials>, controlling_tty: bool) -> std::io::Result<()> {
    // Own session and process group: signals and timeouts reach the whole tree, and a PTY can
    // become the controlling terminal.
    rustix::process::setsid()?;
    if controlling_tty {
        // SAFETY: fd 0 is the PTY slave std just installed; it stays open through exec.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        rustix::process::ioctl_tiocsctty(stdin)?;
    }
    // The agent is protected from the OOM killer; its children must not be (done while
    // still root).
    if let Ok(fd) = rustix::fs::open(
        c"/proc/self/oom_score_adj",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::io::write(&fd, CHILD_OOM_SCORE_ADJ);
    }
    // Signals blocked in the agent must not stay blocked in the child.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // Credentials last: once uid is dropped, setgroups/setgid are no longer allowed.
    if let Some(c) = credentials {
        nix::unistd::setgroups(&c.groups)?;
        nix::unistd::setgid(c.gid)?;
        nix::unistd::setuid(c.uid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserIdentity {
        UserIdentity {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn env_layers_request_over_sandbox_over_basics() {
        let sandbox = BTreeMap::from([
            ("A".to_string(), "sandbox".to_string()),
            ("B".to_string(), "sandbox".to_string()),
        ]);
        let request = BTreeMap::from([
            ("B".to_string(), "request".to_string()),
            ("HOME".to_string(), "/elsewhere".to_string()),
        ]);
        let env = child_env(&user(), &sandbox, &request);
        assert_eq!(env["A"], "sandbox");
        assert_eq!(env["B"], "request");
        assert_eq!(env["HOME"], "/elsewhere");
        assert_eq!(env["USER"], "alice");
        assert_eq!(env["LOGNAME"], "alice");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert!(!env["PATH"].is_empty());
    }

    #[test]
    fn cwd_defaults_to_home_and_must_exist() {
        let mut u = user();
        u.home = "/tmp".into();
        assert_eq!(child_cwd(None, &u).unwrap(), PathBuf::from("/tmp"));
        let err = child_cwd(Some("/no/such/dir"), &u).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(err.message, "cwd '/no/such/dir' does not exist");
    }
}
