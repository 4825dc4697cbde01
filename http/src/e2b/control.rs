//! The E2B control plane: v1 and v2 routes of the SDKs in use (reference §1), over the tool
//! layer. Lifecycle routes are in [`super::lifecycle`];
//! snapshots, fork and network updates in [`super::snapshots`], [`super::fork`], [`super::network`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use coppice_runtime::clock::parse_rfc3339_ms;
use coppice_runtime::model::SandboxState;
use coppice_runtime::model::{OnTimeout, PauseKind};
use coppice_runtime::state::pause::PauseSettings;
use coppice_tools::launch::LaunchSandbox;
use coppice_tools::listing::ListSandboxes;
use coppice_tools::sandboxes::SetTimeout;
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::error::{E2bError, bad};
use super::network::E2bNetwork;
use super::wire::{listed_json, sandbox_json, state_str};
use super::{fork, lifecycle, network, snapshots};

type St = State<Arc<E2bState>>;

/// Template names the SDKs use by default; both are the daemon's default template.
const DEFAULT_ALIASES: [&str; 2] = ["base", "code-interpreter-v1"];

pub(super) fn router(state: Arc<E2bState>) -> axum::Router {
    Router::new()
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/metrics", get(lifecycle::metrics_many))
        .route("/sandboxes/{id}", get(get_info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(lifecycle::connect))
        .route("/v2/sandboxes/{id}/connect", post(lifecycle::connect))
        .route("/sandboxes/{id}/pause", post(lifecycle::pause))
        .route("/sandboxes/{id}/resume", post(lifecycle::resume))
        .route("/sandboxes/{id}/metrics", get(lifecycle::metrics))
        .route("/sandboxes/{id}/logs", get(lifecycle::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(lifecycle::logs_v2))
        .route(
            "/sandboxes/{id}/snapshots",
            post(snapshots::create_snapshot),
        )
        .route("/snapshots", get(snapshots::list_snapshots))
        .route("/templates/{id}", delete(snapshots::delete_snapshot))
        .route("/sandboxes/{id}/fork", post(fork::fork))
        .route("/sandboxes/{id}/network", put(network::update_network))
        .route_layer(middleware::from_fn_with_state(state.clone(), api_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_request))
        .fallback(not_routed)
        .with_state(state)
}

/// Unknown paths. Under the E2B prefixes (template builds, volumes, teams, ...)
/// the answer is E2B's JSON error, which the SDKs parse into an exception; a bare 404 body
/// would break their JSON parsing instead.
async fn not_routed(uri: axum::http::Uri) -> Response {
    let p = uri.path();
    let e2b = [
        "/sandboxes",
        "/v2/",
        "/v3/",
        "/snapshots",
        "/templates",
        "/volumes",
        "/teams",
    ]
    .iter()
    .any(|prefix| p.starts_with(prefix));
    if e2b {
        E2bError(
            StatusCode::NOT_FOUND,
            format!("{p}: this E2B API route is not supported by this Coppice daemon"),
        )
        .into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Counts each request by method, route pattern and status for `/metrics` (refusals too).
async fn count_request(State(s): St, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    s.tools
        .telemetry()
        .e2b_request(&method, &route, resp.status().as_u16());
    resp
}

/// `X-API-Key` against the configured keys (header names are case-insensitive on the wire).
async fn api_key(State(s): St, req: Request, next: Next) -> Response {
    if s.opts.no_auth {
        return next.run(req).await;
    }
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    let ok = given.is_some_and(|g| {
        s.opts
            .api_keys
            .iter()
            .any(|k| coppice_envd::auth::constant_time_eq(k.as_bytes(), g.as_bytes()))
    });
    if ok {
        return next.run(req).await;
    }
    let msg = if s.opts.api_keys.is_empty() {
        "no E2B API keys are configured on this Coppice daemon: set [e2b] api_keys in its config \
         or start it with --e2b-api-key"
    } else if given.is_none() {
        "missing X-API-Key header: set E2B_API_KEY to one of the daemon's [e2b] api_keys"
    } else {
        "invalid API key: set E2B_API_KEY to one of the daemon's [e2b] api_keys"
    };
    E2bError(StatusCode::UNAUTHORIZED, msg.into()).into_response()
}

/// `NewSandbox` (v1) and `NewSandboxV2`: every field but `templateID` optional; fields this
/// server cannot honour are refused rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: bool,
    /// What a pause at the timeout keeps: true (default) memory, false files only.
    auto_pause_memory: Option<bool>,
    /// `{"enabled": bool}`: traffic to it while paused resumes it.
    auto_resume: Option<Value>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    /// v1 only; default true (an access token is issued).
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<E2bNetwork>,
    mcp: Option<Value>,
    volume_mounts: Option<Vec<Value>>,
}

async fn create_v1(
    s: St,
    body: Result<Json<NewSandbox>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, E2bError> {
    create(s, body?.0).await
}

async fn create_v2(
    s: St,
    body: Result<Json<NewSandbox>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, E2bError> {
    create(s, body?.0).await
}

async fn create(State(s): St, req: NewSandbox) -> Result<Response, E2bError> {
    if req.template_id.is_empty() {
        return Err(bad("templateID is required"));
    }
    // Only an explicit choice becomes a policy; otherwise the daemon's default (or, for a
    // snapshot, the source's) stays.
    let network_policy = match (&req.network, req.allow_internet_access) {
        (None, None) => None,
        (Some(n), aia) => Some(n.policy(aia)?),
        (None, aia) => Some(E2bNetwork::default().policy(aia)?),
    };
    let (private_traffic, mask_request_host) = match &req.network {
        Some(n) => n.ingress()?,
        None => (false, None),
    };
    let auto_resume = match &req.auto_resume {
        None | Some(Value::Null) => false,
        Some(a) => a
            .get("enabled")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("autoResume must be an object {\"enabled\": true|false}"))?,
    };
    let keeps_memory = req.auto_pause_memory.unwrap_or(true);
    // E2B's own rules: traffic can only wake a sandbox whose memory was kept.
    if auto_resume && !req.auto_pause {
        return Err(bad(
            "autoResume needs autoPause: only a sandbox paused at its timeout can be resumed by traffic",
        ));
    }
    if auto_resume && !keeps_memory {
        return Err(bad(
            "autoResume cannot be combined with autoPauseMemory false: a filesystem-only pause \
             must be resumed explicitly with Sandbox.connect",
        ));
    }
    if req.mcp.as_ref().is_some_and(|m| !m.is_null()) {
        return Err(bad(
            "the E2B MCP gateway is not supported (Coppice serves MCP at /mcp)",
        ));
    }
    if req.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(bad("volume mounts are not supported"));
    }
    if req.timeout == Some(0) {
        return Err(bad("timeout must be at least 1 second"));
    }
    let is_alias = DEFAULT_ALIASES.contains(&req.template_id.as_str());
    let info = s
        .tools
        .launch_sandbox(LaunchSandbox {
            // A snapshot id or name in templateID is the SDK's `Sandbox.create(snapshot_id)`.
            from: (!is_alias).then(|| req.template_id.clone()),
            timeout_secs: req.timeout.map(|t| t as f64),
            env: req.env_vars.unwrap_or_default(),
            metadata: req.metadata.unwrap_or_default(),
            network_policy,
            access_token: req.secure.unwrap_or(true),
            on_timeout: match req.auto_pause {
                true => OnTimeout::Pause,
                false => OnTimeout::Kill,
            },
            pause: PauseSettings {
                auto_resume,
                timeout_pause: if keeps_memory {
                    PauseKind::Memory
                } else {
                    PauseKind::Filesystem
                },
                resume_timeout_secs: None,
            },
            private_traffic,
            mask_request_host,
        })
        .await?;
    let mut body = sandbox_json(&s, &info)?;
    body["alias"] = json!(req.template_id);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn get_info(State(s): St, Path(id): Path<String>) -> Result<Response, E2bError> {
    let info = s.tools.sandbox_info(&id)?;
    let mut v = listed_json(&info);
    if let Some(token) = s.tools.access_token(&id)? {
        v["envdAccessToken"] = json!(token);
    }
    v["allowInternetAccess"] = json!(info.ip.is_some());
    v["domain"] = json!(s.opts.domain);
    let on_timeout = s.tools.on_timeout(&id)?;
    let auto_resume = s.tools.pause_settings(&id)?.auto_resume;
    v["lifecycle"] = json!({ "autoResume": auto_resume, "onTimeout": on_timeout.as_str() });
    Ok(Json(v).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    /// `k=v&k2=v2`, url-encoded once more.
    metadata: Option<String>,
    /// `running,paused`.
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    template: Option<String>,
    order: Option<String>,
    /// RFC 3339, any offset.
    started_after: Option<String>,
}

async fn list_v1(s: St, Query(q): Query<ListQuery>) -> Result<Response, E2bError> {
    list(s, q, false).await
}

async fn list_v2(s: St, Query(q): Query<ListQuery>) -> Result<Response, E2bError> {
    list(s, q, true).await
}

async fn list(State(s): St, q: ListQuery, paged: bool) -> Result<Response, E2bError> {
    let wanted_meta: Vec<(String, String)> = match q.metadata.as_deref() {
        Some(m) if !m.is_empty() => serde_urlencoded::from_str(m).map_err(|e| {
            bad(format!(
                "metadata filter must be k=v pairs joined by '&': {e}"
            ))
        })?,
        _ => Vec::new(),
    };
    let states: Vec<&str> = match q.state.as_deref() {
        Some(st) if !st.is_empty() => st.split(',').map(str::trim).collect(),
        _ => vec!["running", "paused"],
    };
    if let Some(bad_state) = states.iter().find(|s| !["running", "paused"].contains(s)) {
        return Err(bad(format!(
            "unknown state '{bad_state}' (use running, paused)"
        )));
    }
    let started_after = match q.started_after.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(
            parse_rfc3339_ms(t)
                .ok_or_else(|| bad(format!("startedAfter must be an RFC 3339 time, not '{t}'")))?,
        ),
        None => None,
    };
    // Newest first unless asked otherwise, as E2B lists.
    let desc = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(bad(format!("order must be asc or desc, not '{o}'"))),
    };
    // E2B's two states: paused, and running for every other.
    let states = [
        SandboxState::Starting,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Stopped,
        SandboxState::Unhealthy,
    ]
    .into_iter()
    .filter(|st| states.contains(&state_str(*st)))
    .collect();
    let page = s.tools.list_sandbox_page(&ListSandboxes {
        states: Some(states),
        metadata: wanted_meta,
        template: q.template,
        started_after_ms: started_after,
        newest_first: desc,
        limit: paged.then(|| q.limit.unwrap_or(100)),
        cursor: q.next_token,
    })?;
    let items: Vec<Value> = page.sandboxes.iter().map(listed_json).collect();
    let mut resp = Json(items).into_response();
    if let Some(v) = page
        .next_cursor
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

async fn kill(State(s): St, Path(id): Path<String>) -> Result<Response, E2bError> {
    s.tools.kill_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: u64,
}

async fn set_timeout(
    State(s): St,
    Path(id): Path<String>,
    body: Result<Json<TimeoutBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, E2bError> {
    let Json(b) = body?;
    // 0 ends the running time at once, as on E2B: what the timeout does happens now.
    if b.timeout == 0 {
        s.tools.end_running_time(&id).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    s.tools.set_timeout(
        &id,
        SetTimeout {
            timeout_secs: b.timeout as f64,
        },
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
