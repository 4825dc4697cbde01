//! Daemon configuration: an embedded default that works with no file, overridable by a TOML
//! file and by flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Limits;

/// The daemon's settings; every field has an embedded default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where templates, sandboxes and the state database live.
    pub state_dir: PathBuf,
    /// Template used when a request names none.
    pub default_template: String,
    /// Warm sandboxes kept ready per template (0 turns pooling off).
    pub pool_size: usize,
    /// Templates that get a pool; empty = just the default template.
    pub pool_templates: Vec<String>,
    /// Sandbox lifetime when a request gives none, in seconds.
    pub default_timeout_secs: u64,
    /// Upper bound on any sandbox's lifetime, in seconds.
    pub max_timeout_secs: u64,
    /// Limits applied when a request gives none (disk: 10 GiB for the writable layer).
    pub default_limits: Limits,
    /// The most one sandbox may ask for (a request above gets a 400 naming it). Unset
    /// memory or cpus: the host's RAM and CPU count.
    pub max_limits: Limits,
    /// Kept from sandboxes for the host: all sandboxes together may use the host's RAM less
    /// this (their parent cgroup's limit).
    pub host_reserve_memory: String,
    /// At most this many sandboxes at once (pooled ones not counted); past it creates and
    /// forks get 429.
    pub max_sandboxes: usize,
    /// Ceiling on the sum of all sandboxes' memory limits ("64G"); unset: none beyond the
    /// sandboxes' parent cgroup, which keeps `host_reserve_memory` for the host anyway.
    pub max_committed_memory: Option<String>,
    /// Free space kept on the state filesystem (and on the btrfs storage in it): below it,
    /// new sandboxes are refused (503) instead of filling the disk.
    pub disk_reserve: String,
    /// Size of the tmpfs that holds a sandbox's /tmp and /dev/shm together (counted against
    /// its memory limit, and never more than half of it).
    pub tmpfs_size: String,
    /// Give sandboxes a network (veth on a host bridge with NAT egress).
    pub network: bool,
    /// The sandboxes' IPv6 network as the bridge's address and prefix length (sandbox
    /// addresses follow their slot, like the IPv4 ones); empty: IPv4 only. A host without
    /// IPv6 runs IPv4 only whatever this says.
    pub network_ipv6: String,
    /// Address the daemon listens on for sandbox ports a policy exposes (loopback by
    /// default; 0.0.0.0 makes them reachable from other machines).
    pub expose_bind: String,
    /// Set no_new_privs in sandboxes (setuid binaries such as sudo then cannot elevate).
    /// Off by default so `user` has the passwordless sudo E2B templates promise; the seccomp
    /// profile is installed either way (docs/decisions/0006-sudo-without-no-new-privs.md).
    pub no_new_privs: bool,
    /// How long the daemon waits for a sandbox's agent to start answering a call (after the
    /// request body is sent) before answering 504; a stopped agent fails at once.
    pub agent_deadline_secs: u64,
    /// How long a memory-paused sandbox stays frozen in memory (a resume is then a thaw)
    /// before its processes are stopped and a resume restores its on-disk checkpoint
    /// (docs/decisions/0013-durable-pause.md). Only where the pause has a checkpoint (CRIU).
    pub pause_in_memory_secs: u64,
    /// `[warm]`: templates whose new sandboxes resume a checkpoint taken after this Python
    /// code ran in their default kernel, e.g. `default = "import pandas, numpy"`
    /// (docs/decisions/0014-warm-checkpoints.md). Needs CRIU.
    pub warm: BTreeMap<String, String>,
    /// Nameserver the sandboxes' DNS resolver forwards to ("10.255.255.53" or
    /// "198.51.100.251:53"); unset: the first nameserver of the host's /etc/resolv.conf.
    pub dns_upstream: Option<String>,
    /// `[linux]`: settings of the Linux backend.
    pub linux: LinuxConfig,
    /// `[listener]`: where the daemon listens and what its TCP listener asks for.
    pub listener: ListenerConfig,
    /// `[e2b]`: the E2B-compatible API.
    pub e2b: E2bConfig,
    /// `[terminals]`: collaborative terminals.
    pub terminals: TerminalsConfig,
}

/// `[terminals]`: collaborative terminals (docs/terminals.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalsConfig {
    /// Output each terminal keeps for replay on attach and for reconnects, in bytes (the
    /// ring grows as output comes, up to this).
    pub ring_bytes: usize,
}

impl Default for TerminalsConfig {
    fn default() -> Self {
        Self {
            ring_bytes: 1 << 20,
        }
    }
}

/// `[linux]`: how the Linux backend isolates and stores sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinuxConfig {
    /// Install the default seccomp profile in sandboxes.
    pub seccomp: bool,
    /// Open files per process in sandboxes (RLIMIT_NOFILE, soft and hard).
    pub sandbox_nofile: u64,
    /// First host uid/gid of the ranges given to sandboxes (65536 ids each).
    pub id_base: u32,
    /// Path of the coppice-agent binary; default: next to the running executable (for the agent,
    /// its static musl build from the same cargo target dir when that is at least as new).
    pub agent_binary: Option<PathBuf>,
    /// Path of the coppice-spawn helper; default: next to the running executable.
    pub spawn_binary: Option<PathBuf>,
    /// Where sandbox uppers and snapshots live: "auto" (btrfs subvolumes, on the state
    /// directory's btrfs or a sparse loop-mounted image in it; plain directories when btrfs is
    /// unavailable), "btrfs" (or refuse to start), "plain" (directories; snapshots copy).
    pub storage: StorageMode,
    /// Size of the sparse btrfs image made when the state directory is not on btrfs, in GiB
    /// (only what sandboxes write takes host disk).
    pub btrfs_image_gib: u64,
    /// CRIU (memory snapshots): a `criu` executable of version 4.1 or newer; default: the
    /// private tree `scripts/install-criu.sh` makes (`/opt/coppice-criu/criu`), else `criu` on
    /// PATH.
    pub criu: Option<PathBuf>,
}

/// Where `scripts/install-criu.sh` puts CRIU.
pub const DEFAULT_CRIU: &str = "/opt/coppice-criu/criu";

impl Default for LinuxConfig {
    fn default() -> Self {
        Self {
            seccomp: true,
            sandbox_nofile: 4096,
            id_base: 0x1000_0000,
            agent_binary: None,
            spawn_binary: None,
            storage: StorageMode::default(),
            btrfs_image_gib: 64,
            criu: None,
        }
    }
}

/// `[listener]`: the daemon's TCP listener and the CLI's control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// HTTP listen address (loopback by default).
    pub listen: String,
    /// Unix control socket used by the CLI.
    pub socket: PathBuf,
    /// Bearer token for every route of the TCP listener (MCP and the API); required when
    /// `listen` is not loopback.
    pub token: Option<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            socket: PathBuf::from("/run/coppice/coppice.sock"),
            token: None,
        }
    }
}

/// `[e2b]`: the E2B-compatible control plane and sandbox traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2bConfig {
    /// API keys the E2B control plane accepts in `X-API-Key`. With none (and `no_auth` off)
    /// every E2B control-plane call is refused.
    pub api_keys: Vec<String>,
    /// Accept any E2B API key (local development only; refused on a non-loopback listener).
    pub no_auth: bool,
    /// Domain for E2B host-based sandbox routing (`{port}-{id}.{domain}`), also returned to
    /// the SDKs as the sandbox domain. Unset: any `{port}-{id}.<host>` is routed and no
    /// domain is returned (the SDKs then need `E2B_SANDBOX_URL`).
    pub domain: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/coppice"),
            default_template: "default".into(),
            pool_size: 2,
            pool_templates: Vec::new(),
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            default_limits: Limits {
                memory_bytes: Some(512 << 20),
                cpus: Some(1.0),
                pids: Some(256),
                disk_bytes: Some(10 << 30),
            },
            max_limits: Limits {
                memory_bytes: None,
                cpus: None,
                pids: Some(32768),
                disk_bytes: None,
            },
            host_reserve_memory: "1G".into(),
            disk_reserve: "2G".into(),
            max_sandboxes: 4096,
            max_committed_memory: None,
            tmpfs_size: "256m".into(),
            network: true,
            network_ipv6: "fd88::1/64".into(),
            expose_bind: "127.0.0.1".into(),
            no_new_privs: false,
            agent_deadline_secs: 30,
            pause_in_memory_secs: 600,
            warm: BTreeMap::new(),
            dns_upstream: None,
            linux: LinuxConfig::default(),
            listener: ListenerConfig::default(),
            e2b: E2bConfig::default(),
            terminals: TerminalsConfig::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidArgument(format!("reading config {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("config {}: {e}", path.display())))
    }

    /// Where helper binary `name` (coppice-agent, coppice-spawn) is.
    pub fn helper_binary(&self, name: &str) -> PathBuf {
        let explicit = match name {
            "coppice-agent" => self.linux.agent_binary.clone(),
            "coppice-spawn" => self.linux.spawn_binary.clone(),
            _ => None,
        };
        if let Some(path) = explicit {
            return path;
        }
        let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        else {
            return PathBuf::from(name);
        };
        let sibling = dir.join(name);
        if name == "coppice-agent"
            && let Some(fresh) = static_agent_beside(&dir, &sibling)
        {
            return fresh;
        }
        sibling
    }

    /// Where each sandbox's directory lives.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }

    /// The templates that get a warm pool.
    pub fn pooled_templates(&self) -> Vec<String> {
        if self.pool_templates.is_empty() {
            vec![self.default_template.clone()]
        } else {
            self.pool_templates.clone()
        }
    }
}

/// The agent starts once per sandbox; built static for musl it skips the dynamic loader and
/// glibc's CPU probing, about a millisecond of CPU per start on a VM (decision 0002).
/// `scripts/build.sh` builds it into `<target>/x86_64-unknown-linux-musl/release` beside the
/// workspace's `<target>/release`. It is used only when it is at least as new as the glibc
/// build next to the daemon, so a `cargo build` that changed the agent never runs a stale one.
fn static_agent_beside(release_dir: &Path, glibc_agent: &Path) -> Option<PathBuf> {
    let profile = release_dir.file_name()?;
    let candidate = release_dir
        .parent()?
        .join("x86_64-unknown-linux-musl")
        .join(profile)
        .join("coppice-agent");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = modified(&candidate)?;
    match modified(glibc_agent) {
        Some(glibc) if glibc > built => None,
        _ => Some(candidate),
    }
}

/// How sandbox uppers are stored (the Linux backend's choice; other backends read what
/// applies to them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// btrfs subvolumes when possible (the state directory's own btrfs, else a loop-mounted
    /// image in it), plain directories otherwise.
    #[default]
    Auto,
    /// btrfs subvolumes or refuse to start.
    Btrfs,
    /// Plain directories; snapshots copy the upper (`cp -a`).
    Plain,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_keep_defaults() {
        let cfg: Config =
            toml::from_str("pool_size = 0\n[listener]\nlisten = \"0.0.0.0:9\"\n").unwrap();
        assert_eq!(cfg.pool_size, 0);
        assert_eq!(cfg.listener.listen, "0.0.0.0:9");
        assert_eq!(cfg.listener.socket, ListenerConfig::default().socket);
        assert_eq!(cfg.default_template, "default");
        assert!(
            toml::from_str::<Config>("pool_sise = 1").is_err(),
            "typos are errors"
        );
        assert!(
            toml::from_str::<Config>("[e2b]\napi_key = [\"k\"]").is_err(),
            "in sections too"
        );
    }

    #[test]
    fn the_static_agent_is_used_only_when_not_older() {
        let target = tempfile::tempdir().unwrap();
        let release = target.path().join("release");
        let musl = target.path().join("x86_64-unknown-linux-musl/release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&musl).unwrap();
        let glibc = release.join("coppice-agent");
        let static_agent = musl.join("coppice-agent");
        let touch = |p: &Path, secs: u64| {
            let f = std::fs::File::create(p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };

        assert_eq!(static_agent_beside(&release, &glibc), None, "none built");
        touch(&glibc, 2_000);
        touch(&static_agent, 1_000);
        assert_eq!(static_agent_beside(&release, &glibc), None, "stale");
        touch(&static_agent, 3_000);
        assert_eq!(
            static_agent_beside(&release, &glibc),
            Some(static_agent.clone())
        );
        std::fs::remove_file(&glibc).unwrap();
        assert_eq!(
            static_agent_beside(&release, &glibc),
            Some(static_agent),
            "only the static one"
        );
    }
}
