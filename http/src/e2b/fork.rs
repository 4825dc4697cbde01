//! E2B `POST /sandboxes/{id}/fork`: 1 to 20 forks of a sandbox, each with its own access token.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coppice_runtime::Error;
use coppice_runtime::model::SandboxInfo;
use coppice_tools::snapshots::ForkSandbox;
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::error::{E2bError, bad};
use super::wire::{optional_body, sandbox_json};

/// E2B's fork count range (the SDK checks it too).
const MAX_E2B_FORKS: u32 = 20;

type St = State<Arc<E2bState>>;

#[derive(Debug, Default, Deserialize)]
struct ForkBody {
    timeout: Option<u64>,
    count: Option<u32>,
}

/// A fork's `Sandbox` JSON, the same as create's: a fresh envd access token when asked for
/// (the SDK sends it as `X-Access-Token`). On failure the fork is killed.
pub(super) async fn finish_fork(
    s: &E2bState,
    info: &SandboxInfo,
    secure: bool,
) -> Result<Value, Error> {
    let setup = async {
        s.tools.grant_access(&info.id, secure).await?;
        sandbox_json(s, info)
    };
    match setup.await {
        Ok(mut v) => {
            v["alias"] = json!(info.template);
            Ok(v)
        }
        Err(e) => {
            let _ = s.tools.kill_sandbox(&info.id).await;
            Err(e)
        }
    }
}

pub(super) async fn fork(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: ForkBody = optional_body(&raw)?;
    if b.count.is_some_and(|c| !(1..=MAX_E2B_FORKS).contains(&c)) {
        return Err(bad(format!("count must be between 1 and {MAX_E2B_FORKS}")));
    }
    if b.timeout == Some(0) {
        return Err(bad("timeout must be at least 1 second"));
    }
    // Forks are secured like their source: a token when the source has one.
    let secure = s.tools.access_token(&id)?.is_some();
    let result = s
        .tools
        .fork_sandbox(ForkSandbox {
            sandbox_id: Some(id),
            count: b.count,
            timeout_secs: b.timeout.map(|t| t as f64),
            ..Default::default()
        })
        .await?;
    let mut out = Vec::with_capacity(result.forks.len());
    for f in &result.forks {
        let item = match (&f.sandbox, &f.error) {
            (Some(info), _) => match finish_fork(&s, info, secure).await {
                Ok(v) => json!({ "sandbox": v }),
                Err(e) => {
                    let E2bError(code, message) = e.into();
                    json!({ "error": { "code": code.as_u16(), "message": message } })
                }
            },
            (None, err) => json!({ "error": {
                "code": 500,
                "message": err.clone().unwrap_or_else(|| "the fork failed to start".into()),
            }}),
        };
        out.push(item);
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}
