//! Starting a sandbox: the plan (pure data, built by the daemon) and its executor, which runs
//! in the single-threaded `coppice-spawn` helper, never in the tokio daemon (a fork of a
//! multi-threaded process may only call async-signal-safe functions; the helper can do real
//! work in its child).
//!
//! Sequence (helper = host root in a private mount namespace):
//! 1. helper joins the sandbox's netns (owned by the initial user namespace, so root inside
//!    cannot reconfigure its own interfaces), binds the agent's listening socket on the host;
//! 2. clone(NEWUSER|NEWPID|NEWUTS|NEWIPC): the child will be the sandbox's PID 1;
//! 3. helper writes the child's uid/gid maps, puts it into its cgroups, and mounts the root:
//!    an overlay whose layers AND upper are idmapped mounts (the userns's mapping), so files
//!    are stored on disk with natural ownership (0 = root inside) and any layer can be stacked
//!    under any sandbox's uid range;
//! 4. child unshares mount and cgroup namespaces (copying the prepared tree), mounts /proc and
//!    /dev/pts, masks OCI paths, pivots, drops to uid 0 of its userns, sets no_new_privs and
//!    seccomp, and execs the agent with the socket at fd 3.
//!
//! The helper's mount namespace dies with it, so a crash leaves no host mounts behind.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the helper needs, as data. Built by the daemon; golden-testable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnPlan {
    pub id: String,
    pub hostname: String,
    /// Host uid/gid that uid/gid 0 inside maps to.
    pub id_base: u32,
    pub id_count: u32,
    /// Read-only layers, top first.
    pub layers: Vec<PathBuf>,
    /// Directory holding `upper/` and `work/` (one mount, as overlay requires).
    pub fs_dir: PathBuf,
    /// Empty host directory used as the mount point of the root inside the helper's namespace.
    pub root_dir: PathBuf,
    /// Empty host directory for scratch mounts inside the helper's namespace.
    pub stage_dir: PathBuf,
    /// The sandbox's network namespace (e.g. `/proc/<daemon>/fd/<n>`); None = a fresh empty one.
    pub netns: Option<PathBuf>,
    /// `cgroup.procs` files the sandbox's init is written to.
    pub cgroup_procs: Vec<PathBuf>,
    pub agent_binary: PathBuf,
    pub agent_args: Vec<String>,
    /// Host path of the agent's unix socket (the only way in).
    pub agent_socket: PathBuf,
    /// The agent's stderr.
    pub log_file: PathBuf,
    /// Environment of the agent (and so of every process it starts).
    pub env: Vec<(String, String)>,
    /// Size of the one tmpfs that holds /tmp and /dev/shm, in bytes or with a suffix ("256m").
    pub tmpfs_size: String,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// RLIMIT_NOFILE (soft and hard) of every process in the sandbox.
    pub nofile: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnResult {
    /// Host pid of the sandbox's init (the agent).
    pub pid: i32,
    /// How long each step took, in microseconds (for the daemon's debug log and the rigs).
    #[serde(default)]
    pub steps_us: Vec<(String, u64)>,
}

/// Step timer for `SpawnResult::steps_us`.
struct Steps {
    last: std::time::Instant,
    out: Vec<(String, u64)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            out: Vec::new(),
        }
    }

    fn mark(&mut self, step: &str) {
        let now = std::time::Instant::now();
        self.out
            .push((step.to_string(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

/// linux/capability.h; not in libc 0.2.
const CAP_SYS_PTRACE: libc::c_ulong = 19;

/// Files masked with an empty read-only file, as OCI runtimes do.
pub const MASKED_FILES: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
];
/// What a sandbox's /sys/devices shows of the host's (the rest, its hardware, is hidden).
pub const SYS_DEVICES_KEPT: &[&str] = &["system", "virtual"];

/// Directories masked with an empty read-only tmpfs.
pub const MASKED_DIRS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
    "sys/kernel/security",
    "sys/kernel/debug",
];
/// Paths made read-only.
pub const READONLY_PATHS: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Device nodes of the minimal /dev: (name, major, minor).
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Runs a plan; returns the host pid of the sandbox's init once the agent binary was exec'd.
pub fn execute(plan: &SpawnPlan) -> Result<SpawnResult, String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, setns, unshare};

    let mut steps = Steps::new();
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    if let Some(netns) = &plan.netns {
        let fd = std::fs::File::open(netns).map_err(|e| format!("opening netns {netns:?}: {e}"))?;
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("joining netns: {e}"))?;
    }

    let listener = bind_agent_socket(&plan.agent_socket)?;
    let agent = open_path(&plan.agent_binary, libc::O_RDONLY)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log_file)
        .map_err(|e| format!("opening {:?}: {e}", plan.log_file))?;
    let argv =
        cstrings(std::iter::once("coppice-agent".to_string()).chain(plan.agent_args.clone()))?;
    let envp = cstrings(
        plan.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(std::iter::once("COPPICE_AGENT_FD=3".to_string())),
    )?;
    let seccomp = match plan.seccomp {
        true => Some(super::seccomp::default_profile().map_err(|e| e.to_string())?),
        false => None,
    };

    // Inherited by the child: the agent is the last thing the OOM killer should pick (its
    // children get 500). Best effort: lowering it needs CAP_SYS_RESOURCE, which some hosts
    // (containers, some VMs) withhold from root; the children's 500 keeps the order there.
    let _ = write_file("/proc/self/oom_score_adj", "-998");

    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let pid = clone(flags as u64)?;
    if pid == 0 {
        drop(go_w);
        drop(err_r);
        let child = ChildSetup {
            plan,
            go: go_r,
            listener: listener.as_raw_fd(),
            agent: agent.as_raw_fd(),
            log: log.as_raw_fd(),
            argv: &argv,
            envp: &envp,
            seccomp: seccomp.as_deref(),
        };
        let err = child.run();
        let mut w = std::fs::File::from(err_w);
        let _ = w.write_all(err.as_bytes());
        // SAFETY: terminating the child without running the parent's atexit handlers.
        unsafe { libc::_exit(1) };
    }
    drop(go_r);
    drop(err_w);

    steps.mark("setup+clone");
    let outcome = prepare_child(plan, pid, &mut steps).and_then(|()| {
        // Tell the child to go on, then wait: EOF on the error pipe means exec succeeded.
        std::fs::File::from(go_w)
            .write_all(b"g")
            .map_err(|e| format!("waking the sandbox init: {e}"))?;
        let mut msg = String::new();
        std::fs::File::from(err_r)
            .read_to_string(&mut msg)
            .map_err(|e| format!("waiting for the sandbox init: {e}"))?;
        steps.mark("child-to-exec");
        if msg.is_empty() { Ok(()) } else { Err(msg) }
    });
    if let Err(e) = outcome {
        // SAFETY: plain kill/waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_file(&plan.agent_socket);
        return Err(e);
    }
    Ok(SpawnResult {
        pid,
        steps_us: steps.out,
    })
}

/// Host-side steps between clone and the child's go: ids, cgroups, oom score, the root.
fn prepare_child(plan: &SpawnPlan, pid: i32, steps: &mut Steps) -> Result<(), String> {
    let map = format!("0 {} {}\n", plan.id_base, plan.id_count);
    write_file(format!("/proc/{pid}/uid_map"), &map)?;
    write_file(format!("/proc/{pid}/gid_map"), &map)?;
    steps.mark("idmap");
    for procs in &plan.cgroup_procs {
        write_file(procs, &pid.to_string())?;
    }
    steps.mark("cgroups");
    let userns = open_path(Path::new(&format!("/proc/{pid}/ns/user")), libc::O_RDONLY)?;
    mount_root(plan, userns.as_fd())?;
    steps.mark("root");
    Ok(())
}

/// Mounts the overlay root with idmapped layers, then /dev, /tmp, /dev/shm and /sys in it.
fn mount_root(plan: &SpawnPlan, userns: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
        fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
    };

    let idmapped = |path: &Path, readonly: bool| -> Result<OwnedFd, String> {
        let fd = open_tree(
            rustix::fs::CWD,
            path,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| format!("open_tree {path:?}: {e}"))?;
        let mut attr = MOUNT_ATTR_IDMAP;
        if readonly {
            attr |= MOUNT_ATTR_RDONLY;
        }
        mount_setattr_idmap(fd.as_raw_fd(), attr, userns.as_raw_fd())
            .map_err(|e| format!("idmapping {path:?}: {e}"))?;
        Ok(fd)
    };

    // Layers must be attached mounts for overlay to clone them, so the idmapped trees are
    // attached under a scratch tmpfs (in the helper's private namespace) and detached again
    // once the overlay holds its own references.
    let stage = &plan.stage_dir;
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=4k,mode=700"),
    )
    .map_err(|e| format!("mounting scratch tmpfs on {stage:?}: {e}"))?;
    let attach = |fd: OwnedFd, name: &str| -> Result<PathBuf, String> {
        let target = stage.join(name);
        std::fs::create_dir(&target).map_err(|e| format!("creating {target:?}: {e}"))?;
        move_mount(
            fd.as_fd(),
            "",
            rustix::fs::CWD,
            &target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| format!("attaching {target:?}: {e}"))?;
        Ok(target)
    };
    let ovl = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| format!("fsopen overlay: {e}"))?;
    for (i, layer) in plan.layers.iter().enumerate() {
        let path = attach(idmapped(layer, true)?, &format!("l{i}"))?;
        fsconfig_set_string(ovl.as_fd(), "lowerdir+", &path)
            .map_err(|e| format!("overlay layer {layer:?}: {e}"))?;
    }
    let fs = attach(idmapped(&plan.fs_dir, false)?, "fs")?;
    fsconfig_set_string(ovl.as_fd(), "upperdir", fs.join("upper"))
        .map_err(|e| format!("overlay upperdir: {e}"))?;
    fsconfig_set_string(ovl.as_fd(), "workdir", fs.join("work"))
        .map_err(|e| format!("overlay workdir: {e}"))?;
    // No syncs to the upper: a sandbox's writable layer does not outlive a host crash (its
    // processes are gone then and recovery removes it), and snapshots take btrfs snapshots,
    // which flush the upper's data themselves. Without it every sandbox teardown (overlay
    // shutdown syncs its upper) committed a btrfs transaction, serialising kills and starts.
    fsconfig_set_flag(ovl.as_fd(), "volatile").map_err(|e| format!("overlay volatile: {e}"))?;
    // Overlay does all its internal work (work dir, copy-up) with the mounter's credentials,
    // which must be inside the idmapping: create it as the sandbox's root id, caps kept.
    with_fs_ids(plan.id_base, || fsconfig_create(ovl.as_fd()))
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
        &plan.root_dir,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attaching root at {:?}: {e}", plan.root_dir))?;
    // The scratch mounts are not detached here: each umount waits for an RCU grace period
    // (namespace_unlock), which serialised concurrent starts. They live only in the helper's
    // private namespace and in the child's copy of it, outside the new root: the child's
    // detach of the old root after pivot_root drops them with everything else.

    let root = &plan.root_dir;
    let owner = format!("uid={},gid={}", plan.id_base, plan.id_base);
    let tmpfs = |dir: &str, opts: String, flags: MsFlags| -> Result<(), String> {
        let target = root.join(dir);
        std::fs::create_dir_all(&target).map_err(|e| format!("creating {target:?}: {e}"))?;
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            flags,
            Some(opts.as_str()),
        )
        .map_err(|e| format!("mounting tmpfs on {target:?}: {e}"))
    };
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // /dev: a small tmpfs with the usual nodes (made here, by host root, so they work).
    tmpfs(
        "dev",
        format!("mode=755,size=64k,nr_inodes=64,{owner}"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    let dev = root.join("dev");
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(*major, *minor),
        )
        .map_err(|e| format!("mknod {path:?}: {e}"))?;
        // mknod honours the umask; the nodes must be world-usable.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("chmod {path:?}: {e}"))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("/dev/{link}: {e}"))?;
    }
    std::fs::create_dir(dev.join("pts")).map_err(|e| format!("/dev/pts: {e}"))?;
    // Owned by the sandbox's root rather than the unmapped host root.
    for entry in std::fs::read_dir(&dev).map_err(|e| format!("reading {dev:?}: {e}"))? {
        let path = entry.map_err(|e| format!("reading {dev:?}: {e}"))?.path();
        std::os::unix::fs::lchown(&path, Some(plan.id_base), Some(plan.id_base))
            .map_err(|e| format!("chown {path:?}: {e}"))?;
    }
    // /tmp and /dev/shm: two directories of one tmpfs, so that together they hold at most
    // `tmpfs_size`. Its pages are charged to the sandbox's memory and cannot be reclaimed; the
    // daemon sizes it below the memory limit, so filling both cannot get the agent OOM-killed.
    let shared = stage.join("mem");
    std::fs::create_dir(&shared).map_err(|e| format!("creating {shared:?}: {e}"))?;
    mount(
        Some("tmpfs"),
        &shared,
        Some("tmpfs"),
        nosuid_nodev,
        Some(format!("mode=755,size={},{owner}", plan.tmpfs_size).as_str()),
    )
    .map_err(|e| format!("mounting the /tmp and /dev/shm tmpfs: {e}"))?;
    for (sub, target) in [("tmp", "tmp"), ("shm", "dev/shm")] {
        use std::os::unix::fs::PermissionsExt;
        let (src, dst) = (shared.join(sub), root.join(target));
        std::fs::create_dir(&src).map_err(|e| format!("creating {src:?}: {e}"))?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod {src:?}: {e}"))?;
        std::os::unix::fs::lchown(&src, Some(plan.id_base), Some(plan.id_base))
            .map_err(|e| format!("chown {src:?}: {e}"))?;
        std::fs::create_dir_all(&dst).map_err(|e| format!("creating {dst:?}: {e}"))?;
        mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("mounting /{target}: {e}"))?;
    }
    tmpfs("run", format!("mode=755,size=16m,{owner}"), nosuid_nodev)?;

    // /sys: a sysfs made here, in the sandbox's network namespace (its /sys/class/net lists
    // only the sandbox's interfaces), read-only and without submounts (no cgroup trees, no
    // debugfs). The host's hardware is hidden: /sys/devices keeps only `system` (CPUs and
    // memory, which nproc and lscpu read) and `virtual` (the sandbox's network devices).
    let sysfs = stage.join("sysfs");
    std::fs::create_dir(&sysfs).map_err(|e| format!("creating {sysfs:?}: {e}"))?;
    let ro_flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("sysfs"), &sysfs, Some("sysfs"), ro_flags, None::<&str>)
        .map_err(|e| format!("mounting sysfs: {e}"))?;
    let sys = root.join("sys");
    std::fs::create_dir_all(&sys).map_err(|e| format!("creating {sys:?}: {e}"))?;
    bind_readonly(&sysfs, &sys, MsFlags::empty())?;
    let devices = sys.join("devices");
    mount(
        Some("tmpfs"),
        &devices,
        Some("tmpfs"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=755"),
    )
    .map_err(|e| format!("hiding /sys/devices: {e}"))?;
    for kept in SYS_DEVICES_KEPT {
        let target = devices.join(kept);
        std::fs::create_dir(&target).map_err(|e| format!("creating {target:?}: {e}"))?;
        bind_readonly(&sysfs.join("devices").join(kept), &target, MsFlags::empty())?;
    }
    mount(
        None::<&str>,
        &devices,
        None::<&str>,
        MsFlags::MS_REMOUNT | ro_flags,
        None::<&str>,
    )
    .map_err(|e| format!("making /sys/devices read-only: {e}"))?;
    for dir in MASKED_DIRS.iter().filter(|d| d.starts_with("sys/")) {
        let target = root.join(dir);
        if target.is_dir() {
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | nosuid_nodev,
                Some("size=0"),
            )
            .map_err(|e| format!("masking {target:?}: {e}"))?;
        }
    }
    Ok(())
}

/// The child's half: runs inside the new user/pid/uts/ipc namespaces as the sandbox's PID 1.
struct ChildSetup<'a> {
    plan: &'a SpawnPlan,
    go: OwnedFd,
    listener: RawFd,
    agent: RawFd,
    log: RawFd,
    argv: &'a [CString],
    envp: &'a [CString],
    seccomp: Option<&'a [seccompiler::sock_filter]>,
}

impl ChildSetup<'_> {
    /// Returns only on failure, with the reason.
    fn run(self) -> String {
        match self.setup() {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    fn setup(self) -> Result<std::convert::Infallible, String> {
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        use nix::sched::{CloneFlags, unshare};

        let mut byte = [0u8; 1];
        let n = std::fs::File::from(self.go)
            .read(&mut byte)
            .map_err(|e| format!("waiting for go: {e}"))?;
        if n == 0 {
            return Err("the helper gave up before the sandbox was ready".into());
        }
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare mount+cgroup namespaces: {e}"))?;
        nix::unistd::sethostname(&self.plan.hostname).map_err(|e| format!("sethostname: {e}"))?;

        let root = &self.plan.root_dir;
        let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let proc_dir = root.join("proc");
        std::fs::create_dir_all(&proc_dir).map_err(|e| format!("creating /proc: {e}"))?;
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            nosuid_nodev_noexec,
            None::<&str>,
        )
        .map_err(|e| format!("mounting /proc: {e}"))?;
        mount(
            Some("devpts"),
            &root.join("dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .map_err(|e| format!("mounting /dev/pts: {e}"))?;
        for file in MASKED_FILES {
            let target = root.join(file);
            if target.exists() {
                mount(
                    Some(&root.join("dev/null")),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("masking {file}: {e}"))?;
            }
        }
        for dir in MASKED_DIRS.iter().filter(|d| d.starts_with("proc/")) {
            let target = root.join(dir);
            if target.is_dir() {
                mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some("size=0"),
                )
                .map_err(|e| format!("masking {dir}: {e}"))?;
            }
        }
        for path in READONLY_PATHS {
            let target = root.join(path);
            if target.exists() {
                bind_readonly(&target, &target, MsFlags::MS_REC)?;
            }
        }

        // Mounts copied into a less privileged namespace are locked, and pivot_root refuses a
        // locked new root: bind the tree onto itself to get an unlocked top mount.
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("binding the root onto itself: {e}"))?;
        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours.
        nix::unistd::chdir(root).map_err(|e| format!("chdir root: {e}"))?;
        nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host root: {e}"))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;

        // Become root of the user namespace (host: the mapped base id), with no extra groups.
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        let zero_g = nix::unistd::Gid::from_raw(0);
        let zero_u = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(zero_g, zero_g, zero_g).map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(zero_u, zero_u, zero_u).map_err(|e| format!("setresuid: {e}"))?;

        // stdio: nothing in, nothing out, stderr to the sandbox log; the socket at fd 3.
        let devnull = open_path(Path::new("/dev/null"), libc::O_RDWR)?.into_raw_fd();
        dup2(devnull, 0)?;
        dup2(devnull, 1)?;
        dup2(self.log, 2)?;
        dup2(self.listener, 3)?;
        // Nothing above fd 3 may reach the agent; the agent binary's and the error pipe's fds
        // are still needed until exec, so mark everything close-on-exec instead of closing.
        cloexec_from(4);

        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            self.plan.nofile,
            self.plan.nofile,
        )
        .map_err(|e| format!("RLIMIT_NOFILE {}: {e}", self.plan.nofile))?;
        // No process of the sandbox may hold CAP_SYS_PTRACE: with it, root inside could
        // ptrace or write /proc/1/mem of the agent (non-dumpable only stops those without it).
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) } != 0 {
            return Err(format!(
                "dropping CAP_SYS_PTRACE from the bounding set: {}",
                std::io::Error::last_os_error()
            ));
        }
        if self.plan.no_new_privs {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        }
        if let Some(filter) = self.seccomp {
            if self.plan.no_new_privs {
                seccompiler::apply_filter(filter)
                    .map_err(|e| format!("installing seccomp: {e}"))?;
            } else {
                // Without no_new_privs (so setuid sudo can elevate inside): allowed because we
                // hold CAP_SYS_ADMIN in the sandbox's user namespace. See decision 0005.
                super::seccomp::install_keeping_privs(filter)
                    .map_err(|e| format!("installing seccomp: {e}"))?;
            }
        }

        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = self
            .envp
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: argv/envp are NUL-terminated arrays of valid C strings that outlive the call.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                self.agent,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        Err(format!(
            "exec of the agent failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Marks every fd from `first` up close-on-exec: one close_range call (Linux 5.11+) rather than
/// a syscall per possible fd on the start path.
fn cloexec_from(first: RawFd) {
    // SAFETY: only changes fd flags of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        for fd in first..1024 {
            // SAFETY: as above; fds that are not open just fail.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Binds `src` on `target` read-only, nosuid, nodev and noexec (`extra`: e.g. MS_REC).
fn bind_readonly(src: &Path, target: &Path, extra: nix::mount::MsFlags) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(|e| format!("binding {src:?} on {target:?}: {e}"))?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, target, None::<&str>, ro, None::<&str>)
        .map_err(|e| format!("making {target:?} read-only: {e}"))
}

fn bind_agent_socket(path: &Path) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("binding agent socket {path:?}: {e}"))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod {path:?}: {e}"))?;
    Ok(OwnedFd::from(listener))
}

fn open_path(path: &Path, flags: i32) -> Result<OwnedFd, String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "opening {path:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn dup2(from: RawFd, to: RawFd) -> Result<(), String> {
    // dup2 clears close-on-exec on `to`, except when from == to: then clear it by hand.
    // SAFETY: plain fcntl/dup2 on descriptors this process owns.
    let ret = if from == to {
        unsafe { libc::fcntl(to, libc::F_SETFD, 0) }
    } else {
        unsafe { libc::dup2(from, to) }
    };
    if ret < 0 {
        return Err(format!(
            "dup2 {from}->{to}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn write_file(path: impl AsRef<Path>, contents: &str) -> Result<(), String> {
    let path = path.as_ref();
    std::fs::write(path, contents).map_err(|e| format!("writing {path:?}: {e}"))
}

fn cstrings(items: impl IntoIterator<Item = String>) -> Result<Vec<CString>, String> {
    items
        .into_iter()
        .map(|s| CString::new(s).map_err(|_| "NUL byte in an argument or env var".to_string()))
        .collect()
}

/// clone3 without a new stack: fork semantics plus namespace flags. Safe to continue in the
/// child only because the helper is single-threaded.
fn clone(flags: u64) -> Result<i32, String> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with no stack behaves like fork; the caller is single-threaded.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(format!("clone3: {}", std::io::Error::last_os_error()));
    }
    Ok(ret as i32)
}

/// Runs `f` with fsuid/fsgid set to `id` and every permitted capability still effective
/// (changing fsuid away from 0 drops the file capabilities from the effective set).
fn with_fs_ids<T>(id: u32, f: impl FnOnce() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    // SAFETY: plain credential syscalls on the (single-threaded) helper itself.
    unsafe {
        libc::setfsgid(id);
        libc::setfsuid(id);
    }
    raise_effective_caps();
    let out = f();
    // SAFETY: as above; back to host root.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
    raise_effective_caps();
    out
}

/// Sets the effective capability set to the permitted one (capget/capset, v3 ABI).
fn raise_effective_caps() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: v3 capability structs of the right size for capget/capset.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        ) == 0
        {
            for d in &mut data {
                d.effective = d.permitted;
            }
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr());
        }
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) with MOUNT_ATTR_IDMAP. Hand-written: neither rustix nor nix wraps it.
fn mount_setattr_idmap(fd: RawFd, attr_set: u64, userns: RawFd) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: valid struct pointer and size; empty path with AT_EMPTY_PATH targets `fd`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
