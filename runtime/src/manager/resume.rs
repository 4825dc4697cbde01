//! What a sandbox resumed from a memory snapshot needs from the host before it is handed out:
//! its agent trades the token it held when dumped for the sandbox's own, and reconnects its
//! kernels.

use super::Runtime;
use crate::error::{Error, Result};
use crate::state::SandboxRecord;

impl Runtime {
    /// A resumed agent still holds the access token it had when dumped: the host replaces it
    /// (with it) by `token`, the sandbox's own, or clears it (a fork starts without one, as a
    /// fresh sandbox does); then reconnects its kernels.
    pub(super) async fn hand_over_resumed(
        &self,
        rec: &SandboxRecord,
        snap: &str,
        token: Option<&str>,
    ) -> Result<()> {
        let old = self.backend.memory_access_token(snap);
        if old.is_some() || token.is_some() {
            self.retoken_resumed(rec, old, token.unwrap_or_default())
                .await?;
        }
        self.reconnect_resumed_kernels(rec).await
    }

    async fn retoken_resumed(
        &self,
        rec: &SandboxRecord,
        old: Option<String>,
        token: &str,
    ) -> Result<()> {
        let body = serde_json::json!({ "accessToken": token }).to_string();
        let req = http::Request::post("/init")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(body))
            .map_err(Error::internal)?;
        let resp = self
            .bounded_client(&rec.id, rec.pid)
            .with_access_token(old)
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
    async fn reconnect_resumed_kernels(&self, rec: &SandboxRecord) -> Result<()> {
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
