//! The record a sandbox start is built from (pure data the daemon sends the helper) and the
//! fixed lists of OCI masks and device nodes every start applies.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the helper needs, as data. Built by the daemon; golden-testable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnPlan {
    /// Sandbox id.
    pub id: String,
    /// Hostname set in the sandbox's UTS namespace.
    pub hostname: String,
    /// Host uid/gid that uid/gid 0 inside maps to.
    pub id_base: u32,
    /// How many ids the user namespace maps, from `id_base` on.
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
    /// Host path of the agent binary, opened by the helper and exec'd by fd.
    pub agent_binary: PathBuf,
    /// Arguments passed to the agent after its name.
    pub agent_args: Vec<String>,
    /// Host path of the agent's unix socket (the only way in).
    pub agent_socket: PathBuf,
    /// The agent's stderr.
    pub log_file: PathBuf,
    /// Environment of the agent (and so of every process it starts).
    pub env: Vec<(String, String)>,
    /// Size of the one tmpfs that holds /tmp and /dev/shm, in bytes or with a suffix ("256m").
    pub tmpfs_size: String,
    /// Set no_new_privs for every process of the sandbox (setuid binaries then cannot elevate).
    pub no_new_privs: bool,
    /// Install the default seccomp profile.
    pub seccomp: bool,
    /// RLIMIT_NOFILE (soft and hard) of every process in the sandbox.
    pub nofile: u64,
    /// Host file holding this start's boot id, shown read-only as the sandbox's
    /// `/proc/sys/kernel/random/boot_id` (each sandbox start is a boot of its own).
    pub boot_id_file: PathBuf,
    /// Set: the sandbox resumes the processes of a memory snapshot (CRIU restores them into
    /// this root) instead of starting its agent afresh.
    #[serde(default)]
    pub restore: Option<RestorePlan>,
}

/// How a sandbox resumes from a memory snapshot (see `restore.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The `criu` executable.
    pub criu: PathBuf,
    /// CRIU's arguments (`restore ...`), built by the daemon. The descriptors its
    /// `--inherit-fd` options name are placed by the helper: [`INHERIT_LISTENER_FD`] and on.
    pub args: Vec<String>,
    /// The snapshot's copies of the sandbox's tmpfs trees, each copied into the fresh tmpfs
    /// at the second path before CRIU runs.
    pub tmpfs_copies: Vec<(PathBuf, PathBuf)>,
    /// Where CRIU writes the restored init's host pid.
    pub pidfile: PathBuf,
    /// CRIU's log: its error lines are the helper's answer when the restore fails.
    pub log: PathBuf,
    /// CRIU's kernel-feature cache kept across runs (`criu.kdat`: without it each run probes
    /// the kernel again, about 100 ms); copied into the helper's /run before CRIU runs.
    pub kdat_cache: PathBuf,
    /// Connections the agent held when the snapshot was taken: each gets one end of a fresh
    /// socket pair whose other end is closed at once, so the agent reads EOF and drops it.
    pub dead_connections: usize,
    /// A fork in another uid range than its snapshot's: the tmpfs copies' owners move to it.
    #[serde(default)]
    pub owner_shift: Option<IdShift>,
}

/// Host ids `from..from+count` become `to..to+count` (a memory fork in its own uid range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdShift {
    /// First host id of the snapshot's range.
    pub from: u32,
    /// First host id of the fork's range.
    pub to: u32,
    /// Ids in a range.
    pub count: u32,
}

impl IdShift {
    /// `id` moved into the new range (ids outside the old one are left as they are).
    pub fn map(&self, id: u32) -> u32 {
        if id >= self.from && id - self.from < self.count {
            id - self.from + self.to
        } else {
            id
        }
    }
}

/// Descriptor numbers the helper hands CRIU for `--inherit-fd`: the fork's agent socket,
/// its log, the agent binary (its mapped executable), then the dead connections.
pub const INHERIT_LISTENER_FD: i32 = 100;
/// See [`INHERIT_LISTENER_FD`].
pub const INHERIT_LOG_FD: i32 = 101;
/// See [`INHERIT_LISTENER_FD`].
pub const INHERIT_AGENT_FD: i32 = 102;
/// See [`INHERIT_LISTENER_FD`].
pub const INHERIT_FIRST_DEAD_FD: i32 = 103;

/// Mounts of a sandbox that a memory snapshot leaves to Coppice (CRIU's "external" mounts),
/// as (CRIU key, mount point inside the sandbox). They are made by the host (device nodes,
/// the sysfs of the sandbox's network namespace, the boot id, the tmpfs trees sized and owned
/// for the sandbox) in ways a process in the sandbox's user namespace could not repeat;
/// a restore builds them afresh and CRIU binds them in. Parents before children.
pub const EXTERNAL_MOUNTS: &[(&str, &str)] = &[
    ("dev", "dev"),
    ("shm", "dev/shm"),
    ("tmp", "tmp"),
    ("run", "run"),
    ("sys", "sys"),
    ("sys-devices", "sys/devices"),
    ("sys-devices-system", "sys/devices/system"),
    ("sys-devices-virtual", "sys/devices/virtual"),
    ("boot-id", "proc/sys/kernel/random/boot_id"),
];

/// The tmpfs trees a memory snapshot copies (their content is the processes' state too), as
/// (name of the copy, path inside the sandbox).
pub const TMPFS_TREES: &[(&str, &str)] = &[("tmp", "tmp"), ("shm", "dev/shm"), ("run", "run")];

/// What the helper reports once the sandbox's init has exec'd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnResult {
    /// Host pid of the sandbox's init (the agent).
    pub pid: i32,
    /// How long each step took, in microseconds (for the daemon's debug log and the rigs).
    #[serde(default)]
    pub steps_us: Vec<(String, u64)>,
}

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
