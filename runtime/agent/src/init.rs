//! envd's `POST /init` (the host sets env vars and the access token when it hands out a
//! sandbox) and `GET /envs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::env::Env;

/// Body of envd's `POST /init`, sent by the host when it hands out a sandbox.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub access_token: Option<String>,
}

pub async fn post_init(State(env): State<Arc<Env>>, Json(req): Json<InitRequest>) -> StatusCode {
    if let Some(vars) = req.env_vars {
        env.vars.write().expect("env lock").extend(vars);
    }
    if let Some(token) = req.access_token {
        *env.access_token.write().expect("token lock") =
            Some(token).filter(|t| !t.is_empty()).map(Arc::from);
    }
    StatusCode::NO_CONTENT
}

pub async fn get_envs(State(env): State<Arc<Env>>) -> Json<BTreeMap<String, String>> {
    Json(env.env_snapshot())
}
