//! Starting a sandbox from a template or a snapshot, with its access and what its timeout
//! does, as one call that leaves nothing behind when a step fails. E2B's `POST /sandboxes`
//! is this call; so may any surface be.

use std::collections::BTreeMap;

use coppice_runtime::ids::new_token;
use coppice_runtime::manager::snapshots::ForkOutcome;
use coppice_runtime::model::OnTimeout;
use coppice_runtime::model::SandboxInfo;
use coppice_runtime::policy::NetworkPolicy;
use coppice_runtime::state::ingress::Ingress;
use coppice_runtime::state::pause::PauseSettings;

use crate::sandboxes::CreateSandbox;
use crate::snapshots::ForkSandbox;
use crate::{Error, Result, Tools};

/// What to start and how.
#[derive(Debug, Clone, Default)]
pub struct LaunchSandbox {
    /// A template name or a snapshot id or name (a snapshot wins: one fork of it); none = the
    /// default template.
    pub from: Option<String>,
    /// Lifetime in seconds; default: the daemon's.
    pub timeout_secs: Option<f64>,
    /// Environment of every process in the sandbox.
    pub env: BTreeMap<String, String>,
    /// Free-form labels kept with the sandbox.
    pub metadata: BTreeMap<String, String>,
    /// None: the default policy, or for a snapshot the policy its sandbox had.
    pub network_policy: Option<NetworkPolicy>,
    /// Issue an access token its traffic must carry; false: its traffic is open.
    pub access_token: bool,
    /// What happens when the timeout passes: kill (default) or pause.
    pub on_timeout: OnTimeout,
    /// What a pause at the timeout keeps, and whether traffic resumes it (E2B's
    /// `autoPauseMemory`, `autoResume`).
    pub pause: PauseSettings,
    /// Requests to its own ports must carry a fresh traffic token (E2B's
    /// `allowPublicTraffic: false`); false: they are public.
    pub private_traffic: bool,
    /// The Host header its servers see, `${PORT}` standing for the port (E2B's
    /// `maskRequestHost`).
    pub mask_request_host: Option<String>,
}

impl Tools {
    /// Starts a sandbox as `req` says; on a failure after the start it is killed again.
    pub async fn launch_sandbox(&self, req: LaunchSandbox) -> Result<SandboxInfo> {
        let snapshot = match req.from.as_deref() {
            None => None,
            Some(from) => match self.snapshot_info(from) {
                Ok(i) => Some(i.snapshot_id),
                Err(Error::SnapshotNotFound(_)) => None,
                Err(e) => return Err(e),
            },
        };
        let (info, policy_after) = match snapshot {
            Some(snapshot_id) => {
                let info = self
                    .fork_one(snapshot_id, req.from.as_deref(), &req)
                    .await?;
                (info, req.network_policy)
            }
            None => {
                let info = self
                    .create_sandbox(CreateSandbox {
                        template: req.from.clone(),
                        timeout_secs: req.timeout_secs,
                        env: req.env,
                        metadata: req.metadata,
                        network_policy: req.network_policy,
                        ..Default::default()
                    })
                    .await?;
                (info, None)
            }
        };
        let setup = async {
            self.grant_access(&info.id, req.access_token).await?;
            if req.on_timeout != OnTimeout::default() {
                self.set_on_timeout(&info.id, req.on_timeout)?;
            }
            if req.pause != PauseSettings::default() {
                let settings = PauseSettings {
                    // A resume by traffic gives it the lifetime it was made with.
                    resume_timeout_secs: req.timeout_secs.map(|t| t.ceil() as u64),
                    ..req.pause
                };
                self.set_pause_settings(&info.id, &settings)?;
            }
            if req.private_traffic || req.mask_request_host.is_some() {
                let ingress = Ingress {
                    traffic_token: req.private_traffic.then(new_token),
                    mask_request_host: req.mask_request_host.clone(),
                };
                self.rt.set_ingress(&info.id, &ingress)?;
            }
            // A fork keeps its snapshot's policy unless the request names one.
            if let Some(p) = policy_after {
                self.set_network_policy(&info.id, p).await?;
            }
            Ok::<_, Error>(())
        };
        if let Err(e) = setup.await {
            let _ = self.kill_sandbox(&info.id).await;
            return Err(e);
        }
        Ok(info)
    }

    /// Gives a new sandbox a fresh access token its traffic must carry (`token`), or makes
    /// its traffic open.
    pub async fn grant_access(&self, id: &str, token: bool) -> Result<()> {
        match token {
            true => self.set_access_token(id, &new_token()).await,
            false => self.rt.set_open_traffic(id),
        }
    }

    async fn fork_one(
        &self,
        snapshot_id: String,
        asked: Option<&str>,
        req: &LaunchSandbox,
    ) -> Result<SandboxInfo> {
        let mut r = self
            .fork_sandbox(ForkSandbox {
                snapshot_id: Some(snapshot_id),
                count: Some(1),
                timeout_secs: req.timeout_secs,
                env: req.env.clone(),
                metadata: req.metadata.clone(),
                ..Default::default()
            })
            .await?;
        match r.forks.pop() {
            Some(ForkOutcome {
                sandbox: Some(info),
                ..
            }) => Ok(info),
            other => Err(Error::Internal(format!(
                "the sandbox from snapshot '{}' failed to start: {}",
                asked.unwrap_or_default(),
                other.and_then(|f| f.error).unwrap_or_default()
            ))),
        }
    }
}
