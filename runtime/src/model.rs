//! The sandbox model shared by every backend and surface.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits of one sandbox. `None` means the configured default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (RAM; swap is not granted on top).
    pub memory_bytes: Option<u64>,
    /// CPU quota in cores, e.g. 0.5 or 2.
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// What the sandbox's writable layer may hold, in bytes (enforced with btrfs storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// What a caller asks for when creating a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Template to start from; None: the configured default template.
    pub template: Option<String>,
    /// Resource limits; unset ones take the configured defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Lifetime before the reaper kills it; default from config (5 minutes).
    #[serde(default, with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// Environment variables every process of the sandbox gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Caller's key-value metadata, reported back and usable as a list filter.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Network policy in force from the start; None: the default policy.
    #[serde(default)]
    pub network_policy: Option<crate::policy::NetworkPolicy>,
    /// Set no_new_privs on the sandbox's processes (setuid sudo then cannot elevate);
    /// None: the daemon's `no_new_privs`.
    #[serde(default)]
    pub no_new_privs: Option<bool>,
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being set up (in a pool or for a request).
    Starting,
    /// Up, with its processes running.
    Running,
    /// Frozen: every process is stopped until it is resumed.
    Paused,
    /// Gone or not running (also what an unreadable stored state reads as).
    Stopped,
    /// Running, but its agent does not answer (stopped, hung): reported with the reason,
    /// never stored (the daemon's health check decides it afresh).
    Unhealthy,
}

impl SandboxState {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
            SandboxState::Unhealthy => "unhealthy",
        }
    }

    /// The state named `s` (as [`Self::as_str`] writes it), or None.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => SandboxState::Starting,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "stopped" => SandboxState::Stopped,
            "unhealthy" => SandboxState::Unhealthy,
            _ => return None,
        })
    }
}

/// What every surface reports about a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// Name of the template it was started from.
    pub template: String,
    /// Where it is in its life.
    pub state: SandboxState,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; when the reaper will kill it.
    pub expires_at: String,
    /// Its limits as in force (defaults filled in).
    pub limits: Limits,
    /// Caller's key-value metadata.
    pub metadata: BTreeMap<String, String>,
    /// Environment variables every process gets.
    pub env: BTreeMap<String, String>,
    /// Address of the sandbox on the host bridge.
    pub ip: Option<String>,
    /// IPv6 address of the sandbox on the host bridge (when the host has IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// Ports of the sandbox reachable from outside through the daemon (policy `expose`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed: Vec<crate::expose::ExposedPort>,
    /// Host pid of the sandbox's init (the agent).
    pub pid: Option<i32>,
    /// Hostname inside the sandbox (`sbx-` and the start of its id).
    pub hostname: String,
    /// Why the sandbox is `unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_reason: Option<String>,
}

/// A template as every surface reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// Template name, as sandboxes name it.
    pub name: String,
    /// How it was made: "host" (from the host's system directories) or "debootstrap".
    pub source: String,
    /// Read-only layers, top first (directories on the host).
    pub layers: Vec<std::path::PathBuf>,
    /// Bytes its layers hold on disk.
    pub size_bytes: u64,
    /// RFC 3339.
    pub created_at: String,
    /// Debian packages asked for at build time.
    #[serde(default)]
    pub packages: Vec<String>,
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(Duration::from_secs_f64))
    }
}

/// Parses sizes like `512M`, `1G`, `2048K`, `1048576` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let mult: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("unknown size unit in '{s}' (use K, M, G)")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: '{s}'"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("size must be positive: '{s}'"));
    }
    Ok((n * mult as f64) as u64)
}

/// Bytes of the tmpfs that holds a sandbox's /tmp and /dev/shm: the configured size, but at
/// most half the memory limit, since its pages count against that limit and cannot be
/// reclaimed (a full tmpfs at the limit would leave the OOM killer only the agent).
pub fn memory_tmpfs_bytes(configured: &str, memory_limit: Option<u64>) -> u64 {
    let configured = parse_size(configured).unwrap_or(256 << 20);
    match memory_limit {
        Some(limit) => configured.min(limit / 2).max(1 << 20),
        None => configured,
    }
}

/// One resource sample of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxMetrics {
    /// Unix milliseconds of the sample.
    pub at_ms: i64,
    /// CPU cores the sandbox may use (its quota rounded up; at least 1).
    pub cpu_count: u32,
    /// CPU use since the previous sample (or since creation), percent of `cpu_count` cores.
    pub cpu_used_pct: f64,
    /// Memory charged to the sandbox now, in bytes.
    pub mem_used: u64,
    /// Its memory limit in bytes (0: none).
    pub mem_total: u64,
    /// Of `mem_used`, page cache, in bytes.
    pub mem_cache: u64,
    /// Bytes in the sandbox's writable layer.
    pub disk_used: u64,
    /// Size of the filesystem holding it.
    pub disk_total: u64,
}

/// What `resume` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resumed {
    /// It was paused in memory and its processes were thawed.
    Thawed,
    /// It was paused on disk: its processes came back from its checkpoint (a memory pause),
    /// or it booted afresh on its kept files (a filesystem pause).
    Restored,
    /// It was already running (its timeout may have been extended).
    WasRunning,
}

/// What a pause keeps (docs/decisions/0013-durable-pause.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PauseKind {
    /// Processes and memory (E2B's "full" pause): frozen in memory and, on hosts with CRIU,
    /// checkpointed to disk so that the pause survives a restart of the daemon or the host.
    #[default]
    Memory,
    /// Files only: the processes stop at once; a resume boots the sandbox afresh on its files.
    Filesystem,
}

impl PauseKind {
    /// The name stored and shown: "memory" or "filesystem".
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Memory => "memory",
            PauseKind::Filesystem => "filesystem",
        }
    }
}

/// What happens when a sandbox's timeout passes (E2B's `autoPause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// The reaper kills the sandbox.
    #[default]
    Kill,
    /// The reaper pauses the sandbox; it can be resumed later.
    Pause,
}

impl OnTimeout {
    /// The value stored in `sandbox_lifecycle.on_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Kill => "kill",
            OnTimeout::Pause => "pause",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_stays_below_the_memory_limit() {
        assert_eq!(memory_tmpfs_bytes("256m", Some(512 << 20)), 256 << 20);
        assert_eq!(memory_tmpfs_bytes("256m", Some(256 << 20)), 128 << 20);
        assert_eq!(memory_tmpfs_bytes("1g", Some(4 << 30)), 1 << 30);
        assert_eq!(memory_tmpfs_bytes("256m", None), 256 << 20);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1M").is_err());
    }
}
