//! cgroup limits for sandboxes on cgroup v1, v2 and hybrid hosts.
//!
//! Every sandbox gets `<hierarchy>/coppice/<name>` in each hierarchy we use: one directory per
//! v1 controller mount that holds a controller we need, plus one in the cgroup2 (unified) tree
//! whenever there is one, even on a hybrid host where it holds no controller, so that cgroup
//! namespaces see a sane root and `cgroup.kill` works.
//!
//! Plan + executor: [`probe`] (read-only host inspection) and [`plan_limits`] (which file gets
//! which value) are pure enough to unit-test without root; [`detect`], [`CgroupLayout::create`]
//! and the [`SandboxCgroup`] methods perform the writes.
//!
//! The methods of [`SandboxCgroup`] block (a handful of small cgroupfs writes; `kill_all` and
//! `destroy` may wait up to about a second for tasks to exit); async callers should run the
//! slow ones (`kill_all`, `destroy`, `freeze`) through `spawn_blocking`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::model::Limits;

/// Our parent group in every hierarchy.
pub const PARENT: &str = "coppice";

/// Where the cgroup filesystems are mounted on a standard host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// CFS period used for CPU quotas (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The kernel refuses quotas below 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// Where one controller lives on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the cgroup2 (unified) hierarchy, enabled in our parent's `cgroup.subtree_control`.
    V2,
    /// In a cgroup v1 hierarchy mounted at this path (e.g. `/sys/fs/cgroup/memory`).
    V1(PathBuf),
    /// Not available.
    Missing,
}

impl Placement {
    /// Whether the controller is in the cgroup2 hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, Placement::V2)
    }
    /// Whether the controller is not available at all.
    pub fn is_missing(&self) -> bool {
        matches!(self, Placement::Missing)
    }
}

/// Which hierarchy holds each controller Coppice uses, decided once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
    /// hybrid one, `None` on a pure v1 host.
    pub unified: Option<PathBuf>,
    /// Where the memory controller is.
    pub memory: Placement,
    /// Where the cpu controller is.
    pub cpu: Placement,
    /// Where the pids controller is.
    pub pids: Placement,
    /// v1 `freezer.state` or v2 `cgroup.freeze` (a core cgroup2 feature, not a controller).
    pub freezer: Placement,
    /// v1 cpuacct hierarchy for CPU usage; `None` means "read `cpu.stat` in the unified tree".
    pub cpuacct: Option<PathBuf>,
    /// v1 swap accounting (`memory.memsw.*`) is available.
    pub memsw: bool,
    /// v2 `memory.swap.max` is available.
    pub swap_v2: bool,
}

/// Inspects a cgroup root (normally `/sys/fs/cgroup`) without changing anything.
///
/// A controller is v2 when the unified hierarchy lists it in `cgroup.controllers`, else v1
/// when `<root>/<controller>` is a v1 hierarchy (has `tasks`, no `cgroup.controllers`), else
/// missing. `swap_v2` is a guess here (the file only appears once memory is enabled below the
/// root); [`detect`] settles it.
pub fn probe(root: &Path) -> CgroupLayout {
    let unified = if root.join("cgroup.controllers").is_file() {
        Some(root.to_path_buf())
    } else if root.join("unified/cgroup.controllers").is_file() {
        Some(root.join("unified"))
    } else {
        None
    };
    let v2_controllers: BTreeSet<String> = unified
        .as_ref()
        .and_then(|u| fs::read_to_string(u.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let v1 = |ctrl: &str| -> Option<PathBuf> {
        let dir = root.join(ctrl);
        // A unified mount inside the root (hybrid) must not count as a v1 hierarchy.
        (Some(&dir) != unified.as_ref()
            && dir.join("tasks").is_file()
            && !dir.join("cgroup.controllers").exists())
        .then_some(dir)
    };
    let place = |ctrl: &str| -> Placement {
        if v2_controllers.contains(ctrl) {
            Placement::V2
        } else if let Some(dir) = v1(ctrl) {
            Placement::V1(dir)
        } else {
            Placement::Missing
        }
    };
    let memory = place("memory");
    let cpu = place("cpu");
    let pids = place("pids");
    // The v2 freezer is part of cgroup2 itself. Use it when memory is on v2 (a real v2 host)
    // or when there is no v1 freezer; otherwise stay with the v1 freezer.
    let freezer = match (&memory, v1("freezer"), &unified) {
        (Placement::V2, _, Some(_)) => Placement::V2,
        (_, Some(dir), _) => Placement::V1(dir),
        (_, None, Some(_)) => Placement::V2,
        (_, None, None) => Placement::Missing,
    };
    let cpuacct = match &cpu {
        Placement::V2 => None,
        _ => v1("cpuacct").filter(|d| d.join("cpuacct.usage").is_file()),
    };
    let memsw = match &memory {
        Placement::V1(dir) => dir.join("memory.memsw.limit_in_bytes").is_file(),
        _ => false,
    };
    let swap_v2 = memory.is_v2()
        && unified
            .as_ref()
            .is_some_and(|u| u.join(PARENT).join("memory.swap.max").is_file());
    CgroupLayout {
        unified,
        memory,
        cpu,
        pids,
        freezer,
        cpuacct,
        memsw,
        swap_v2,
    }
}

/// Detects the host's layout under `/sys/fs/cgroup`, prepares our parent groups and turns on
/// cgroup2's `favordynmods` (see [`favor_dynamic_moves`]).
pub fn detect() -> Result<CgroupLayout> {
    let layout = detect_at(Path::new(CGROUP_ROOT))?;
    if let Some(unified) = &layout.unified {
        match favor_dynamic_moves(unified) {
            Ok(true) => tracing::info!(
                "cgroup2 remounted with favordynmods: moving a sandbox's first process into its \
                 cgroups no longer waits for an RCU grace period"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "cgroup2 favordynmods is off ({e}): each sandbox start waits about one RCU \
                 grace period (5-15 ms) to join its cgroups"
            ),
        }
    }
    Ok(layout)
}

/// [`detect`] for a cgroup root other than `/sys/fs/cgroup`.
///
/// Creates `<hierarchy>/coppice` in every hierarchy we use and enables our v2 controllers in
/// the unified root's and in `coppice`'s `cgroup.subtree_control`.
pub fn detect_at(root: &Path) -> Result<CgroupLayout> {
    let mut layout = probe(root);
    let missing = |ctrl: &str| {
        Error::HostUnsupported(format!(
            "no '{ctrl}' cgroup controller: it is neither listed in the cgroup2 hierarchy's \
             cgroup.controllers ({}) nor mounted as cgroup v1 at {}; Coppice needs it to \
             limit sandboxes (kernel CONFIG_MEMCG / CONFIG_CGROUP_PIDS, and a cgroup mount)",
            layout
                .unified
                .as_ref()
                .map(|u| u.display().to_string())
                .unwrap_or_else(|| "no cgroup2 mount".into()),
            root.join(ctrl).display(),
        ))
    };
    if layout.memory.is_missing() {
        return Err(missing("memory"));
    }
    if layout.pids.is_missing() {
        return Err(missing("pids"));
    }
    if layout.cpu.is_missing() {
        tracing::warn!("no cpu cgroup controller: CPU limits are unavailable");
    }

    for dir in layout.roots() {
        mkdir_ok(&dir.join(PARENT))?;
    }
    if let Some(unified) = &layout.unified {
        let want: Vec<&str> = [
            ("memory", &layout.memory),
            ("cpu", &layout.cpu),
            ("pids", &layout.pids),
        ]
        .into_iter()
        .filter(|(_, p)| p.is_v2())
        .map(|(c, _)| c)
        .collect();
        if !want.is_empty() {
            enable_controllers(unified, &want)?;
            enable_controllers(&unified.join(PARENT), &want)?;
        }
        if layout.memory.is_v2() {
            layout.swap_v2 = unified.join(PARENT).join("memory.swap.max").is_file();
        }
    }
    tracing::debug!(?layout, "cgroup layout");
    Ok(layout)
}

/// Turns on cgroup2's `favordynmods` (Linux 6.0+) unless it is on; Ok(true) when this call did.
///
/// Moving a task into a cgroup (every sandbox start writes its init's pid to `cgroup.procs`)
/// takes the global threadgroup rwsem for writing, and a writer waits out an RCU grace
/// period whenever no other writer came just before it: 10-15 ms on the 2-core rig host, most
/// of an unpooled start. `favordynmods` keeps that rwsem in its writer-friendly mode for good
/// (the cost moves to forks and exits, a few atomic operations each). The lock is shared by
/// every hierarchy, so the flag on the cgroup2 mount also speeds up the v1 writes of a hybrid
/// host. A reconfigure sets the cgroup2 flags to exactly those given, so the mount's current
/// options (nsdelegate, memory_recursiveprot, ...) are passed along; `fspick` touches only the
/// superblock, never the mount's nosuid/nodev/noexec.
fn favor_dynamic_moves(unified: &Path) -> std::result::Result<bool, String> {
    use rustix::mount::{FsPickFlags, fsconfig_reconfigure, fsconfig_set_flag, fspick};
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let current = cgroup2_super_options(&info, unified)
        .ok_or_else(|| format!("{} is not a cgroup2 mount", unified.display()))?;
    let Some(flags) = reconfigure_flags(&current) else {
        return Ok(false);
    };
    let fd = fspick(rustix::fs::CWD, unified, FsPickFlags::FSPICK_CLOEXEC)
        .map_err(|e| format!("fspick {}: {e}", unified.display()))?;
    for f in &flags {
        fsconfig_set_flag(&fd, f.as_str()).map_err(|e| format!("cgroup2 option {f}: {e}"))?;
    }
    fsconfig_reconfigure(&fd).map_err(|e| format!("reconfiguring cgroup2: {e}"))?;
    Ok(true)
}

/// The superblock options of the cgroup2 filesystem mounted at `mount`, from mountinfo text.
fn cgroup2_super_options(mountinfo: &str, mount: &Path) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (mount_part, fs_part) = line.split_once(" - ")?;
        let point = mount_part.split(' ').nth(4)?;
        let mut fs = fs_part.split(' ');
        let (fstype, _source, opts) = (fs.next()?, fs.next()?, fs.next()?);
        (fstype == "cgroup2" && Path::new(point) == mount).then(|| opts.to_string())
    })
}

/// The flags a reconfigure must set to add `favordynmods` to `current` (comma-separated
/// superblock options); None when it is there already. `rw`/`ro` are not cgroup2 options.
fn reconfigure_flags(current: &str) -> Option<Vec<String>> {
    let opts: Vec<&str> = current
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    if opts.contains(&"favordynmods") {
        return None;
    }
    Some(
        opts.into_iter()
            .chain(["favordynmods"])
            .map(str::to_owned)
            .collect(),
    )
}

fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).ctx(|| format!("reading {}", file.display()))?;
    let enabled: BTreeSet<&str> = current.split_whitespace().collect();
    let todo: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.contains(**c))
        .map(|c| format!("+{c}"))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    write_file(&file, &todo.join(" ")).map_err(|e| match e {
        Error::Io { context, source } => Error::HostUnsupported(format!(
            "{context}: {source} (cannot delegate cgroup2 controllers {controllers:?}; is \
             another manager holding processes in {}?)",
            dir.display()
        )),
        other => other,
    })
}

/// The exact cgroupfs writes that give sandbox `name` these limits, in order.
///
/// Unset limits write "max" / -1, so a pooled sandbox can be re-limited either way. On v1 with
/// swap accounting, `memsw` is opened up first, then the RAM limit is set and `memsw` follows
/// it (memsw must never be below the RAM limit, whatever the previous values were): the
/// sandbox gets no swap on top of its memory. CPU quotas are `cpus × 100 ms` per 100 ms.
pub fn plan_limits(layout: &CgroupLayout, name: &str, limits: &Limits) -> Vec<(PathBuf, String)> {
    let mut out = Vec::with_capacity(6);
    let mem = limits.memory_bytes.map(|b| b.to_string());
    if let Some(dir) = layout.dir_for(&layout.memory, name) {
        if layout.memory.is_v2() {
            out.push((
                dir.join("memory.max"),
                mem.clone().unwrap_or_else(|| "max".into()),
            ));
            if layout.swap_v2 {
                let swap = if mem.is_some() { "0" } else { "max" };
                out.push((dir.join("memory.swap.max"), swap.into()));
            }
        } else {
            let v1 = mem.clone().unwrap_or_else(|| "-1".into());
            if layout.memsw {
                out.push((dir.join("memory.memsw.limit_in_bytes"), "-1".into()));
            }
            out.push((dir.join("memory.limit_in_bytes"), v1.clone()));
            if layout.memsw && mem.is_some() {
                out.push((dir.join("memory.memsw.limit_in_bytes"), v1));
            }
        }
    }
    if let Some(dir) = layout.dir_for(&layout.cpu, name) {
        let quota = limits.cpus.map(cpu_quota_us);
        if layout.cpu.is_v2() {
            let q = quota.map(|q| q.to_string()).unwrap_or_else(|| "max".into());
            out.push((dir.join("cpu.max"), format!("{q} {CPU_PERIOD_US}")));
        } else {
            out.push((dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
            let q = quota.map(|q| q.to_string()).unwrap_or_else(|| "-1".into());
            out.push((dir.join("cpu.cfs_quota_us"), q));
        }
    }
    if let Some(dir) = layout.dir_for(&layout.pids, name) {
        let v = limits
            .pids
            .map(|p| p.to_string())
            .unwrap_or_else(|| "max".into());
        out.push((dir.join("pids.max"), v));
    }
    out
}

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(CPU_MIN_QUOTA_US)
}

fn validate_limits(layout: &CgroupLayout, limits: &Limits) -> Result<()> {
    if let Some(c) = limits.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "cpus must be a positive number, got {c}"
            )));
        }
        if layout.cpu.is_missing() {
            return Err(Error::HostUnsupported(
                "a CPU limit was asked for but this host has no cpu cgroup controller".into(),
            ));
        }
    }
    if limits.memory_bytes == Some(0) {
        return Err(Error::InvalidArgument(
            "memory limit must be positive".into(),
        ));
    }
    if limits.pids == Some(0) {
        return Err(Error::InvalidArgument("pids limit must be positive".into()));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidArgument(format!("bad cgroup name '{name}'")));
    }
    Ok(())
}

impl CgroupLayout {
    /// Hierarchy roots we use, each once: v1 mounts (memory, cpu, cpuacct, pids, freezer) and
    /// the unified mount, in that order.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::with_capacity(6);
        let mut push = |p: &Path| {
            if !out.iter().any(|q| q == p) {
                out.push(p.to_path_buf());
            }
        };
        for p in [&self.memory, &self.cpu] {
            if let Placement::V1(d) = p {
                push(d);
            }
        }
        if let Some(d) = &self.cpuacct {
            push(d);
        }
        for p in [&self.pids, &self.freezer] {
            if let Placement::V1(d) = p {
                push(d);
            }
        }
        if let Some(u) = &self.unified {
            push(u);
        }
        out
    }

    fn dir_for(&self, p: &Placement, name: &str) -> Option<PathBuf> {
        match p {
            Placement::V1(root) => Some(root.join(PARENT).join(name)),
            Placement::V2 => self.unified.as_ref().map(|u| u.join(PARENT).join(name)),
            Placement::Missing => None,
        }
    }

    /// Creates the sandbox's directory in every hierarchy. An existing group is reused (a
    /// pooled sandbox being re-created); reconcile leaks with [`list`](Self::list) first.
    pub fn create(&self, name: &str) -> Result<SandboxCgroup> {
        validate_name(name)?;
        let cg = self.open(name);
        let mut made = Vec::new();
        for dir in cg.paths() {
            match fs::create_dir(&dir) {
                Ok(()) => made.push(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    for d in made.iter().rev() {
                        let _ = fs::remove_dir(d);
                    }
                    return Err(Error::io(format!("creating cgroup {}", dir.display()))(e));
                }
            }
        }
        Ok(cg)
    }

    /// A handle on an existing (or not yet created) sandbox group; touches nothing.
    pub fn open(&self, name: &str) -> SandboxCgroup {
        SandboxCgroup {
            layout: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Names of every group under our parent in any hierarchy (for leak cleanup).
    pub fn list(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for root in self.roots() {
            let Ok(rd) = fs::read_dir(root.join(PARENT)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(n) = e.file_name().to_str()
                {
                    names.insert(n.to_owned());
                }
            }
        }
        names.into_iter().collect()
    }
}

/// One sandbox's cgroup directories.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    layout: CgroupLayout,
    name: String,
}

impl SandboxCgroup {
    /// The group's name, the sandbox id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's cgroup layout it lives in.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// The sandbox's directory in every hierarchy (see [`CgroupLayout::roots`]).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.layout
            .roots()
            .into_iter()
            .map(|r| r.join(PARENT).join(&self.name))
            .collect()
    }

    fn memory_dir(&self) -> PathBuf {
        self.layout
            .dir_for(&self.layout.memory, &self.name)
            .expect("detect() guarantees a memory controller")
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        self.layout
            .unified
            .as_ref()
            .map(|u| u.join(PARENT).join(&self.name))
    }

    /// Writes [`plan_limits`].
    pub fn apply_limits(&self, limits: &Limits) -> Result<()> {
        validate_limits(&self.layout, limits)?;
        for (path, value) in plan_limits(&self.layout, &self.name, limits) {
            write_file(&path, &value)?;
        }
        Ok(())
    }

    /// Caps the parent group of all sandboxes (called on the handle of name ""), so that
    /// together they can never take the host's last memory or pids.
    pub fn apply_parent_limits(&self, limits: &Limits) -> Result<()> {
        debug_assert!(self.name.is_empty());
        for (path, value) in plan_limits(&self.layout, "", limits) {
            write_file(&path, &value)?;
        }
        Ok(())
    }

    /// Moves `pid` (a whole process) into the group in every hierarchy, v1 and v2.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        let pid = pid.to_string();
        for dir in self.paths() {
            write_file(&dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Processes in the group (from the memory hierarchy, which always exists).
    pub fn procs(&self) -> Vec<i32> {
        read_pids(&self.memory_dir().join("cgroup.procs"))
    }

    /// Freezes every task and waits (up to 2 s) until the kernel reports the group frozen.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true, Duration::from_secs(2))
    }

    /// Thaws every task and waits (up to 2 s) until the kernel reports the group thawed.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false, Duration::from_secs(2))
    }

    /// The group's freezer directory (v1 `freezer.state` or v2 `cgroup.freeze` is in it), as
    /// CRIU's `--freeze-cgroup` takes it.
    pub fn freezer_dir(&self) -> Option<PathBuf> {
        match &self.layout.freezer {
            Placement::V1(root) => Some(root.join(PARENT).join(&self.name)),
            Placement::V2 => self.unified_dir(),
            Placement::Missing => None,
        }
    }

    fn set_frozen(&self, frozen: bool, wait: Duration) -> Result<()> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &str) =
            match &self.layout.freezer {
                Placement::V1(root) => {
                    let f = root.join(PARENT).join(&self.name).join("freezer.state");
                    let v = if frozen { "FROZEN" } else { "THAWED" };
                    (f.clone(), v, f, v)
                }
                Placement::V2 => {
                    let dir = self
                        .unified_dir()
                        .expect("v2 freezer implies a unified mount");
                    let v = if frozen { "1" } else { "0" };
                    let done = if frozen { "frozen 1" } else { "frozen 0" };
                    (
                        dir.join("cgroup.freeze"),
                        v,
                        dir.join("cgroup.events"),
                        done,
                    )
                }
                Placement::Missing => {
                    return Err(Error::HostUnsupported(
                        "no cgroup freezer on this host".into(),
                    ));
                }
            };
        write_file(&file, value)?;
        let deadline = Instant::now() + wait;
        let mut nap = Duration::from_micros(100);
        loop {
            let s = fs::read_to_string(&state_file)
                .ctx(|| format!("reading {}", state_file.display()))?;
            if s.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "cgroup {} did not become {} within {wait:?}",
                    self.name,
                    if frozen { "frozen" } else { "thawed" }
                )));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    /// Kills every process in the group and waits (up to ~1 s) until they are gone.
    ///
    /// Uses `cgroup.kill` of the unified tree when the kernel has it (atomic against forks);
    /// otherwise, and for anything left, freezes the group, SIGKILLs every pid, and thaws.
    pub fn kill_all(&self) {
        let cgroup_kill = self.unified_dir().map(|d| d.join("cgroup.kill"));
        let start = Instant::now();
        let mut nap = Duration::from_micros(200);
        loop {
            let used_kill = cgroup_kill
                .as_ref()
                .is_some_and(|f| write_file(f, "1").is_ok());
            let pids = self.procs();
            if pids.is_empty() {
                return;
            }
            // cgroup.kill normally empties the group within a few ms; anything still there
            // after 50 ms (or everything, without cgroup.kill) gets freeze + SIGKILL + thaw.
            if !used_kill || start.elapsed() > Duration::from_millis(50) {
                let _ = self.set_frozen(true, Duration::from_millis(100));
                for pid in self.procs() {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if !self.layout.freezer.is_missing() {
                    let _ = self.set_frozen(false, Duration::from_millis(100));
                }
            }
            if start.elapsed() > Duration::from_secs(1) {
                tracing::warn!(cgroup = %self.name, ?pids, "processes survive kill_all");
                return;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// Kills everything and removes the group from every hierarchy (retrying briefly while
    /// tasks exit). A group that is already gone is fine.
    pub fn destroy(&self) -> Result<()> {
        self.kill_all();
        let mut first_err = None;
        for dir in self.paths() {
            if let Err(e) = rmdir_retry(&dir, Duration::from_secs(2)) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Memory charged to the group, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = if self.layout.memory.is_v2() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&self.memory_dir().join(file))
    }

    /// Processes of the group the OOM killer has ended (`oom_kill` of memory.events on v2,
    /// of memory.oom_control on v1).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.layout.memory.is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.memory_dir().join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Page cache charged to the group, in bytes (`cache` on v1, `file` on v2).
    pub fn memory_cache(&self) -> Option<u64> {
        let key = if self.layout.memory.is_v2() {
            "file "
        } else {
            "cache "
        };
        let stat = fs::read_to_string(self.memory_dir().join("memory.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    }

    /// True when the group's freezer reports it frozen.
    pub fn frozen(&self) -> bool {
        match &self.layout.freezer {
            Placement::V1(root) => {
                fs::read_to_string(root.join(PARENT).join(&self.name).join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
            }
            Placement::V2 => self.unified_dir().is_some_and(|d| {
                fs::read_to_string(d.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
            }),
            Placement::Missing => false,
        }
    }

    /// CPU time used by the group, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        if let Some(root) = &self.layout.cpuacct {
            return read_u64(&root.join(PARENT).join(&self.name).join("cpuacct.usage"));
        }
        let stat = fs::read_to_string(self.unified_dir()?.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us * 1000)
    }
}

fn rmdir_retry(dir: &Path, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    let mut nap = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                // Child groups (made inside a delegated sandbox) must go first.
                if let Ok(rd) = fs::read_dir(dir) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            let _ = rmdir_retry(&e.path(), Duration::ZERO);
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(Error::io(format!("removing cgroup {}", dir.display()))(e));
                }
            }
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

fn mkdir_ok(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating cgroup {}", dir.display()))(e)),
    }
}

/// One `write(2)` to an existing cgroupfs file (never creates it).
fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))?;
    f.write_all(value.as_bytes())
        .ctx(|| format!("writing '{value}' to {}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_options() {
        let info = "25 1 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n\
                    27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n";
        let unified = Path::new("/sys/fs/cgroup/unified");
        let opts = cgroup2_super_options(info, unified).unwrap();
        assert_eq!(opts, "rw,nsdelegate,memory_recursiveprot");
        assert_eq!(
            cgroup2_super_options(info, Path::new("/sys/fs/cgroup/memory")),
            None
        );
        assert_eq!(
            cgroup2_super_options(info, Path::new("/sys/fs/cgroup")),
            None
        );
        // The current options are kept (a reconfigure would clear them), favordynmods added.
        assert_eq!(
            reconfigure_flags(&opts).unwrap(),
            ["nsdelegate", "memory_recursiveprot", "favordynmods"]
        );
        assert_eq!(reconfigure_flags("rw").unwrap(), ["favordynmods"]);
        assert_eq!(reconfigure_flags("rw,favordynmods,nsdelegate"), None);
    }

    fn hybrid() -> CgroupLayout {
        let r = Path::new("/sys/fs/cgroup");
        CgroupLayout {
            unified: Some(r.join("unified")),
            memory: Placement::V1(r.join("memory")),
            cpu: Placement::V1(r.join("cpu")),
            pids: Placement::V1(r.join("pids")),
            freezer: Placement::V1(r.join("freezer")),
            cpuacct: Some(r.join("cpuacct")),
            memsw: true,
            swap_v2: false,
        }
    }

    fn v2() -> CgroupLayout {
        CgroupLayout {
            unified: Some("/sys/fs/cgroup".into()),
            memory: Placement::V2,
            cpu: Placement::V2,
            pids: Placement::V2,
            freezer: Placement::V2,
            cpuacct: None,
            memsw: false,
            swap_v2: true,
        }
    }

    fn plan(l: &CgroupLayout, limits: &Limits) -> Vec<(String, String)> {
        plan_limits(l, "sb1", limits)
            .into_iter()
            .map(|(p, v)| (p.display().to_string(), v))
            .collect()
    }

    fn s(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    const SET: Limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(32),
        disk_bytes: None,
    };

    #[test]
    fn plan_v1_set_and_unset() {
        let m = "/sys/fs/cgroup/memory/coppice/sb1";
        assert_eq!(
            plan(&hybrid(), &SET),
            vec![
                s(&format!("{m}/memory.memsw.limit_in_bytes"), "-1"),
                s(&format!("{m}/memory.limit_in_bytes"), "67108864"),
                s(&format!("{m}/memory.memsw.limit_in_bytes"), "67108864"),
                s("/sys/fs/cgroup/cpu/coppice/sb1/cpu.cfs_period_us", "100000"),
                s("/sys/fs/cgroup/cpu/coppice/sb1/cpu.cfs_quota_us", "50000"),
                s("/sys/fs/cgroup/pids/coppice/sb1/pids.max", "32"),
            ]
        );
        assert_eq!(
            plan(&hybrid(), &Limits::default()),
            vec![
                s(&format!("{m}/memory.memsw.limit_in_bytes"), "-1"),
                s(&format!("{m}/memory.limit_in_bytes"), "-1"),
                s("/sys/fs/cgroup/cpu/coppice/sb1/cpu.cfs_period_us", "100000"),
                s("/sys/fs/cgroup/cpu/coppice/sb1/cpu.cfs_quota_us", "-1"),
                s("/sys/fs/cgroup/pids/coppice/sb1/pids.max", "max"),
            ]
        );
        // Without swap accounting only the RAM limit is written; without cpu, no cpu files.
        let mut l = hybrid();
        l.memsw = false;
        l.cpu = Placement::Missing;
        assert_eq!(
            plan(&l, &SET),
            vec![
                s(&format!("{m}/memory.limit_in_bytes"), "67108864"),
                s("/sys/fs/cgroup/pids/coppice/sb1/pids.max", "32"),
            ]
        );
    }

    #[test]
    fn plan_v2_set_and_unset() {
        let d = "/sys/fs/cgroup/coppice/sb1";
        assert_eq!(
            plan(&v2(), &SET),
            vec![
                s(&format!("{d}/memory.max"), "67108864"),
                s(&format!("{d}/memory.swap.max"), "0"),
                s(&format!("{d}/cpu.max"), "50000 100000"),
                s(&format!("{d}/pids.max"), "32"),
            ]
        );
        assert_eq!(
            plan(&v2(), &Limits::default()),
            vec![
                s(&format!("{d}/memory.max"), "max"),
                s(&format!("{d}/memory.swap.max"), "max"),
                s(&format!("{d}/cpu.max"), "max 100000"),
                s(&format!("{d}/pids.max"), "max"),
            ]
        );
        // Tiny quotas are clamped to the kernel's 1 ms minimum; 2 cores = 200 ms per 100 ms.
        let tiny = Limits {
            cpus: Some(0.001),
            ..Default::default()
        };
        assert!(plan(&v2(), &tiny).contains(&s(&format!("{d}/cpu.max"), "1000 100000")));
        let two = Limits {
            cpus: Some(2.0),
            ..Default::default()
        };
        assert!(plan(&v2(), &two).contains(&s(&format!("{d}/cpu.max"), "200000 100000")));
    }

    #[test]
    fn mixed_layout_puts_each_controller_in_its_hierarchy() {
        // v2 memory + pids, v1 cpu: paths follow each controller's placement.
        let mut l = v2();
        l.cpu = Placement::V1("/sys/fs/cgroup/cpu".into());
        let p = plan(&l, &SET);
        assert!(p.contains(&s("/sys/fs/cgroup/coppice/sb1/memory.max", "67108864")));
        assert!(p.contains(&s(
            "/sys/fs/cgroup/cpu/coppice/sb1/cpu.cfs_quota_us",
            "50000"
        )));
        assert_eq!(
            l.roots(),
            vec![PathBuf::from("/sys/fs/cgroup/cpu"), "/sys/fs/cgroup".into()]
        );
    }

    #[test]
    fn paths_and_roots() {
        let cg = hybrid().open("x");
        let paths: Vec<String> = cg.paths().iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/sys/fs/cgroup/memory/coppice/x",
                "/sys/fs/cgroup/cpu/coppice/x",
                "/sys/fs/cgroup/cpuacct/coppice/x",
                "/sys/fs/cgroup/pids/coppice/x",
                "/sys/fs/cgroup/freezer/coppice/x",
                "/sys/fs/cgroup/unified/coppice/x",
            ]
        );
        assert_eq!(
            v2().open("x").paths(),
            vec![PathBuf::from("/sys/fs/cgroup/coppice/x")]
        );
    }

    #[test]
    fn invalid_limits_and_names() {
        assert!(
            validate_limits(
                &v2(),
                &Limits {
                    cpus: Some(f64::NAN),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            validate_limits(
                &v2(),
                &Limits {
                    cpus: Some(-1.0),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert!(
            validate_limits(
                &v2(),
                &Limits {
                    pids: Some(0),
                    ..Default::default()
                }
            )
            .is_err()
        );
        let mut l = v2();
        l.cpu = Placement::Missing;
        assert!(matches!(
            validate_limits(
                &l,
                &Limits {
                    cpus: Some(1.0),
                    ..Default::default()
                }
            ),
            Err(Error::HostUnsupported(_))
        ));
        assert!(validate_limits(&l, &SET_NO_CPU).is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    const SET_NO_CPU: Limits = Limits {
        memory_bytes: Some(1 << 20),
        cpus: None,
        pids: Some(1),
        disk_bytes: None,
    };

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "").unwrap();
    }

    #[test]
    fn probe_fake_hybrid_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("unified")).unwrap();
        fs::write(r.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        touch(&r.join("unified/tasks")); // this host's unified mount has one too
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            touch(&r.join(c).join("tasks"));
        }
        touch(&r.join("memory/memory.memsw.limit_in_bytes"));
        touch(&r.join("cpuacct/cpuacct.usage"));
        let l = probe(r);
        assert_eq!(l.unified.as_deref(), Some(r.join("unified").as_path()));
        assert_eq!(l.memory, Placement::V1(r.join("memory")));
        assert_eq!(l.cpu, Placement::V1(r.join("cpu")));
        assert_eq!(l.pids, Placement::V1(r.join("pids")));
        assert_eq!(l.freezer, Placement::V1(r.join("freezer")));
        assert_eq!(l.cpuacct, Some(r.join("cpuacct")));
        assert!(l.memsw && !l.swap_v2);
    }

    #[test]
    fn probe_fake_v2_tree_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::write(
            r.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        touch(&r.join("coppice/memory.swap.max"));
        let l = probe(r);
        assert_eq!(l.unified.as_deref(), Some(r));
        assert!(l.memory.is_v2() && l.cpu.is_v2() && l.pids.is_v2() && l.freezer.is_v2());
        assert!(l.cpuacct.is_none() && l.swap_v2 && !l.memsw);

        // A v2 host without the pids controller: detect() must refuse clearly.
        let t2 = tempfile::tempdir().unwrap();
        fs::write(t2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(t2.path().join("cgroup.subtree_control"), "").unwrap();
        match detect_at(t2.path()) {
            Err(Error::HostUnsupported(m)) => assert!(m.contains("'pids'"), "{m}"),
            other => panic!("expected HostUnsupported, got {other:?}"),
        }
    }
}
