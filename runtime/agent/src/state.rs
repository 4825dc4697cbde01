//! Sandbox-wide agent state: environment for every process, default user, access token.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::filesystem::Watchers;
use crate::process::Processes;

pub struct AgentState {
    /// Env vars every process gets (create-time `envVars`), below per-call envs.
    pub env: RwLock<BTreeMap<String, String>>,
    pub default_user: String,
    /// When set, every route but /health and /files requires `X-Access-Token`.
    /// Shared, not copied, by the auth guard on every request.
    pub access_token: RwLock<Option<Arc<str>>>,
    pub processes: Processes,
    pub watchers: Watchers,
}

impl AgentState {
    pub fn new(default_user: String) -> Arc<Self> {
        Arc::new(Self {
            env: RwLock::new(BTreeMap::new()),
            default_user,
            access_token: RwLock::new(None),
            processes: Processes::default(),
            watchers: Watchers::default(),
        })
    }

    pub fn env_snapshot(&self) -> BTreeMap<String, String> {
        self.env.read().expect("env lock").clone()
    }
}

/// Body of envd's `POST /init`, sent by the host when it hands out a sandbox.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub access_token: Option<String>,
}

pub async fn post_init(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<InitRequest>,
) -> StatusCode {
    if let Some(vars) = req.env_vars {
        state.env.write().expect("env lock").extend(vars);
    }
    if let Some(token) = req.access_token {
        *state.access_token.write().expect("token lock") =
            Some(token).filter(|t| !t.is_empty()).map(Arc::from);
    }
    StatusCode::NO_CONTENT
}

pub async fn get_envs(State(state): State<Arc<AgentState>>) -> Json<BTreeMap<String, String>> {
    Json(state.env_snapshot())
}
