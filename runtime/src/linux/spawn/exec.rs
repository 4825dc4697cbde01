//! The executor: runs `steps(plan)` in order. It decides nothing; each step is one operation
//! (or one fixed sequence of calls, such as building the overlay through fsopen/fsconfig).
//! `Clone` forks the child, which waits at `WaitForRelease` and runs every step after
//! `ReleaseChild`; the helper runs the steps between the two, then releases it.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use super::plan::{SpawnPlan, SpawnResult};
use super::steps::{Mount, Step, When, steps};
use super::sys::{
    MOUNT_ATTR_IDMAP, MOUNT_ATTR_RDONLY, bind_agent_socket, cloexec_from, clone, cstrings, dup2,
    mount_setattr_idmap, open_path, pipe, with_fs_ids, write_file,
};

/// Step timer for `SpawnResult::steps_us`: one entry per phase.
struct Timer {
    last: std::time::Instant,
    out: Vec<(String, u64)>,
}

impl Timer {
    fn mark(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        self.out
            .push((phase.to_string(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

/// What earlier steps opened, for later ones (and, copied by the fork, for the child's).
#[derive(Default)]
pub(super) struct Held {
    pub(super) listener: Option<OwnedFd>,
    pub(super) agent: Option<OwnedFd>,
    pub(super) log: Option<std::fs::File>,
    userns: Option<OwnedFd>,
    pub(super) child: Option<Child>,
}

/// The helper's ends of the child's two pipes: go, and the child's error (EOF = exec'd).
pub(super) struct Child {
    pub(super) pid: i32,
    pub(super) go: std::fs::File,
    pub(super) error: std::fs::File,
}

/// Runs a plan; returns the host pid of the sandbox's init once the agent binary was exec'd.
pub fn execute(plan: &SpawnPlan) -> Result<SpawnResult, String> {
    if let Some(restore) = &plan.restore {
        return super::restore_exec::execute_restore(plan, restore);
    }
    let steps = steps(plan);
    let mut held = Held::default();
    let mut timer = Timer {
        last: std::time::Instant::now(),
        out: Vec::new(),
    };
    let outcome = run_helper(&steps, &mut held, &mut timer);
    match (outcome, held.child) {
        (Ok(()), Some(child)) => Ok(SpawnResult {
            pid: child.pid,
            steps_us: timer.out,
        }),
        (outcome, child) => {
            if let Some(child) = child {
                // SAFETY: plain kill/waitpid on our own child.
                unsafe {
                    libc::kill(child.pid, libc::SIGKILL);
                    libc::waitpid(child.pid, std::ptr::null_mut(), 0);
                }
            }
            let _ = std::fs::remove_file(&plan.agent_socket);
            Err(outcome
                .err()
                .unwrap_or_else(|| "the plan has no clone step".into()))
        }
    }
}

fn run_helper(steps: &[Step], held: &mut Held, timer: &mut Timer) -> Result<(), String> {
    let mut phase = steps.first().map_or("", Step::phase);
    for step in steps {
        if step.phase() != phase {
            timer.mark(phase);
            phase = step.phase();
        }
        match step {
            Step::Clone => {
                let (go_r, go_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                let flags = libc::CLONE_NEWUSER
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWUTS
                    | libc::CLONE_NEWIPC;
                let pid = clone(flags as u64)?;
                if pid == 0 {
                    drop(go_w);
                    drop(err_r);
                    let after = steps
                        .iter()
                        .position(|s| *s == Step::ReleaseChild)
                        .map_or(steps.len(), |r| r + 1);
                    let err = run_child(&steps[after..], held, go_r);
                    let _ = std::fs::File::from(err_w).write_all(err.as_bytes());
                    // SAFETY: terminating the child without running the parent's atexit
                    // handlers.
                    unsafe { libc::_exit(1) };
                }
                // The child's ends close here, so each side sees EOF if the other dies.
                drop(go_r);
                drop(err_w);
                held.child = Some(Child {
                    pid,
                    go: go_w.into(),
                    error: err_r.into(),
                });
            }
            Step::ReleaseChild => {
                let child = held.child.as_mut().ok_or("release before clone")?;
                // Tell the child to go on, then wait: EOF on the error pipe means exec worked.
                child
                    .go
                    .write_all(b"g")
                    .map_err(|e| format!("waking the sandbox init: {e}"))?;
                let mut msg = String::new();
                child
                    .error
                    .read_to_string(&mut msg)
                    .map_err(|e| format!("waiting for the sandbox init: {e}"))?;
                timer.mark(phase);
                return if msg.is_empty() { Ok(()) } else { Err(msg) };
            }
            step => run_step(step, held)?,
        }
    }
    Err("the plan has no release step".into())
}

/// The child's half; returns only on failure, with the reason.
fn run_child(steps: &[Step], held: &mut Held, go: OwnedFd) -> String {
    let mut go = Some(go);
    for step in steps {
        let done = match step {
            Step::WaitForRelease => wait_for_release(go.take()),
            step => run_step(step, held),
        };
        if let Err(e) = done {
            return e;
        }
    }
    "the plan ends without an exec".into()
}

fn wait_for_release(go: Option<OwnedFd>) -> Result<(), String> {
    let mut byte = [0u8; 1];
    let n = std::fs::File::from(go.ok_or("waited for release twice")?)
        .read(&mut byte)
        .map_err(|e| format!("waiting for go: {e}"))?;
    if n == 0 {
        return Err("the helper gave up before the sandbox was ready".into());
    }
    Ok(())
}

/// One step (`Clone`, `ReleaseChild` and `WaitForRelease` are the loops' own).
pub(super) fn run_step(step: &Step, held: &mut Held) -> Result<(), String> {
    use nix::sched::{CloneFlags, setns, unshare};
    match step {
        Step::PrivateMountNamespace => {
            unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("unshare mount namespace: {e}"))?;
            let private = nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE;
            nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>)
                .map_err(|e| format!("making / private: {e}"))
        }
        Step::JoinNetns(netns) => {
            let fd =
                std::fs::File::open(netns).map_err(|e| format!("opening netns {netns:?}: {e}"))?;
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("joining netns: {e}"))
        }
        Step::BindAgentSocket(path) => {
            held.listener = Some(bind_agent_socket(path)?);
            Ok(())
        }
        Step::OpenAgent(path) => {
            held.agent = Some(open_path(path, libc::O_RDONLY)?);
            Ok(())
        }
        Step::OpenLog(path) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("opening {path:?}: {e}"))?;
            held.log = Some(log);
            Ok(())
        }
        Step::OomScoreAdj(score) => {
            // Best effort: lowering it needs CAP_SYS_RESOURCE, which some hosts (containers,
            // some VMs) withhold from root; the children's 500 keeps the order there.
            let _ = write_file("/proc/self/oom_score_adj", &score.to_string());
            Ok(())
        }
        Step::WriteIdMap { file, map } => {
            let pid = held.child.as_ref().ok_or("id map before clone")?.pid;
            write_file(format!("/proc/{pid}/{file}"), map)
        }
        Step::JoinCgroup(procs) => {
            let pid = held.child.as_ref().ok_or("cgroup before clone")?.pid;
            write_file(procs, &pid.to_string())
        }
        Step::AttachIdmapped { src, at, readonly } => attach_idmapped(held, src, at, *readonly),
        Step::Overlay {
            lowers,
            upper,
            work,
            mounter,
            target,
        } => overlay(lowers, upper, work, *mounter, target),
        Step::Mkdir { path, parents } => match parents {
            true => std::fs::create_dir_all(path),
            false => std::fs::create_dir(path),
        }
        .map_err(|e| format!("creating {path:?}: {e}")),
        Step::Mount(m) => mount(m),
        Step::Mknod { path, major, minor } => mknod(path, *major, *minor),
        Step::Symlink { target, link } => {
            std::os::unix::fs::symlink(target, link).map_err(|e| format!("symlink {link:?}: {e}"))
        }
        Step::Chmod { path, mode } => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| format!("chmod {path:?}: {e}"))
        }
        Step::Chown { path, id } => std::os::unix::fs::lchown(path, Some(*id), Some(*id))
            .map_err(|e| format!("chown {path:?}: {e}")),
        Step::UnshareMountCgroup => unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare mount+cgroup namespaces: {e}")),
        Step::SetHostname(name) => {
            nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))
        }
        Step::PivotRoot(root) => pivot_root(root),
        Step::BecomeRoot => become_root(),
        Step::NewSession => nix::unistd::setsid()
            .map(drop)
            .map_err(|e| format!("setsid: {e}")),
        Step::Stdio => stdio(held),
        Step::LimitFiles(n) => {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, *n, *n)
                .map_err(|e| format!("RLIMIT_NOFILE {n}: {e}"))
        }
        Step::DropBoundingCap(cap) => {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                return Err(format!(
                    "dropping capability {cap} from the bounding set: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        }
        Step::NoNewPrivs => {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))
        }
        Step::Seccomp { keep_privs } => {
            let filter = crate::linux::seccomp::default_profile().map_err(|e| e.to_string())?;
            let installed = match keep_privs {
                false => seccompiler::apply_filter(&filter).map_err(|e| e.to_string()),
                true => {
                    crate::linux::seccomp::install_keeping_privs(&filter).map_err(|e| e.to_string())
                }
            };
            installed.map_err(|e| format!("installing seccomp: {e}"))
        }
        Step::Exec { argv, envp } => exec(held, argv, envp),
        Step::Clone
        | Step::ReleaseChild
        | Step::WaitForRelease
        | Step::OwnLog(_)
        | Step::UsernsForIdmap
        | Step::CopyTree { .. }
        | Step::ShiftOwners { .. }
        | Step::JoinCgroupSelf(_)
        | Step::KeepKdat { .. }
        | Step::Criu
        | Step::SetRestoredHostname(_) => Err(format!("{step:?} out of place")),
    }
}

fn mount(m: &Mount) -> Result<(), String> {
    let present = match m.when {
        When::Always => true,
        When::IfExists => m.target.exists(),
        When::IfDir => m.target.is_dir(),
    };
    if !present {
        return Ok(());
    }
    nix::mount::mount(
        m.source.as_deref(),
        &m.target,
        m.fstype,
        m.flags,
        m.data.as_deref(),
    )
    .map_err(|e| format!("mounting {:?} on {:?}: {e}", m.source, m.target))
}

fn mknod(path: &Path, major: u64, minor: u64) -> Result<(), String> {
    use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, makedev};
    let mode = Mode::from_bits_truncate(0o666);
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, mode, makedev(major, minor))
        .map_err(|e| format!("mknod {path:?}: {e}"))?;
    // mknod honours the umask; the nodes must be world-usable.
    fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        mode,
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| format!("chmod {path:?}: {e}"))
}

/// An idmapped clone of `src` attached at `at` (overlay only takes attached mounts as layers).
fn attach_idmapped(held: &mut Held, src: &Path, at: &Path, readonly: bool) -> Result<(), String> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
    if held.userns.is_none() {
        let pid = held.child.as_ref().ok_or("idmap before clone")?.pid;
        held.userns = Some(open_path(
            Path::new(&format!("/proc/{pid}/ns/user")),
            libc::O_RDONLY,
        )?);
    }
    let userns = held.userns.as_ref().map(|fd| fd.as_raw_fd()).unwrap_or(-1);
    let fd = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("open_tree {src:?}: {e}"))?;
    let mut attr = MOUNT_ATTR_IDMAP;
    if readonly {
        attr |= MOUNT_ATTR_RDONLY;
    }
    mount_setattr_idmap(fd.as_raw_fd(), attr, userns)
        .map_err(|e| format!("idmapping {src:?}: {e}"))?;
    std::fs::create_dir(at).map_err(|e| format!("creating {at:?}: {e}"))?;
    move_mount(
        fd.as_fd(),
        "",
        rustix::fs::CWD,
        at,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attaching {at:?}: {e}"))
}

fn overlay(
    lowers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    mounter: u32,
    target: &Path,
) -> Result<(), String> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let ovl = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| format!("fsopen overlay: {e}"))?;
    for layer in lowers {
        fsconfig_set_string(ovl.as_fd(), "lowerdir+", layer)
            .map_err(|e| format!("overlay layer {layer:?}: {e}"))?;
    }
    fsconfig_set_string(ovl.as_fd(), "upperdir", upper)
        .map_err(|e| format!("overlay upperdir: {e}"))?;
    fsconfig_set_string(ovl.as_fd(), "workdir", work)
        .map_err(|e| format!("overlay workdir: {e}"))?;
    // No syncs to the upper: a sandbox's writable layer does not outlive a host crash (its
    // processes are gone then and recovery removes it), and snapshots take btrfs snapshots,
    // which flush the upper's data themselves. Without it every sandbox teardown (overlay
    // shutdown syncs its upper) committed a btrfs transaction, serialising kills and starts.
    fsconfig_set_flag(ovl.as_fd(), "volatile").map_err(|e| format!("overlay volatile: {e}"))?;
    // Overlay does all its internal work (work dir, copy-up) with the mounter's credentials,
    // which must be inside the idmapping: create it as the sandbox's root id, caps kept.
    with_fs_ids(mounter, || fsconfig_create(ovl.as_fd()))
        .map_err(|e| format!("creating overlay: {e}"))?;
    let mnt = fsmount(
        ovl.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| format!("fsmount overlay: {e}"))?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attaching root at {target:?}: {e}"))
}

fn pivot_root(root: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, umount2};
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours.
    nix::unistd::chdir(root).map_err(|e| format!("chdir root: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Root of the user namespace (host: the mapped base id), with no extra groups.
fn become_root() -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(g, g, g).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(u, u, u).map_err(|e| format!("setresuid: {e}"))
}

/// stdio: nothing in, nothing out, stderr to the sandbox log; the socket at fd 3.
fn stdio(held: &Held) -> Result<(), String> {
    let log = held.log.as_ref().ok_or("no log opened")?.as_raw_fd();
    let listener = held.listener.as_ref().ok_or("no socket bound")?.as_raw_fd();
    let devnull = open_path(Path::new("/dev/null"), libc::O_RDWR)?.into_raw_fd();
    dup2(devnull, 0)?;
    dup2(devnull, 1)?;
    dup2(log, 2)?;
    dup2(listener, 3)?;
    // Nothing above fd 3 may reach the agent; the agent binary's and the error pipe's fds
    // are still needed until exec, so mark everything close-on-exec instead of closing.
    cloexec_from(4);
    Ok(())
}

fn exec(held: &Held, argv: &[String], envp: &[String]) -> Result<(), String> {
    let agent = held.agent.as_ref().ok_or("no agent opened")?.as_raw_fd();
    let argv = cstrings(argv.iter().cloned())?;
    let envp = cstrings(envp.iter().cloned())?;
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: argv/envp are NUL-terminated arrays of valid C strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            agent,
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(format!(
        "exec of the agent failed: {}",
        std::io::Error::last_os_error()
    ))
}
