//! The Linux backend's executor: turns a sandbox record into a running sandbox (cgroup, netns,
//! coppice-spawn) and tears it down again. The manager above it is backend-neutral.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::btrfs::{self, Storage};
use super::cgroup::{self, CgroupLayout};
use super::domains::DomainRegistry;
use super::identity::{write_boot_id, write_identity};
use super::net::{self, NetConfig};
use super::netpolicy;
use super::spawn::SpawnPlan;
use super::spawner::Spawner;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::model::{Limits, TemplateInfo};
use crate::policy::{CheckedPolicy, HostContext};
use crate::state::SandboxRecord;

/// Ids per sandbox user namespace.
pub const ID_COUNT: u32 = 65536;

/// The Linux backend: sandboxes as namespaces, cgroups, an overlay root and a veth each.
pub struct LinuxBackend {
    pub(super) cfg: Config,
    cgroups: CgroupLayout,
    net: Option<NetConfig>,
    /// What network policies are compiled against (with `net` only).
    policy_ctx: HostContext,
    /// Domain rules' run-time state, shared with the resolver and the SNI proxy.
    domains: Arc<DomainRegistry>,
    agent_binary: PathBuf,
    /// Forks the helper that starts each sandbox (`coppice-spawn --serve`).
    spawner: Spawner,
    /// Uppers as btrfs subvolumes, or plain directories.
    pub(super) storage: Storage,
    /// CRIU's answer, probed when first asked.
    pub(super) criu: std::sync::OnceLock<crate::backend::MemorySnapshotSupport>,
}

pub use crate::backend::Started;

/// Mounts a tmpfs on `dir` (`<state>/sandboxes`) unless it is one already. With btrfs storage
/// a sandbox's directory there holds only mount points, the agent's socket and its log, and on
/// the state disk making and removing them cost 0.2–1.6 ms a file (ext4 scanning crowded inode
/// bitmaps: the default template's hard-link farm lives on the same disk), several per
/// sandbox, on the create path. Like the btrfs image, it stays mounted when the daemon stops
/// (live sandboxes' sockets are in it). A directory that already holds sandboxes on disk stays
/// there; so does everything when the mount fails.
fn sandbox_dirs_on_tmpfs(dir: &Path) {
    use nix::mount::{MsFlags, mount};
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dir
        .parent()
        .and_then(dev)
        .is_some_and(|d| Some(d) != dev(dir))
    {
        return; // a mount point already (an earlier daemon's tmpfs)
    }
    if std::fs::read_dir(dir).map_or(true, |mut e| e.next().is_some()) {
        tracing::info!(
            "sandbox directories stay on disk in {} (not empty)",
            dir.display()
        );
        return;
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Sockets, empty mount points and agents' logs (a few lines each): 256 MiB is room
    // to spare, and a cap so that no log can grow into the host's memory.
    match mount(
        Some("coppice"),
        dir,
        Some("tmpfs"),
        flags,
        Some("mode=0700,size=256m"),
    ) {
        Ok(()) => tracing::debug!("sandbox directories on a tmpfs at {}", dir.display()),
        Err(e) => tracing::warn!(
            "sandbox directories stay on disk: mounting a tmpfs on {}: {e}",
            dir.display()
        ),
    }
}

impl LinuxBackend {
    /// Checks the host (root, cgroups, network) and sets up what every sandbox shares.
    /// `all_sandboxes`: the limits of the parent cgroup they all share.
    pub async fn new(cfg: &Config, all_sandboxes: &Limits) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::HostUnsupported(
                "the Linux backend needs root (user, mount and network namespaces, cgroups)".into(),
            ));
        }
        let cgroups = cgroup::detect()?;
        match cgroups.open("").apply_parent_limits(all_sandboxes) {
            Ok(()) => tracing::info!(
                memory = ?all_sandboxes.memory_bytes,
                pids = ?all_sandboxes.pids,
                "all sandboxes together are capped"
            ),
            Err(e) => tracing::warn!("capping the sandboxes' parent cgroup: {e}"),
        }
        let domains = Arc::new(DomainRegistry::default());
        let (net, policy_ctx) = if cfg.network {
            let mut net = NetConfig::default();
            net.ipv6 = match cfg.network_ipv6.trim() {
                "" => None,
                v6 => Some(net::Ipv6Subnet::parse(v6)?),
            };
            if net.ipv6.is_some()
                && let Err(why) = net::prepare_ipv6_host(Path::new("/proc/sys"))
            {
                tracing::warn!("sandboxes get IPv4 only: {why}");
                net.ipv6 = None;
            }
            if let Some(v6) = net.ipv6 {
                tracing::info!("sandbox IPv6 network {v6} on {}", net.bridge);
            }
            net::ensure_host(&net).await?;
            let ctx = netpolicy::host_context().await?;
            let ctx = super::netdomains::start(cfg, &net, ctx, &domains).await?;
            netpolicy::ensure_shared(&ctx).await?;
            (Some(net), ctx)
        } else {
            (None, HostContext::default())
        };
        let agent_binary = cfg.helper_binary("coppice-agent");
        let spawn_binary = cfg.helper_binary("coppice-spawn");
        for bin in [&agent_binary, &spawn_binary] {
            if !bin.is_file() {
                return Err(Error::HostUnsupported(format!(
                    "helper binary {} is missing (build the workspace: cargo build --release)",
                    bin.display()
                )));
            }
        }
        tracing::info!("sandbox agent: {}", agent_binary.display());
        let spawner = Spawner::new(spawn_binary)?;
        let storage = tokio::task::block_in_place(|| Storage::setup(cfg))?;
        if storage.is_btrfs() {
            sandbox_dirs_on_tmpfs(&cfg.sandboxes_dir());
        }
        Ok(Self {
            storage,
            cfg: cfg.clone(),
            cgroups,
            net,
            policy_ctx,
            domains,
            criu: Default::default(),
            agent_binary,
            spawner,
        })
    }

    /// The sandbox's directory under `<state>/sandboxes/`.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.sandboxes_dir().join(id)
    }

    /// Path of the sandbox agent's unix socket, in its directory.
    pub fn agent_socket(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    /// The IPv4 address of slot `slot`; None without networking.
    pub fn ip_of(&self, slot: u32) -> Option<String> {
        self.net.as_ref().map(|n| n.sandbox_ip(slot).to_string())
    }

    /// The IPv6 address of slot `slot`; None without networking or IPv6.
    pub fn ip6_of(&self, slot: u32) -> Option<String> {
        self.net
            .as_ref()
            .and_then(|n| n.sandbox_ip6(slot))
            .map(|ip| ip.to_string())
    }

    /// Starts the sandbox described by `rec` on `template`'s layers; with `memory`, the id of
    /// a memory snapshot whose processes it resumes instead of starting its agent afresh.
    pub async fn start(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        no_new_privs: bool,
        memory: Option<&str>,
    ) -> Result<Started> {
        let resume = match memory {
            Some(snap) => {
                let dir = self.memory_dir(snap);
                let info = super::memory::read_info(&dir, &self.agent_binary)?;
                Some((dir, info))
            }
            None => None,
        };
        let dir = self.sandbox_dir(&rec.id);
        // The upper and work directories: a subvolume of their own with btrfs (a snapshot
        // is then a subvolume snapshot), else `fs/` in the sandbox's directory.
        let fs_dir = match self.storage.create_upper(&rec.id, rec.limits.disk_bytes) {
            Ok(Some(sv)) => sv,
            Ok(None) => dir.join("fs"),
            Err(e) => return Err(e),
        };
        for sub in [
            fs_dir.join("upper"),
            fs_dir.join("work"),
            dir.join("root"),
            dir.join("stage"),
        ] {
            std::fs::create_dir_all(&sub).ctx(|| format!("creating {}", sub.display()))?;
        }
        write_identity(&fs_dir.join("upper"), &rec.hostname, &rec.id)?;
        let cg = self.cgroups.create(&rec.id)?;
        let snapshot_dir = resume.as_ref().map(|(d, _)| d.clone());
        let result = self
            .start_in(rec, template, &fs_dir, &cg, no_new_privs, resume)
            .await;
        if let Some(d) = snapshot_dir {
            super::memory::remove_images_view(&d, &rec.id);
        }
        if result.is_err() {
            self.destroy(rec).await;
        }
        result
    }

    async fn start_in(
        &self,
        rec: &SandboxRecord,
        template: &TemplateInfo,
        fs_dir: &Path,
        cg: &cgroup::SandboxCgroup,
        no_new_privs: bool,
        resume: Option<(PathBuf, super::memory::DumpInfo)>,
    ) -> Result<Started> {
        let t0 = std::time::Instant::now();
        let dir = &self.sandbox_dir(&rec.id);
        cg.apply_limits(&rec.limits)?;
        let pending = match &self.net {
            Some(cfg) => Some(net::prepare(cfg, rec.slot).await?),
            None => None,
        };
        let netns = pending.as_ref().map(|n| {
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                n.netns().as_raw_fd()
            ))
        });
        let mut plan = SpawnPlan {
            id: rec.id.clone(),
            hostname: rec.hostname.clone(),
            id_base: self.id_base(rec.slot),
            id_count: ID_COUNT,
            layers: template.layers.clone(),
            fs_dir: fs_dir.to_path_buf(),
            root_dir: dir.join("root"),
            stage_dir: dir.join("stage"),
            netns,
            cgroup_procs: cg
                .paths()
                .into_iter()
                .map(|p| p.join("cgroup.procs"))
                .collect(),
            agent_binary: self.agent_binary.clone(),
            agent_args: vec![],
            agent_socket: dir.join("agent.sock"),
            log_file: dir.join("agent.log"),
            env: base_env(&rec.hostname),
            tmpfs_size: crate::model::memory_tmpfs_bytes(
                &self.cfg.tmpfs_size,
                rec.limits.memory_bytes,
            )
            .to_string(),
            no_new_privs,
            seccomp: self.cfg.linux.seccomp,
            nofile: self.cfg.linux.sandbox_nofile,
            // Resumed in place, the sandbox's boot goes on; any other start is a boot.
            boot_id_file: write_boot_id(
                dir,
                resume
                    .as_ref()
                    .map(|(_, info)| info)
                    .filter(|info| info.sandbox_id == rec.id && !info.boot_id.is_empty())
                    .map(|info| info.boot_id.as_str()),
            )?,
            restore: None,
        };
        if let Some((images, info)) = &resume {
            plan.restore = Some(super::memory::restore_plan(
                &plan,
                &self.criu_binary(),
                images,
                info,
                &dir.join("criu"),
                &self.criu_run_dir(),
            )?);
        }
        // The sandbox only needs to join its netns to start; the veth is wired meanwhile.
        let prepared = t0.elapsed();
        let wiring = async {
            let t = std::time::Instant::now();
            let net = match pending {
                Some(p) => p.wire().await.map(Some),
                None => Ok(None),
            };
            net.map(|n| (n, t.elapsed()))
        };
        let spawning = async {
            let t = std::time::Instant::now();
            self.spawner.spawn(&plan).await.map(|s| (s, t.elapsed()))
        };
        let ((started, spawn_took), (sandbox_net, wire_took)) = tokio::try_join!(spawning, wiring)?;
        drop(sandbox_net); // the sandbox's init now holds the netns
        tracing::debug!(
            sandbox = %rec.id,
            ?prepared,
            ?spawn_took,
            ?wire_took,
            spawn_steps_us = ?started.steps_us,
            total = ?t0.elapsed(),
            "sandbox started"
        );
        Ok(Started {
            pid: started.pid,
            pid_start: pid_start_time(started.pid),
            ip: self.ip_of(rec.slot),
        })
    }

    /// Puts `policy` in force for the sandbox in `slot` (one nft transaction) and cuts its open
    /// connections the policy no longer permits. A no-op without networking.
    pub async fn apply_policy(&self, rec: &SandboxRecord, policy: &CheckedPolicy) -> Result<()> {
        match &self.net {
            Some(n) => {
                let ip = n.sandbox_ip(rec.slot);
                let ip6 = n.sandbox_ip6(rec.slot);
                netpolicy::apply(
                    rec.slot,
                    ip,
                    ip6,
                    rec.pid,
                    policy,
                    &self.policy_ctx,
                    &self.domains,
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Caps (or uncaps) a started sandbox's bandwidth, both directions.
    pub async fn apply_bandwidth(&self, rec: &SandboxRecord, bps: Option<u64>) -> Result<()> {
        match (&self.net, rec.pid) {
            (Some(_), Some(pid)) => {
                netpolicy::apply_bandwidth(&net::host_ifname(rec.slot), pid, bps).await
            }
            _ => Ok(()),
        }
    }

    /// What network policies are compiled against on this host.
    pub fn policy_context(&self) -> &HostContext {
        &self.policy_ctx
    }

    /// First host id of slot `slot`'s user namespace range ([`ID_COUNT`] ids).
    pub fn id_base(&self, slot: u32) -> u32 {
        self.cfg.linux.id_base + slot * ID_COUNT
    }

    /// Whether sandboxes' disk limits are enforced (btrfs storage with simple quotas).
    pub fn has_disk_limits(&self) -> bool {
        self.storage.has_quotas()
    }

    /// Bytes free for sandboxes: the least of the state filesystem's and, with btrfs storage
    /// in a sparse image, the image's own.
    pub fn free_storage_bytes(&self) -> Option<u64> {
        let free = |p: &Path| {
            nix::sys::statvfs::statvfs(p)
                .ok()
                .map(|s| s.blocks_available() * s.fragment_size())
        };
        let state = free(&self.cfg.state_dir);
        let btrfs = self.storage.uppers_dir().and_then(|d| free(&d));
        state.into_iter().chain(btrfs).min()
    }

    /// Applies new limits to a running sandbox (used when a pooled one is handed out).
    pub fn set_limits(&self, id: &str, limits: &Limits) -> Result<()> {
        self.cgroups.open(id).apply_limits(limits)?;
        self.storage.set_disk_limit(id, limits.disk_bytes)
    }

    /// True when the recorded init process is still the sandbox's (not a recycled pid).
    pub fn alive(&self, rec: &SandboxRecord) -> bool {
        match (rec.pid, rec.pid_start) {
            (Some(pid), Some(start)) => pid_start_time(pid) == Some(start),
            (Some(pid), None) => pid_start_time(pid).is_some(),
            _ => false,
        }
    }

    /// Why a sandbox whose agent is gone died: "oom" when the OOM killer ended one of its
    /// processes, else "agent exited" (read before its cgroups are removed).
    pub fn death_cause(&self, rec: &SandboxRecord) -> &'static str {
        if self.cgroups.open(&rec.id).oom_kills() > 0 {
            "oom"
        } else {
            "agent exited"
        }
    }

    /// Kills everything in the sandbox and removes its cgroups, network and files. Never
    /// fails: each step is attempted and problems are logged (a later sweep retries).
    pub async fn destroy(&self, rec: &SandboxRecord) {
        let t0 = std::time::Instant::now();
        let cg = self.cgroups.open(&rec.id);
        if let Err(e) = tokio::task::spawn_blocking(move || cg.destroy())
            .await
            .map_err(Error::internal)
            .and_then(|r| r)
        {
            tracing::warn!(sandbox = %rec.id, "removing cgroups: {e}");
        }
        let killed = t0.elapsed();
        if self.net.is_some()
            && let Err(e) = net::destroy(&net::host_ifname(rec.slot)).await
        {
            tracing::warn!(sandbox = %rec.id, "removing network: {e}");
        }
        let unwired = t0.elapsed();
        if let Some(n) = &self.net
            && let Err(e) = netpolicy::remove(
                rec.slot,
                n.sandbox_ip(rec.slot),
                n.sandbox_ip6(rec.slot),
                &self.domains,
            )
            .await
        {
            tracing::warn!(sandbox = %rec.id, "removing network policy: {e}");
        }
        let unpoliced = t0.elapsed();
        remove_dir_in_background(self.sandbox_dir(&rec.id));
        self.remove_upper(&rec.id);
        tracing::debug!(sandbox = %rec.id, ?killed, ?unwired, ?unpoliced, total = ?t0.elapsed(), "sandbox destroyed");
    }

    /// Deletes a sandbox's upper subvolume (btrfs); its files go with the subvolume.
    fn remove_upper(&self, id: &str) {
        if let Some(sv) = self.storage.upper_subvolume(id)
            && let Err(e) = btrfs::remove_tree_or_subvolume(&sv)
        {
            tracing::warn!(sandbox = %id, "removing its upper: {e}");
        }
    }

    /// Removes cgroups, host interfaces and directories that no live sandbox owns (after a
    /// crash). `live` are the sandboxes that survived reconciliation.
    pub async fn sweep(&self, live: &[SandboxRecord]) {
        let ids: std::collections::HashSet<&str> = live.iter().map(|r| r.id.as_str()).collect();
        for name in self.cgroups.list() {
            if !ids.contains(name.as_str()) {
                tracing::info!("removing leaked cgroup {name}");
                let _ = self.cgroups.open(&name).destroy();
            }
        }
        if self.net.is_some() {
            let ifs: std::collections::HashSet<String> =
                live.iter().map(|r| net::host_ifname(r.slot)).collect();
            if let Ok(existing) = net::list_host_ifs().await {
                for name in existing.into_iter().filter(|n| !ifs.contains(n)) {
                    tracing::info!("removing leaked interface {name}");
                    let _ = net::destroy(&name).await;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.cfg.sandboxes_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot names are the daemon's own (CRIU's cache), not sandboxes.
                if !ids.contains(name.as_str()) && !name.starts_with('.') {
                    tracing::info!("removing leaked sandbox directory {name}");
                    remove_dir_in_background(entry.path());
                }
            }
        }
        if let Some(uppers) = self.storage.uppers_dir()
            && let Ok(entries) = std::fs::read_dir(uppers)
        {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !ids.contains(name.as_str()) {
                    tracing::info!("removing leaked sandbox upper {name}");
                    self.remove_upper(&name);
                }
            }
        }
    }

    /// The sandbox storage (btrfs subvolumes or plain directories).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Memory charged to the sandbox's cgroup, in bytes.
    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        self.cgroups.open(id).memory_usage()
    }

    /// The sandbox's writable overlay upper (what a snapshot copies).
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        match self.storage.upper_subvolume(id) {
            Some(sv) => sv.join("upper"),
            None => self.sandbox_dir(id).join("fs/upper"),
        }
    }

    /// The CRIU this backend runs.
    pub fn criu_binary(&self) -> PathBuf {
        super::criu::binary(self.cfg.linux.criu.as_deref())
    }

    /// CRIU's /run for dumps, and where restores keep its kernel-feature cache: on the
    /// sandboxes' tmpfs, so the cache outlives each run.
    fn criu_run_dir(&self) -> PathBuf {
        self.cfg.sandboxes_dir().join(".criu")
    }

    /// Where memory snapshot `snap` keeps its images.
    pub fn memory_dir(&self, snap: &str) -> PathBuf {
        self.cfg.state_dir.join("memory").join(snap)
    }

    /// Dumps the processes of sandbox `rec` (frozen by the caller) as memory snapshot `snap`;
    /// returns the bytes stored.
    pub fn dump_memory(
        &self,
        rec: &SandboxRecord,
        snap: &str,
        access_token: Option<String>,
    ) -> Result<u64> {
        let pid = rec.pid.ok_or_else(|| {
            Error::FailedPrecondition(format!("sandbox '{}' has no init", rec.id))
        })?;
        let freezer = self.cgroups.open(&rec.id).freezer_dir().ok_or_else(|| {
            Error::HostUnsupported("memory snapshots need a cgroup freezer".into())
        })?;
        super::memory::dump(&super::memory::DumpRequest {
            criu: &self.criu_binary(),
            pid,
            agent_socket: &self.agent_socket(&rec.id),
            agent_binary: &self.agent_binary,
            freezer,
            access_token,
            sandbox_id: &rec.id,
            boot_id_file: self.sandbox_dir(&rec.id).join("boot_id"),
            dir: self.memory_dir(snap),
            kdat_dir: self.criu_run_dir(),
        })
    }

    /// The envd access token the processes of memory snapshot `snap` hold.
    pub fn memory_access_token(&self, snap: &str) -> Option<String> {
        super::memory::read_info(&self.memory_dir(snap), &self.agent_binary)
            .ok()
            .and_then(|i| i.access_token)
    }

    /// Removes memory snapshot `snap`'s images (in the background).
    pub fn remove_memory(&self, snap: &str) {
        let dir = self.memory_dir(snap);
        if dir.exists() {
            remove_dir_in_background(dir);
        }
    }

    /// Freezes every process of the sandbox (cgroup freezer) and waits until it is frozen.
    pub fn freeze(&self, id: &str) -> Result<()> {
        self.cgroups.open(id).freeze()
    }

    /// Thaws a frozen sandbox and waits until it runs again.
    pub fn thaw(&self, id: &str) -> Result<()> {
        self.cgroups.open(id).thaw()
    }

    /// Like `destroy`, but the sandbox's directory is gone when this returns, so that the same
    /// id can start again at once (restore in place).
    pub async fn stop_for_restart(&self, rec: &SandboxRecord) -> Result<()> {
        let cg = self.cgroups.open(&rec.id);
        tokio::task::spawn_blocking(move || cg.destroy())
            .await
            .map_err(Error::internal)??;
        if self.net.is_some() {
            net::destroy(&net::host_ifname(rec.slot)).await?;
        }
        if let Some(sv) = self.storage.upper_subvolume(&rec.id) {
            btrfs::remove_tree_or_subvolume(&sv)?;
        }
        let dir = self.sandbox_dir(&rec.id);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        })
        .await
        .map_err(Error::internal)?
    }
    /// [`Self::freeze`] off the async threads (pause/resume).
    pub async fn freeze_async(&self, id: &str) -> Result<()> {
        let cg = self.cgroups.open(id);
        tokio::task::spawn_blocking(move || cg.freeze())
            .await
            .map_err(Error::internal)?
    }

    /// [`Self::thaw`] off the async threads (pause/resume).
    pub async fn thaw_async(&self, id: &str) -> Result<()> {
        let cg = self.cgroups.open(id);
        tokio::task::spawn_blocking(move || cg.thaw())
            .await
            .map_err(Error::internal)?
    }

    /// Page cache charged to the sandbox's cgroup, in bytes.
    pub fn memory_cache(&self, id: &str) -> Option<u64> {
        self.cgroups.open(id).memory_cache()
    }

    /// Whether the sandbox's cgroup freezer reports it frozen.
    pub fn frozen(&self, id: &str) -> bool {
        self.cgroups.open(id).frozen()
    }

    /// CPU time the sandbox has used, in nanoseconds.
    pub fn cpu_usage_ns(&self, id: &str) -> Option<u64> {
        self.cgroups.open(id).cpu_usage_ns()
    }

    /// Bytes (received, sent) by the sandbox: the host end of its veth counts them the other
    /// way round.
    pub fn network_bytes(&self, slot: u32) -> Option<(u64, u64)> {
        self.net.as_ref()?;
        let stats = std::path::Path::new("/sys/class/net")
            .join(net::host_ifname(slot))
            .join("statistics");
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(stats.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some((read("tx_bytes")?, read("rx_bytes")?))
    }
}

/// Environment of the agent and so of every process in the sandbox.
fn base_env(hostname: &str) -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOSTNAME".into(), hostname.into()),
        ("COPPICE_SANDBOX".into(), "1".into()),
    ]
}

/// Start time of a live process in clock ticks since boot (field 22 of /proc/<pid>/stat);
/// None for a process that is gone or a zombie (dead, waiting to be reaped by the host's init).
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Deletes a directory tree off the request path (a big upper can take a while).
fn remove_dir_in_background(dir: PathBuf) {
    std::thread::spawn(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(pid_start_time(me).is_some());
        assert_eq!(pid_start_time(me), pid_start_time(me));
        assert!(pid_start_time(i32::MAX).is_none());
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let pid = zombie.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(pid_start_time(pid).is_none(), "an unreaped child is dead");
        zombie.wait().unwrap();
    }
}
