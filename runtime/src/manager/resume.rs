//! What a sandbox resumed from a memory snapshot needs from the host before it is handed out:
//! its agent forgets the token of the sandbox it was dumped from and reconnects its kernels.

use super::Runtime;
use crate::error::{Error, Result};
use crate::state::SandboxRecord;

impl Runtime {
    /// A resumed agent still holds the access token of the sandbox it was dumped from: it is
    /// cleared (with that token), so the new sandbox starts without one, as a fresh one does.
    pub(super) async fn forget_resumed_token(&self, rec: &SandboxRecord, snap: &str) -> Result<()> {
        let Some(old) = self.backend.memory_access_token(snap) else {
            return Ok(());
        };
        let req = http::Request::post("/init")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(r#"{"accessToken":""}"#))
            .map_err(Error::internal)?;
        let resp = self
            .bounded_client(&rec.id, rec.pid)
            .with_access_token(Some(old))
            .send(req)
            .await?;
        if !resp.status().is_success() {
            return Err(Error::Internal(format!(
                "the resumed agent refused its new access token: {}",
                resp.status()
            )));
        }
        Ok(())
    }

    /// Tells a resumed agent to reconnect its code kernels (their TCP connections came back
    /// closed; the kernels themselves run on with their state).
    pub(super) async fn reconnect_resumed_kernels(&self, rec: &SandboxRecord) -> Result<()> {
        let req = http::Request::post("/contexts/reconnect")
            .header(http::header::HOST, "agent")
            .body(coppice_envd::client::full_body(""))
            .map_err(Error::internal)?;
        let resp = self.bounded_client(&rec.id, rec.pid).send(req).await?;
        if !resp.status().is_success() {
            return Err(Error::Internal(format!(
                "the resumed agent could not reconnect its kernels: {}",
                resp.status()
            )));
        }
        Ok(())
    }
}
