//! The E2B-compatible surface on the daemon's TCP listener, so that the unmodified E2B SDKs
//! work with `E2B_API_URL` and `E2B_SANDBOX_URL` both pointing at the daemon
//! (`shared/reference/e2b-protocol.md`):
//!
//! - [`control`]: the control plane (`/sandboxes`, `/v2/sandboxes`, ...), `X-API-Key` auth,
//!   errors as `{"code": <int>, "message": ...}`;
//! - [`proxy`]: sandbox traffic on the same port, routed by `E2b-Sandbox-Id` /
//!   `E2b-Sandbox-Port` or by Host `{port}-{id}.{domain}`: 49983 (envd) and 49999 (code
//!   interpreter) to the sandbox's agent, any other port to that port inside the sandbox;
//!   signed `/files` URLs, which name no sandbox, by the sandbox whose token signed them
//!   ([`signed_files`]).
//!
//! Handlers translate to the tool layer and back; the agent enforces the per-sandbox
//! `envdAccessToken` itself.

mod control;
mod error;
mod fork;
mod lifecycle;
mod network;
mod proxy;
mod signed_files;
mod snapshots;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use coppice_tools::Tools;

/// The envd version the SDKs are told. They never ask the agent; they gate features on this
/// (`e2b/envd/versions.py`, `src/envd/versions.ts`). 0.6.4 is the newest gate in both SDKs
/// and the agent implements every feature up to it: stdin and close_stdin, the default user,
/// octet-stream and gzip uploads, file metadata, watch events with entries, watching network
/// mounts.
pub const ENVD_VERSION: &str = "0.6.4";

/// envd's port and the code interpreter's (both served by the sandbox's agent).
pub const ENVD_PORT: u16 = 49983;
/// The port E2B's code-interpreter SDKs reach the kernel server on (`{port}-{id}` hosts).
pub const CODE_INTERPRETER_PORT: u16 = 49999;

/// How the E2B surface authenticates and names sandboxes.
#[derive(Debug, Clone, Default)]
pub struct E2bOptions {
    /// Accepted `X-API-Key` values.
    pub api_keys: Vec<String>,
    /// Accept any key (explicit local development mode).
    pub no_auth: bool,
    /// Domain for host-based routing and for the `domain` field returned to the SDKs.
    pub domain: Option<String>,
}

impl E2bOptions {
    /// From the daemon config; `loopback` says whether the listener is loopback-only (the
    /// no-auth mode is refused anywhere else).
    pub fn from_config(
        cfg: &coppice_runtime::config::E2bConfig,
        loopback: bool,
    ) -> anyhow::Result<Self> {
        let api_keys: Vec<String> = cfg
            .api_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if cfg.no_auth && !loopback {
            anyhow::bail!(
                "[e2b] no_auth accepts any E2B API key and is only allowed on a loopback \
                 listener; configure [e2b] api_keys (or --e2b-api-key) instead"
            );
        }
        Ok(Self {
            api_keys,
            no_auth: cfg.no_auth,
            domain: cfg.domain.clone().filter(|d| !d.is_empty()),
        })
    }
}

pub(crate) struct E2bState {
    pub tools: Tools,
    pub opts: E2bOptions,
}

/// Adds the E2B surface to the daemon's TCP app: the control-plane routes (guarded by API
/// keys, not by the listener's bearer token) and, in front of everything, the sandbox-traffic
/// router (guarded by each sandbox's access token in its agent).
pub fn mount(app: Router, tools: Tools, opts: E2bOptions) -> Router {
    let state = Arc::new(E2bState { tools, opts });
    app.merge(control::router(state.clone()))
        .layer(middleware::from_fn_with_state(state, proxy::route))
}
