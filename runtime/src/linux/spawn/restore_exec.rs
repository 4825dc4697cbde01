//! Runs `restore_steps`: the helper's steps as for a start (through `exec::run_step`), and
//! the few that only a restore has: the throwaway user namespace for the idmapped mounts, the
//! tmpfs copies, the helper's own cgroups, CRIU itself and the restored hostname.

use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use super::exec::{Child, Held, run_step};
use super::plan::{
    INHERIT_AGENT_FD, INHERIT_FIRST_DEAD_FD, INHERIT_LISTENER_FD, INHERIT_LOG_FD, RestorePlan,
    SpawnPlan, SpawnResult,
};
use super::restore::restore_steps;
use super::steps::Step;
use super::sys::{clone, cstrings, dup2, pipe, write_file};

/// Resumes `plan` from `restore`; returns the restored init's host pid.
pub fn execute_restore(plan: &SpawnPlan, restore: &RestorePlan) -> Result<SpawnResult, String> {
    let t0 = std::time::Instant::now();
    let mut held = Held::default();
    let mut pid = None;
    let mut outcome = Ok(());
    for step in restore_steps(plan, restore) {
        let done = match &step {
            Step::UsernsForIdmap => userns_child(&mut held),
            Step::OwnLog(id) => {
                let log = held.log.as_ref().ok_or("no log opened")?;
                std::os::unix::fs::fchown(log, Some(*id), Some(*id))
                    .map_err(|e| format!("chown of the agent log: {e}"))
            }
            Step::CopyTree { from, to } => copy_tree(from, to),
            Step::ShiftOwners { path, shift } => shift_owners(path, shift),
            Step::JoinCgroupSelf(procs) => write_file(procs, &std::process::id().to_string()),
            Step::KeepKdat { from, to } => {
                keep_kdat(from, to);
                Ok(())
            }
            Step::Criu => {
                end_child(&mut held);
                run_criu(restore, &held).map(|p| pid = Some(p))
            }
            Step::SetRestoredHostname(name) => match pid {
                Some(p) => set_hostname_of(p, name),
                None => Err("hostname before the restore".into()),
            },
            step => run_step(step, &mut held),
        };
        if let Err(e) = done {
            outcome = Err(e);
            break;
        }
    }
    end_child(&mut held);
    if let Err(e) = outcome {
        if let Some(p) = pid {
            // SAFETY: plain kill of the restored init (it has no other owner yet).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(&plan.agent_socket);
        return Err(e);
    }
    Ok(SpawnResult {
        pid: pid.ok_or("the restore plan has no criu step")?,
        steps_us: vec![("restore".into(), t0.elapsed().as_micros() as u64)],
    })
}

/// A child in a new user namespace that waits until its go pipe closes (`end_child`).
fn userns_child(held: &mut Held) -> Result<(), String> {
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pid = clone(libc::CLONE_NEWUSER as u64)?;
    if pid == 0 {
        drop(go_w);
        let mut byte = [0u8; 1];
        let _ = std::fs::File::from(go_r).read(&mut byte);
        // SAFETY: ending the child without the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(go_r);
    drop(err_w);
    held.child = Some(Child {
        pid,
        go: go_w.into(),
        error: err_r.into(),
    });
    Ok(())
}

fn end_child(held: &mut Held) {
    if let Some(child) = held.child.take() {
        drop(child.go);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child.pid, std::ptr::null_mut(), 0) };
    }
}

/// Best effort: a missing cache only costs the next run its probe.
fn keep_kdat(from: &Path, to: &Path) {
    if to.exists() || !from.exists() {
        return;
    }
    let aside = to.with_extension(format!("{}", std::process::id()));
    if std::fs::copy(from, &aside).is_ok() && std::fs::rename(&aside, to).is_err() {
        let _ = std::fs::remove_file(&aside);
    }
}

/// `cp -a` of `from` onto `to` (its content merged into an existing directory); a missing
/// `from` copies nothing.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    if !from.exists() {
        return Ok(());
    }
    let out = std::process::Command::new("cp")
        .args(["-a", "--preserve=xattr", "--no-target-directory"])
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "restoring {}: {}",
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Gives every file under `path` (not following symlinks) owned by an id of the old range
/// the same id of the new one.
fn shift_owners(path: &Path, shift: &super::plan::IdShift) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let (uid, gid) = (shift.map(meta.uid()), shift.map(meta.gid()));
    if (uid, gid) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        // chown drops setuid/setgid bits: put the mode back.
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
    }
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            shift_owners(&entry.path(), shift)?;
        }
    }
    Ok(())
}

/// Runs CRIU with the listener, the log, the agent binary and the dead connections at the
/// descriptors its `--inherit-fd` options name; returns the restored init's pid.
fn run_criu(restore: &RestorePlan, held: &Held) -> Result<i32, String> {
    let listener = held.listener.as_ref().ok_or("no socket bound")?.as_raw_fd();
    let log = held.log.as_ref().ok_or("no log opened")?.as_raw_fd();
    let agent = held.agent.as_ref().ok_or("no agent opened")?.as_raw_fd();
    // Each dead connection: one end for CRIU, the other closed when this function returns.
    let mut dead: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    for _ in 0..restore.dead_connections {
        dead.push(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC
                    | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            )
            .map_err(|e| format!("socketpair: {e}"))?,
        );
    }
    let argv = cstrings(
        std::iter::once(restore.criu.display().to_string()).chain(restore.args.iter().cloned()),
    )?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let devnull = super::sys::open_path(Path::new("/dev/null"), libc::O_RDWR)?;
    // Placed in the child, so the helper's own descriptors stay where they are.
    let mut places = vec![
        (listener, INHERIT_LISTENER_FD),
        (log, INHERIT_LOG_FD),
        (agent, INHERIT_AGENT_FD),
    ];
    for (i, (ours, _)) in dead.iter().enumerate() {
        places.push((ours.as_raw_fd(), INHERIT_FIRST_DEAD_FD + i as i32));
    }
    // SAFETY: the helper is single-threaded; the child only dup2s and execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // Sources may sit on targets: copy each first to a free descriptor above every target
        // (F_DUPFD never replaces an open one), then down to its place.
        let above = INHERIT_FIRST_DEAD_FD + places.len() as i32;
        let mut high = Vec::new();
        for (from, to) in &places {
            // SAFETY: fcntl on a descriptor this process owns.
            let tmp = unsafe { libc::fcntl(*from, libc::F_DUPFD, above) };
            high.push((tmp, *to));
        }
        for (tmp, to) in high {
            let _ = dup2(tmp, to);
        }
        let null = devnull.into_raw_fd();
        let _ = dup2(null, 0);
        let _ = dup2(null, 1);
        let _ = dup2(null, 2);
        // SAFETY: argv is a NUL-terminated array of C strings that outlive the call.
        unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
        // SAFETY: exec failed; leave without the parent's handlers.
        unsafe { libc::_exit(127) };
    }
    drop(
        dead.into_iter()
            .map(|(_, theirs)| theirs)
            .collect::<Vec<_>>(),
    );
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        return Err(format!(
            "CRIU could not restore: {}",
            criu_errors(&restore.log)
        ));
    }
    let text = std::fs::read_to_string(&restore.pidfile)
        .map_err(|e| format!("reading CRIU's pid file: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("CRIU's pid file holds {text:?}"))
}

/// The error lines of a CRIU log (its own reasons), or a pointer to the log.
pub fn criu_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .map(|l| l.split_once("): ").map_or(l, |(_, m)| m).trim())
        .take(4)
        .collect();
    if errors.is_empty() {
        format!("see {}", log.display())
    } else {
        errors.join("; ")
    }
}

fn set_hostname_of(pid: i32, name: &str) -> Result<(), String> {
    let uts = std::fs::File::open(format!("/proc/{pid}/ns/uts"))
        .map_err(|e| format!("opening the restored uts namespace: {e}"))?;
    nix::sched::setns(&uts, nix::sched::CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("joining the restored uts namespace: {e}"))?;
    nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))
}
