//! Sandbox lifecycle tools: create, list, info, kill, set_timeout; templates.

use std::collections::BTreeMap;
use std::time::Duration;

use coppice_runtime::model::{CreateRequest, Limits, SandboxInfo, TemplateInfo, parse_size};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Tools};

/// Create a sandbox. Sizes are strings like "512M"; timeouts are seconds. Doc comments are the
/// field descriptions of the MCP tool's input schema.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template to start from (the template list shows the installed ones); default: "default", a Debian
    /// system with the host's tools.
    #[serde(default)]
    pub template: Option<String>,
    /// Memory limit such as "512M" or "2G"; default 512M.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU quota in cores, e.g. 0.5 or 2; default 1.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads; default 256.
    #[serde(default)]
    pub pids: Option<u64>,
    /// What the sandbox's writable layer may hold, such as "2G"; default 10G. Writes past it
    /// fail with "Disk quota exceeded" inside; other sandboxes are not affected.
    #[serde(default)]
    pub disk: Option<String>,
    /// Seconds before the sandbox is killed unless extended with sandbox_set_timeout;
    /// default 300.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Environment variables set for every command in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels kept with the sandbox and shown by sandbox_list.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Network policy in force from the first instant; omitted: the default policy (internet
    /// allowed; the host, private ranges, other sandboxes and cloud metadata denied).
    /// Change it later with network_policy_set.
    #[serde(default)]
    pub network_policy: Option<coppice_runtime::policy::NetworkPolicy>,
    /// true: setuid programs (sudo, su) cannot raise privileges in this sandbox
    /// (no_new_privs); omitted: the daemon's setting (off, so `user` has passwordless sudo).
    #[serde(default)]
    pub no_new_privs: Option<bool>,
}

/// Set a sandbox's remaining lifetime.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// New lifetime in seconds, counted from now.
    pub timeout_secs: f64,
}

impl Tools {
    /// Creates a sandbox; sizes and timeouts are checked here.
    pub async fn create_sandbox(&self, req: CreateSandbox) -> Result<SandboxInfo> {
        let memory_bytes = size_arg(req.memory.as_deref())?;
        let disk_bytes = size_arg(req.disk.as_deref())?;
        let timeout = req.timeout_secs.map(secs).transpose()?;
        self.rt
            .create(CreateRequest {
                template: req.template,
                limits: Limits {
                    memory_bytes,
                    cpus: req.cpus,
                    pids: req.pids,
                    disk_bytes,
                },
                timeout,
                env: req.env,
                metadata: req.metadata,
                network_policy: req.network_policy,
                no_new_privs: req.no_new_privs,
            })
            .await
    }

    /// Live sandboxes (pooled and half-started ones not included).
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>> {
        self.rt.list()
    }

    /// One sandbox, or a tombstone error saying how it ended.
    pub fn sandbox_info(&self, id: &str) -> Result<SandboxInfo> {
        self.rt.info(id)
    }

    /// Kills a sandbox and removes its files.
    pub async fn kill_sandbox(&self, id: &str) -> Result<()> {
        self.rt.kill(id).await
    }

    /// Sets a sandbox's remaining lifetime, counted from now.
    pub fn set_timeout(&self, id: &str, req: SetTimeout) -> Result<SandboxInfo> {
        self.rt.set_timeout(id, secs(req.timeout_secs)?)
    }

    /// The installed templates.
    pub fn list_templates(&self) -> Result<Vec<TemplateInfo>> {
        self.rt.list_templates()
    }
}

/// A size argument such as "512M", in bytes.
pub(crate) fn size_arg(size: Option<&str>) -> Result<Option<u64>> {
    size.map(parse_size)
        .transpose()
        .map_err(Error::InvalidArgument)
}

pub(crate) fn secs(s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "timeout must be a positive number of seconds, got {s}"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Build a Debian template with debootstrap.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    /// Name of the new template.
    pub name: String,
    /// Debian packages installed on top of the base system.
    #[serde(default)]
    pub packages: Vec<String>,
    /// debootstrap suite, e.g. "bookworm"; default: the runtime's default suite.
    #[serde(default)]
    pub suite: Option<String>,
    /// Debian mirror URL; default: the host's apt source.
    #[serde(default)]
    pub mirror: Option<String>,
}

/// Progress of a template build: output lines, then the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// A line of the build's output.
    Progress {
        /// The line, without its newline.
        line: String,
    },
    /// The build finished.
    Done {
        /// The new template.
        template: TemplateInfo,
    },
    /// The build failed.
    Error {
        /// Why.
        message: String,
    },
}

impl Tools {
    /// Builds in a blocking thread; events arrive on the returned channel as they happen.
    pub fn build_template(
        &self,
        req: BuildTemplate,
    ) -> tokio::sync::mpsc::UnboundedReceiver<BuildEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = self.rt.clone();
        tokio::task::spawn_blocking(move || {
            let opts = coppice_runtime::templates::BuildOptions {
                suite: req.suite,
                mirror: req.mirror,
                ..Default::default()
            };
            let mut progress = |line: &str| {
                let _ = tx.send(BuildEvent::Progress {
                    line: line.to_string(),
                });
            };
            let result =
                rt.templates()
                    .build_debootstrap(&req.name, &req.packages, &opts, &mut progress);
            let _ = tx.send(match result {
                Ok(template) => BuildEvent::Done { template },
                Err(e) => BuildEvent::Error {
                    message: e.to_string(),
                },
            });
        });
        rx
    }
}

/// A sandbox as the tools report it to agents: its identity, lifetime, limits and addresses
/// (not its environment, which may hold secrets, nor host details such as its pid).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SandboxView {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Template it was started from.
    pub template: String,
    /// "running" while usable.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the sandbox is killed then unless extended.
    pub expires_at: String,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Process and thread limit.
    pub pids: Option<u64>,
    /// Free-form labels given at create.
    pub metadata: BTreeMap<String, String>,
    /// Address on the host bridge, when the sandbox has a network.
    pub ip: Option<String>,
    /// IPv6 address on the host bridge, when the host has IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// Sandbox ports reachable from the host through the daemon (network policy "expose").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed: Vec<coppice_runtime::expose::ExposedPort>,
    /// Host name inside the sandbox.
    pub hostname: String,
}

impl From<SandboxInfo> for SandboxView {
    fn from(i: SandboxInfo) -> Self {
        SandboxView {
            sandbox_id: i.id,
            template: i.template,
            state: i.state.as_str().into(),
            created_at: i.created_at,
            expires_at: i.expires_at,
            memory_bytes: i.limits.memory_bytes,
            cpus: i.limits.cpus,
            pids: i.limits.pids,
            metadata: i.metadata,
            ip: i.ip,
            ip6: i.ip6,
            exposed: i.exposed,
            hostname: i.hostname,
        }
    }
}
