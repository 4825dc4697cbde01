//! One call to a sandbox's agent with a JSON body and answer, for the tools whose agent routes
//! are plain HTTP (code contexts, the browser): the request, its whole answer, the answer
//! parsed, and an error answer mapped by the caller.

use http_body_util::BodyExt;

use crate::{Error, Result, Tools};

impl Tools {
    /// Sends `method path` with `body` (JSON) to the sandbox's agent; the answer streams.
    pub(crate) async fn agent_request(
        &self,
        id: &str,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let agent = self.rt.agent(id)?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(body.unwrap_or_default()))
            .map_err(Error::internal)?;
        Ok(agent.send(req).await?)
    }

    /// As [`Tools::agent_request`], the answer read whole and parsed (None: an empty answer);
    /// a non-2xx answer becomes `on_error(status, headers, body)`.
    pub(crate) async fn agent_json<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        on_error: impl FnOnce(http::StatusCode, &http::HeaderMap, &[u8]) -> Error,
    ) -> Result<Option<T>> {
        let resp = self.agent_request(id, method, path, body).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Unavailable(format!("reading the agent's answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(on_error(status, &headers, &bytes));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::internal(format!("bad answer from the agent: {e}")))
    }
}
