//! A sandbox start as a list of steps, in the order they happen: the helper's setup, the clone,
//! the helper's work on the child (ids, cgroups, the root tree), the release, then the child's
//! own steps up to the exec. `steps` is pure, so the whole order of namespace, mount and
//! credential operations is data a test can read; the executor only iterates.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::plan::{
    DEVICES, MASKED_DIRS, MASKED_FILES, READONLY_PATHS, SYS_DEVICES_KEPT, SpawnPlan,
};

/// linux/capability.h; not in libc 0.2.
pub const CAP_SYS_PTRACE: u32 = 19;

/// When a mount happens: always, or only if its target exists in the template's tree (the
/// OCI masks name paths a kernel or a rootfs may not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Unconditionally.
    Always,
    /// Only if the target exists (a file or directory to mask).
    IfExists,
    /// Only if the target is a directory.
    IfDir,
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// What to mount: an fs name (`tmpfs`, `proc`) or the path to bind; None for a remount.
    pub source: Option<PathBuf>,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Filesystem type; None for binds and remounts.
    pub fstype: Option<&'static str>,
    /// mount(2) flags.
    pub flags: MsFlags,
    /// Filesystem options, e.g. tmpfs's `size=` and `mode=`.
    pub data: Option<String>,
    /// Whether the mount depends on its target being present.
    pub when: When,
}

/// One operation of a sandbox start.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Helper: a private mount namespace, so nothing it mounts reaches the host.
    PrivateMountNamespace,
    /// Helper: join the sandbox's network namespace (the child inherits it).
    JoinNetns(PathBuf),
    /// Helper: bind the agent's listening socket on the host (mode 0600).
    BindAgentSocket(PathBuf),
    /// Helper: open the agent binary (exec'd by fd, so the sandbox's tree need not hold it).
    OpenAgent(PathBuf),
    /// Helper: open the agent's stderr log for appending.
    OpenLog(PathBuf),
    /// Helper, best effort: the OOM score the sandbox's init inherits.
    OomScoreAdj(i32),
    /// clone(NEWUSER|NEWPID|NEWUTS|NEWIPC); the child waits for `ReleaseChild`.
    Clone,
    /// Helper: the child's `uid_map` or `gid_map`.
    WriteIdMap {
        /// `uid_map` or `gid_map`, under the child's `/proc/<pid>/`.
        file: &'static str,
        /// The map's text: `0 <id_base> <id_count>`.
        map: String,
    },
    /// Helper: the child into one cgroup.
    JoinCgroup(PathBuf),
    /// Helper: an idmapped (the child's user namespace) clone of `src`, attached at `at`.
    AttachIdmapped {
        /// Tree to clone (a template layer, or the sandbox's own fs directory).
        src: PathBuf,
        /// Where the clone is attached.
        at: PathBuf,
        /// Attach it read-only.
        readonly: bool,
    },
    /// Helper: a volatile overlay created with the sandbox root's fs ids, attached at `target`.
    Overlay {
        /// Read-only layers, topmost first.
        lowers: Vec<PathBuf>,
        /// Writable upper directory.
        upper: PathBuf,
        /// Overlay's work directory, on the upper's filesystem.
        work: PathBuf,
        /// Host uid and gid (the sandbox's root) whose credentials create the overlay.
        mounter: u32,
        /// Where the overlay is attached: the sandbox's root.
        target: PathBuf,
    },
    /// Create a directory.
    Mkdir {
        /// Directory to create.
        path: PathBuf,
        /// Create missing parents too (`mkdir -p`).
        parents: bool,
    },
    /// One mount(2) call, see [`Mount`].
    Mount(Mount),
    /// A character device, mode 0666 whatever the umask.
    Mknod {
        /// Path of the node.
        path: PathBuf,
        /// Device major number.
        major: u64,
        /// Device minor number.
        minor: u64,
    },
    /// Create a symlink.
    Symlink {
        /// What the link points to.
        target: &'static str,
        /// Path of the link.
        link: PathBuf,
    },
    /// Set a path's permission bits.
    Chmod {
        /// Path to change.
        path: PathBuf,
        /// New mode, e.g. `0o1777`.
        mode: u32,
    },
    /// lchown to the sandbox's root.
    Chown {
        /// Path to change (the link itself, for a symlink).
        path: PathBuf,
        /// Host uid and gid of the sandbox's root, used for both.
        id: u32,
    },
    /// Helper: tell the child to go on, then wait until it exec'd (or says why not).
    ReleaseChild,
    /// Child: wait for the helper's go.
    WaitForRelease,
    /// Child: its own mount and cgroup namespaces (the mount tree is copied).
    UnshareMountCgroup,
    /// Child: set the sandbox's hostname in its UTS namespace.
    SetHostname(String),
    /// Child: make `root` the root and detach the host's.
    PivotRoot(PathBuf),
    /// Child: uid and gid 0 of the user namespace, no supplementary groups.
    BecomeRoot,
    /// Child: a new session (setsid), with the agent as its leader.
    NewSession,
    /// Child: stdin and stdout /dev/null, stderr the log, the agent's socket at fd 3, every
    /// other fd close-on-exec.
    Stdio,
    /// Child: RLIMIT_NOFILE, soft and hard.
    LimitFiles(u64),
    /// Child: a capability out of the bounding set, for every process of the sandbox.
    DropBoundingCap(u32),
    /// Child: set no_new_privs, so no exec can gain privileges.
    NoNewPrivs,
    /// Child: the default seccomp profile; `keep_privs` installs it without no_new_privs.
    Seccomp {
        /// Install it without setting no_new_privs first.
        keep_privs: bool,
    },
    /// Restore, helper: the log's owner becomes the sandbox's root (CRIU reopens it as the
    /// restored agent).
    OwnLog(u32),
    /// Restore, helper: a child in a new user namespace (with the maps that follow), only for
    /// the idmapped mounts; CRIU makes the sandbox's own user namespace.
    UsernsForIdmap,
    /// Restore, helper: copy a tree (`cp -a`) into a fresh mount, if the copy exists.
    CopyTree {
        /// The snapshot's copy.
        from: PathBuf,
        /// Where its content goes.
        to: PathBuf,
    },
    /// Restore, helper: files under `path` owned by ids of `shift`'s old range are given to
    /// the same ids of its new one.
    ShiftOwners {
        /// The tree (a tmpfs copy).
        path: PathBuf,
        /// Old range to new.
        shift: super::plan::IdShift,
    },
    /// Restore, helper: keep CRIU's kernel-feature cache at `to` unless one is there already
    /// (written aside and renamed, so a concurrent reader never sees half of it).
    KeepKdat {
        /// The cache CRIU wrote in the helper's /run.
        from: PathBuf,
        /// Where it is kept.
        to: PathBuf,
    },
    /// Restore, helper: itself into one cgroup (CRIU and the processes it restores inherit it).
    JoinCgroupSelf(PathBuf),
    /// Restore, helper: run CRIU (`RestorePlan`), with the descriptors it inherits placed.
    Criu,
    /// Restore, helper: the sandbox's hostname in the restored UTS namespace.
    SetRestoredHostname(String),
    /// Child: execveat of the agent's fd.
    Exec {
        /// The agent's argv.
        argv: Vec<String>,
        /// The agent's environment, as `KEY=value` strings.
        envp: Vec<String>,
    },
}

impl Step {
    /// The phase a step's time is counted in (`SpawnResult::steps_us`).
    pub fn phase(&self) -> &'static str {
        match self {
            Step::WriteIdMap { .. } => "idmap",
            Step::JoinCgroup(_) => "cgroups",
            Step::ReleaseChild => "child-to-exec",
            Step::PrivateMountNamespace
            | Step::JoinNetns(_)
            | Step::BindAgentSocket(_)
            | Step::OpenAgent(_)
            | Step::OpenLog(_)
            | Step::OomScoreAdj(_)
            | Step::Clone => "setup+clone",
            _ => "root",
        }
    }
}

/// The steps of starting `plan`, in order.
pub fn steps(plan: &SpawnPlan) -> Vec<Step> {
    let mut out = vec![Step::PrivateMountNamespace];
    if let Some(netns) = &plan.netns {
        out.push(Step::JoinNetns(netns.clone()));
    }
    out.extend([
        Step::BindAgentSocket(plan.agent_socket.clone()),
        Step::OpenAgent(plan.agent_binary.clone()),
        Step::OpenLog(plan.log_file.clone()),
        // The agent is the last thing the OOM killer should pick (its children get 500).
        Step::OomScoreAdj(-998),
        Step::Clone,
    ]);
    let map = format!("0 {} {}\n", plan.id_base, plan.id_count);
    for file in ["uid_map", "gid_map"] {
        out.push(Step::WriteIdMap {
            file,
            map: map.clone(),
        });
    }
    out.extend(plan.cgroup_procs.iter().cloned().map(Step::JoinCgroup));
    root_tree(plan, &Tree::Root(&plan.root_dir), &mut out);
    out.push(Step::ReleaseChild);
    child(plan, &mut out);
    out
}

fn mount(
    source: Option<&Path>,
    target: PathBuf,
    fstype: Option<&'static str>,
    flags: MsFlags,
    data: Option<String>,
) -> Step {
    Step::Mount(Mount {
        source: source.map(Path::to_path_buf),
        target,
        fstype,
        flags,
        data,
        when: When::Always,
    })
}

fn tmpfs(target: PathBuf, flags: MsFlags, data: String) -> Step {
    mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(data),
    )
}

fn mkdir(path: PathBuf, parents: bool) -> Step {
    Step::Mkdir { path, parents }
}

/// A bind of `src` on `target` (`extra`: e.g. MS_REC), then its remount read-only, nosuid,
/// nodev and noexec (a bind ignores flags other than MS_REC).
fn bind_readonly(src: &Path, target: PathBuf, extra: MsFlags, when: When) -> [Step; 2] {
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    [
        Step::Mount(Mount {
            source: Some(src.to_path_buf()),
            target: target.clone(),
            fstype: None,
            flags: MsFlags::MS_BIND | extra,
            data: None,
            when,
        }),
        Step::Mount(Mount {
            source: None,
            target,
            fstype: None,
            flags: ro,
            data: None,
            when,
        }),
    ]
}

/// Where the helper builds the mounts of a sandbox's tree.
pub enum Tree<'a> {
    /// In the root itself (a start).
    Root(&'a Path),
    /// Side by side under one directory, each mount point named by its `EXTERNAL_MOUNTS` key
    /// (a restore: CRIU binds each in on its own, and may only clone mounts without children).
    Flat(&'a Path),
}

impl Tree<'_> {
    /// Where the sandbox's `path` (relative, e.g. `dev/shm`) is built.
    pub fn at(&self, path: &str) -> PathBuf {
        match self {
            Tree::Root(root) => root.join(path),
            Tree::Flat(dir) => {
                // The deepest mount holding `path`, then the rest of the path inside it.
                let (key, at) = super::plan::EXTERNAL_MOUNTS
                    .iter()
                    .filter(|(_, at)| path == *at || path.starts_with(&format!("{at}/")))
                    .max_by_key(|(_, at)| at.len())
                    .copied()
                    .unwrap_or(("", ""));
                let rest = path[at.len()..].trim_start_matches('/');
                let base = dir.join(key);
                if rest.is_empty() {
                    base
                } else {
                    base.join(rest)
                }
            }
        }
    }

    fn is_flat(&self) -> bool {
        matches!(self, Tree::Flat(_))
    }

    /// Flat only: the directory standing for mount point `path` inside its parent's mount
    /// (`dev/shm` in the /dev tmpfs), which CRIU mounts on.
    fn mount_point_in_parent(&self, path: &str) -> Option<PathBuf> {
        let (_, rest) = path.rsplit_once('/')?;
        let parent = &path[..path.len() - rest.len() - 1];
        self.is_flat().then(|| self.at(parent).join(rest))
    }
}

/// The helper's half of the root: the overlay of idmapped layers at the root, then /dev,
/// /tmp, /dev/shm, /run and /sys under `tree` (the root itself, or for a restore a stage
/// directory CRIU binds them from).
pub(super) fn root_tree(plan: &SpawnPlan, tree: &Tree<'_>, out: &mut Vec<Step>) {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let ro_flags = MsFlags::MS_RDONLY | nosuid_nodev | MsFlags::MS_NOEXEC;
    let (root, stage, id) = (&plan.root_dir, &plan.stage_dir, plan.id_base);
    let owner = format!("uid={id},gid={id}");

    // Layers must be attached mounts for overlay to clone them, so the idmapped trees are
    // attached under a scratch tmpfs (in the helper's private namespace). They are not
    // detached afterwards: each umount waits for an RCU grace period (namespace_unlock), which
    // serialised concurrent starts; the child's detach of the old root after pivot_root drops
    // them with everything else.
    out.push(tmpfs(
        stage.clone(),
        nosuid_nodev,
        "size=4k,mode=700".into(),
    ));
    let mut lowers = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        let at = stage.join(format!("l{i}"));
        out.push(Step::AttachIdmapped {
            src: layer.clone(),
            at: at.clone(),
            readonly: true,
        });
        lowers.push(at);
    }
    let fs = stage.join("fs");
    out.push(Step::AttachIdmapped {
        src: plan.fs_dir.clone(),
        at: fs.clone(),
        readonly: false,
    });
    out.push(Step::Overlay {
        lowers,
        upper: fs.join("upper"),
        work: fs.join("work"),
        mounter: id,
        target: root.clone(),
    });

    // /dev: a small tmpfs with the usual nodes (made here, by host root, so they work), owned
    // by the sandbox's root rather than the unmapped host root.
    let dev = tree.at("dev");
    out.push(mkdir(dev.clone(), true));
    out.push(tmpfs(
        dev.clone(),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        format!("mode=755,size=64k,nr_inodes=64,{owner}"),
    ));
    let mut owned = Vec::new();
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        out.push(Step::Mknod {
            path: path.clone(),
            major: *major,
            minor: *minor,
        });
        owned.push(path);
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let link = dev.join(link);
        out.push(Step::Symlink {
            target,
            link: link.clone(),
        });
        owned.push(link);
    }
    out.push(mkdir(dev.join("pts"), false));
    owned.push(dev.join("pts"));
    out.extend(owned.into_iter().map(|path| Step::Chown { path, id }));

    // /tmp and /dev/shm: two directories of one tmpfs, so that together they hold at most
    // `tmpfs_size`. Its pages are charged to the sandbox's memory and cannot be reclaimed; the
    // daemon sizes it below the memory limit, so filling both cannot get the agent OOM-killed.
    let shared = stage.join("mem");
    out.push(mkdir(shared.clone(), false));
    out.push(tmpfs(
        shared.clone(),
        nosuid_nodev,
        format!("mode=755,size={},{owner}", plan.tmpfs_size),
    ));
    for (sub, target) in [("tmp", "tmp"), ("shm", "dev/shm")] {
        let (src, dst) = (shared.join(sub), tree.at(target));
        if let Some(point) = tree.mount_point_in_parent(target) {
            out.push(mkdir(point, true));
        }
        out.push(mkdir(src.clone(), false));
        out.push(Step::Chmod {
            path: src.clone(),
            mode: 0o1777,
        });
        out.push(Step::Chown {
            path: src.clone(),
            id,
        });
        out.push(mkdir(dst.clone(), true));
        out.push(mount(Some(&src), dst, None, MsFlags::MS_BIND, None));
    }
    out.push(mkdir(tree.at("run"), true));
    out.push(tmpfs(
        tree.at("run"),
        nosuid_nodev,
        format!("mode=755,size=16m,{owner}"),
    ));

    // /sys: a sysfs made here, in the sandbox's network namespace (its /sys/class/net lists
    // only the sandbox's interfaces), read-only and without submounts (no cgroup trees, no
    // debugfs). The host's hardware is hidden: /sys/devices keeps only `system` (CPUs and
    // memory, which nproc and lscpu read) and `virtual` (the sandbox's network devices).
    let sysfs = stage.join("sysfs");
    out.push(mkdir(sysfs.clone(), false));
    out.push(mount(
        Some(Path::new("sysfs")),
        sysfs.clone(),
        Some("sysfs"),
        ro_flags,
        None,
    ));
    let sys = tree.at("sys");
    out.push(mkdir(sys.clone(), true));
    out.extend(bind_readonly(
        &sysfs,
        sys.clone(),
        MsFlags::empty(),
        When::Always,
    ));
    let devices = tree.at("sys/devices");
    if tree.is_flat() {
        out.push(mkdir(devices.clone(), false));
    }
    out.push(tmpfs(
        devices.clone(),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        "size=4k,mode=755".into(),
    ));
    for kept in SYS_DEVICES_KEPT {
        let path = format!("sys/devices/{kept}");
        if let Some(point) = tree.mount_point_in_parent(&path) {
            out.push(mkdir(point, false));
        }
        let target = tree.at(&path);
        out.push(mkdir(target.clone(), false));
        out.extend(bind_readonly(
            &sysfs.join("devices").join(kept),
            target,
            MsFlags::empty(),
            When::Always,
        ));
    }
    out.push(mount(
        None,
        devices,
        None,
        MsFlags::MS_REMOUNT | ro_flags,
        None,
    ));
    // A restore's masks come back with CRIU's own mounts.
    for dir in MASKED_DIRS
        .iter()
        .filter(|d| d.starts_with("sys/") && !tree.is_flat())
    {
        out.push(Step::Mount(Mount {
            source: Some("tmpfs".into()),
            target: tree.at(dir),
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_RDONLY | nosuid_nodev,
            data: Some("size=0".into()),
            when: When::IfDir,
        }));
    }
}

/// The child's steps: inside the new user/pid/uts/ipc namespaces, as the sandbox's PID 1.
fn child(plan: &SpawnPlan, out: &mut Vec<Step>) {
    let root = &plan.root_dir;
    out.extend([
        Step::WaitForRelease,
        Step::UnshareMountCgroup,
        Step::SetHostname(plan.hostname.clone()),
        mkdir(root.join("proc"), true),
        mount(
            Some(Path::new("proc")),
            root.join("proc"),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        mount(
            Some(Path::new("devpts")),
            root.join("dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
        ),
    ]);
    for file in MASKED_FILES {
        out.push(Step::Mount(Mount {
            source: Some(root.join("dev/null")),
            target: root.join(file),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
            when: When::IfExists,
        }));
    }
    for dir in MASKED_DIRS.iter().filter(|d| d.starts_with("proc/")) {
        out.push(Step::Mount(Mount {
            source: Some("tmpfs".into()),
            target: root.join(dir),
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_RDONLY,
            data: Some("size=0".into()),
            when: When::IfDir,
        }));
    }
    for path in READONLY_PATHS {
        let target = root.join(path);
        out.extend(bind_readonly(
            &target,
            target.clone(),
            MsFlags::MS_REC,
            When::IfExists,
        ));
    }
    // After the read-only /proc/sys, so that the boot id is one mount (a bind made before it
    // would be copied by that recursive bind: two mounts on one path, which CRIU cannot dump).
    out.push(Step::Mount(Mount {
        source: Some(plan.boot_id_file.clone()),
        target: root.join("proc/sys/kernel/random/boot_id"),
        fstype: None,
        flags: MsFlags::MS_BIND,
        data: None,
        when: When::IfExists,
    }));
    // Mounts copied into a less privileged namespace are locked, and pivot_root refuses a
    // locked new root: bind the tree onto itself to get an unlocked top mount.
    out.push(mount(
        Some(root),
        root.clone(),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    ));
    out.extend([
        Step::PivotRoot(root.clone()),
        Step::BecomeRoot,
        // A session of its own: the sandbox's processes never share one with the host (and
        // CRIU dumps only trees whose session leader is inside their pid namespace).
        Step::NewSession,
        Step::Stdio,
        Step::LimitFiles(plan.nofile),
        // No process of the sandbox may hold CAP_SYS_PTRACE: with it, root inside could
        // ptrace or write /proc/1/mem of the agent (non-dumpable only stops those without it).
        Step::DropBoundingCap(CAP_SYS_PTRACE),
    ]);
    if plan.no_new_privs {
        out.push(Step::NoNewPrivs);
    }
    if plan.seccomp {
        // Without no_new_privs (so setuid sudo can elevate inside) the filter is installed
        // with CAP_SYS_ADMIN in the sandbox's user namespace. See decision 0005.
        out.push(Step::Seccomp {
            keep_privs: !plan.no_new_privs,
        });
    }
    out.push(Step::Exec {
        argv: std::iter::once("coppice-agent".to_string())
            .chain(plan.agent_args.iter().cloned())
            .collect(),
        envp: plan
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(std::iter::once("COPPICE_AGENT_FD=3".to_string()))
            .collect(),
    });
}

/// One line per step, for the golden test and the helper's debug output.
pub fn render(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("{}\n", line(s))).collect()
}

fn line(step: &Step) -> String {
    let p = |p: &Path| p.display().to_string();
    match step {
        Step::PrivateMountNamespace => "unshare mount namespace; make / private".into(),
        Step::JoinNetns(ns) => format!("setns net {}", p(ns)),
        Step::BindAgentSocket(s) => format!("bind agent socket {} 0600", p(s)),
        Step::OpenAgent(a) => format!("open agent {}", p(a)),
        Step::OpenLog(l) => format!("open log {}", p(l)),
        Step::OomScoreAdj(n) => format!("oom_score_adj {n} (best effort)"),
        Step::Clone => "clone user,pid,uts,ipc".into(),
        Step::WriteIdMap { file, map } => format!("write {file} {}", map.trim_end()),
        Step::JoinCgroup(c) => format!("join cgroup {}", p(c)),
        Step::AttachIdmapped { src, at, readonly } => format!(
            "idmap {}{} at {}",
            p(src),
            if *readonly { " ro" } else { "" },
            p(at)
        ),
        Step::Overlay {
            lowers,
            upper,
            work,
            mounter,
            target,
        } => format!(
            "overlay lower={} upper={} work={} volatile as fsuid {mounter} at {}",
            lowers.iter().map(|l| p(l)).collect::<Vec<_>>().join(":"),
            p(upper),
            p(work),
            p(target)
        ),
        Step::Mkdir { path, parents } => {
            format!("mkdir{} {}", if *parents { " -p" } else { "" }, p(path))
        }
        Step::Mount(m) => {
            let when = match m.when {
                When::Always => "",
                When::IfExists => " (if it exists)",
                When::IfDir => " (if a directory)",
            };
            format!(
                "mount {} on {} type {} [{}]{}{when}",
                m.source.as_deref().map_or("none".into(), p),
                p(&m.target),
                m.fstype.unwrap_or("none"),
                flag_names(m.flags),
                m.data.as_deref().map_or(String::new(), |d| format!(" {d}")),
            )
        }
        Step::Mknod { path, major, minor } => format!("mknod {} c {major} {minor} 0666", p(path)),
        Step::Symlink { target, link } => format!("symlink {} -> {target}", p(link)),
        Step::Chmod { path, mode } => format!("chmod {mode:o} {}", p(path)),
        Step::Chown { path, id } => format!("lchown {id}:{id} {}", p(path)),
        Step::ReleaseChild => "release the child; wait for its exec".into(),
        Step::WaitForRelease => "child: wait for release".into(),
        Step::UnshareMountCgroup => "unshare mount,cgroup".into(),
        Step::SetHostname(h) => format!("sethostname {h}"),
        Step::PivotRoot(r) => format!("pivot_root {}; detach the old root", p(r)),
        Step::BecomeRoot => "setgroups []; setresgid 0; setresuid 0".into(),
        Step::NewSession => "setsid".into(),
        Step::OwnLog(id) => format!("chown log {id}:{id}"),
        Step::UsernsForIdmap => "clone user (for the idmapped mounts)".into(),
        Step::CopyTree { from, to } => format!("copy {} into {} (if it exists)", p(from), p(to)),
        Step::ShiftOwners { path, shift } => format!(
            "chown under {}: ids {}+{} to {}+{}",
            p(path),
            shift.from,
            shift.count,
            shift.to,
            shift.count
        ),
        Step::JoinCgroupSelf(path) => format!("join cgroup (self) {}", p(path)),
        Step::KeepKdat { from, to } => format!("keep {} as {} (if none yet)", p(from), p(to)),
        Step::Criu => "criu restore; wait for it; read the pid file".into(),
        Step::SetRestoredHostname(h) => format!("sethostname {h} in the restored uts namespace"),
        Step::Stdio => "stdio: 0,1 /dev/null, 2 log, 3 agent socket, 4.. cloexec".into(),
        Step::LimitFiles(n) => format!("rlimit nofile {n}"),
        Step::DropBoundingCap(c) => format!("drop cap {c} from the bounding set"),
        Step::NoNewPrivs => "no_new_privs".into(),
        Step::Seccomp { keep_privs } => format!(
            "seccomp default profile{}",
            if *keep_privs {
                " (keeping privileges)"
            } else {
                ""
            }
        ),
        Step::Exec { argv, envp } => {
            format!("execveat agent argv={argv:?} env={}", envp.join(" "))
        }
    }
}

fn flag_names(flags: MsFlags) -> String {
    const NAMES: &[(MsFlags, &str)] = &[
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
    ];
    NAMES
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
#[path = "steps_golden.rs"]
mod golden;
