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
}

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
