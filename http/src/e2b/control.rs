//! The E2B control plane: v1 and v2 routes of the SDKs in use (reference §1), over the tool
//! layer. Snapshots, fork and network updates are in [`super::snapshots`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use coppice_runtime::Error;
use coppice_runtime::clock::{parse_rfc3339_ms, rfc3339_ms};
use coppice_runtime::manager::snapshots::ForkOutcome;
use coppice_runtime::manager::{Resumed, SandboxMetrics};
use coppice_runtime::model::{SandboxInfo, SandboxState};
use coppice_runtime::state::OnTimeout;
use coppice_tools::sandboxes::{CreateSandbox, SetTimeout};
use coppice_tools::snapshots::ForkSandbox;
use serde::Deserialize;
use serde_json::{Value, json};

use super::snapshots::{self, E2bNetwork};
use super::{E2bState, ENVD_VERSION};

type St = State<Arc<E2bState>>;

/// Template names the SDKs use by default; both are the daemon's default template.
const DEFAULT_ALIASES: [&str; 2] = ["base", "code-interpreter-v1"];

pub(super) fn router(state: Arc<E2bState>) -> axum::Router {
    Router::new()
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/metrics", get(metrics_many))
        .route("/sandboxes/{id}", get(get_info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/logs", get(logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs_v2))
        .route(
            "/sandboxes/{id}/snapshots",
            post(snapshots::create_snapshot),
        )
        .route("/snapshots", get(snapshots::list_snapshots))
        .route("/templates/{id}", delete(snapshots::delete_snapshot))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/network", put(snapshots::update_network))
        .route_layer(middleware::from_fn_with_state(state.clone(), api_key))
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

/// An error in E2B's shape: `{"code": <status>, "message": "..."}`.
#[derive(Debug)]
pub(super) struct E2bError(pub StatusCode, pub String);

impl From<Error> for E2bError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::SandboxNotFound(_)
            | Error::SandboxEnded { .. }
            | Error::TemplateNotFound(_)
            | Error::SnapshotNotFound(_) => StatusCode::NOT_FOUND,
            // E2B answers 400 for a snapshot kind not enabled (memory snapshots without CRIU).
            Error::InvalidArgument(_) | Error::HostUnsupported(_) => StatusCode::BAD_REQUEST,
            Error::AlreadyExists(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            // E2B's answer past a concurrency limit; the SDKs raise RateLimitException.
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            // Never 503 for these: the SDKs retry 502/503/504 with backoff.
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        E2bError(status, e.to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.0.as_u16(), "message": self.1 });
        (self.0, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for E2bError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        E2bError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

pub(super) fn bad(msg: impl Into<String>) -> E2bError {
    E2bError(StatusCode::BAD_REQUEST, msg.into())
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
        "no E2B API keys are configured on this Coppice daemon: set e2b_api_keys in its config \
         or start it with --e2b-api-key"
    } else if given.is_none() {
        "missing X-API-Key header: set E2B_API_KEY to one of the daemon's e2b_api_keys"
    } else {
        "invalid API key: set E2B_API_KEY to one of the daemon's e2b_api_keys"
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
    if req
        .auto_resume
        .as_ref()
        .is_some_and(|a| a.get("enabled").and_then(Value::as_bool) == Some(true))
    {
        return Err(bad(
            "autoResume is not supported: resume with Sandbox.connect",
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
    // A snapshot id or name in templateID is the SDK's `Sandbox.create(snapshot_id)`: one fork
    // of that snapshot.
    let snapshot = if is_alias {
        None
    } else {
        match s.tools.snapshot_info(&req.template_id) {
            Ok(i) => Some(i.snapshot_id),
            Err(Error::SnapshotNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    let env = req.env_vars.unwrap_or_default();
    let metadata = req.metadata.unwrap_or_default();
    let timeout_secs = req.timeout.map(|t| t as f64);
    let (info, fork_policy) = match snapshot {
        Some(snapshot_id) => {
            let mut r = s
                .tools
                .fork_sandbox(ForkSandbox {
                    snapshot_id: Some(snapshot_id),
                    count: Some(1),
                    timeout_secs,
                    env,
                    metadata,
                    ..Default::default()
                })
                .await?;
            match r.forks.pop() {
                Some(ForkOutcome {
                    sandbox: Some(info),
                    ..
                }) => (info, network_policy),
                other => {
                    let why = other.and_then(|f| f.error).unwrap_or_default();
                    return Err(E2bError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "the sandbox from snapshot '{}' failed to start: {why}",
                            req.template_id
                        ),
                    ));
                }
            }
        }
        None => {
            let info = s
                .tools
                .create_sandbox(CreateSandbox {
                    template: (!is_alias).then(|| req.template_id.clone()),
                    timeout_secs,
                    env,
                    metadata,
                    network_policy,
                    ..Default::default()
                })
                .await?;
            (info, None)
        }
    };
    let secure = req.secure.unwrap_or(true);
    let setup = async {
        if secure {
            s.tools.set_access_token(&info.id, &new_token()).await?;
        } else {
            s.tools.runtime().set_open_traffic(&info.id)?;
        }
        if req.auto_pause {
            s.tools.set_on_timeout(&info.id, OnTimeout::Pause)?;
        }
        // A fork keeps its snapshot's policy unless the request names one.
        if let Some(p) = fork_policy {
            s.tools.set_network_policy(&info.id, p).await?;
        }
        Ok::<_, Error>(())
    };
    if let Err(e) = setup.await {
        let _ = s.tools.kill_sandbox(&info.id).await;
        return Err(e.into());
    }
    let mut body = sandbox_json(&s, &info)?;
    body["alias"] = json!(req.template_id);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty_json),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

pub(super) use coppice_runtime::ids::new_token;

/// The `Sandbox` object of create/connect/resume.
pub(super) fn sandbox_json(s: &E2bState, info: &SandboxInfo) -> Result<Value, Error> {
    let mut v = json!({
        "templateID": info.template,
        "sandboxID": info.id,
        "clientID": "coppice",
        "envdVersion": ENVD_VERSION,
        "trafficAccessToken": null,
        "domain": s.opts.domain,
    });
    if let Some(token) = s.tools.access_token(&info.id)? {
        v["envdAccessToken"] = json!(token);
    }
    Ok(v)
}

fn state_str(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Paused => "paused",
        _ => "running",
    }
}

/// `ListedSandbox` (and the common part of `SandboxDetail`).
fn listed_json(info: &SandboxInfo) -> Value {
    json!({
        "templateID": info.template,
        "sandboxID": info.id,
        "clientID": "coppice",
        "startedAt": info.created_at,
        "endAt": info.expires_at,
        "cpuCount": info.limits.cpus.map_or(1, |c| (c.ceil() as i64).max(1)),
        "memoryMB": info.limits.memory_bytes.map_or(0, |m| m >> 20),
        "diskSizeMB": 0,
        "state": state_str(info.state),
        "envdVersion": ENVD_VERSION,
        "metadata": info.metadata,
    })
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
    v["lifecycle"] = json!({ "autoResume": false, "onTimeout": on_timeout.as_str() });
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
    let limit = q.limit.unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit must be between 1 and 100"));
    }
    let started_after = match q.started_after.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(
            parse_rfc3339_ms(t)
                .ok_or_else(|| bad(format!("startedAfter must be an RFC 3339 time, not '{t}'")))?,
        ),
        None => None,
    };
    let desc = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(bad(format!("order must be asc or desc, not '{o}'"))),
    };
    let mut all: Vec<SandboxInfo> = s
        .tools
        .list_sandboxes()?
        .into_iter()
        .filter(|i| states.contains(&state_str(i.state)))
        .filter(|i| {
            wanted_meta
                .iter()
                .all(|(k, v)| i.metadata.get(k).is_some_and(|x| x == v))
        })
        .filter(|i| q.template.as_ref().is_none_or(|t| &i.template == t))
        .filter(|i| {
            started_after
                .is_none_or(|after| parse_rfc3339_ms(&i.created_at).is_some_and(|at| at >= after))
        })
        .collect();
    // Pages in a stable order with a cursor (not an offset), so sandboxes ending between
    // pages do not shift the rest.
    all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    if desc {
        all.reverse();
    }
    if !paged {
        let items: Vec<Value> = all.iter().map(listed_json).collect();
        return Ok(Json(items).into_response());
    }
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            let (at, id) = token
                .split_once('_')
                .ok_or_else(|| bad("invalid nextToken"))?;
            all.iter()
                .position(|i| {
                    let key = (i.created_at.as_str(), i.id.as_str());
                    if desc { key < (at, id) } else { key > (at, id) }
                })
                .unwrap_or(all.len())
        }
        None => 0,
    };
    let page: Vec<&SandboxInfo> = all.iter().skip(start).take(limit).collect();
    let mut resp = Json(page.iter().map(|i| listed_json(i)).collect::<Vec<_>>()).into_response();
    if start + page.len() < all.len()
        && let Some(last) = page.last()
        && let Ok(v) = HeaderValue::from_str(&format!("{}_{}", last.created_at, last.id))
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
    if b.timeout == 0 {
        return Err(bad("timeout must be at least 1 second"));
    }
    s.tools.set_timeout(
        &id,
        SetTimeout {
            timeout_secs: b.timeout as f64,
        },
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectBody {
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: Option<bool>,
}

/// Optional JSON body: absent or empty means all defaults.
pub(super) fn optional_body<T: for<'de> Deserialize<'de> + Default>(
    raw: &[u8],
) -> Result<T, E2bError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// `connect`: 200 when it was running (its timeout extended if asked for more), 201 when it
/// was paused and is now resumed.
async fn connect(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: ConnectBody = optional_body(&raw)?;
    let (info, what) = s
        .tools
        .resume_sandbox(&id, b.timeout.map(Duration::from_secs))
        .await?;
    let status = match what {
        Resumed::Thawed => StatusCode::CREATED,
        Resumed::WasRunning => StatusCode::OK,
    };
    ensure_reachable(&s, &info.id).await?;
    Ok((status, Json(sandbox_json(&s, &info)?)).into_response())
}

/// A sandbox made by the native API or MCP has no access token, and E2B sandbox traffic
/// without one is refused: connecting gives it one, which the response carries.
async fn ensure_reachable(s: &E2bState, id: &str) -> Result<(), Error> {
    if s.tools.access_token(id)?.is_none() && !s.tools.runtime().open_traffic(id)? {
        s.tools.set_access_token(id, &new_token()).await?;
    }
    Ok(())
}

async fn pause(State(s): St, Path(id): Path<String>) -> Result<Response, E2bError> {
    s.tools.pause_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The deprecated `resume`: 409 when the sandbox is not paused.
async fn resume(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: ConnectBody = optional_body(&raw)?;
    let info = s.tools.sandbox_info(&id)?;
    if info.state != SandboxState::Paused {
        return Err(E2bError(
            StatusCode::CONFLICT,
            format!("sandbox '{id}' is not paused"),
        ));
    }
    if let Some(p) = b.auto_pause {
        s.tools
            .set_on_timeout(&id, if p { OnTimeout::Pause } else { OnTimeout::Kill })?;
    }
    let (info, _) = s
        .tools
        .resume_sandbox(&id, b.timeout.map(Duration::from_secs))
        .await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&s, &info)?)).into_response())
}

fn metric_json(m: &SandboxMetrics) -> Value {
    json!({
        "timestamp": rfc3339_ms(m.at_ms),
        "timestampUnix": m.at_ms / 1000,
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    })
}

#[derive(Debug, Default, Deserialize)]
struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

/// Coppice samples on request (no history): the array holds the current sample when "now"
/// is inside the asked window.
async fn metrics(
    State(s): St,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Response, E2bError> {
    let m = s.tools.sandbox_metrics(&id).await?;
    let now = m.at_ms / 1000;
    let inside = q.start.is_none_or(|t| t <= now) && q.end.is_none_or(|t| t >= now);
    let items: Vec<Value> = if inside {
        vec![metric_json(&m)]
    } else {
        vec![]
    };
    Ok(Json(items).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct ManyQuery {
    sandbox_ids: Option<String>,
}

async fn metrics_many(State(s): St, Query(q): Query<ManyQuery>) -> Result<Response, E2bError> {
    let mut out = serde_json::Map::new();
    for id in q
        .sandbox_ids
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        match s.tools.sandbox_metrics(id).await {
            Ok(m) => {
                out.insert(id.to_string(), metric_json(&m));
            }
            Err(Error::SandboxNotFound(_) | Error::SandboxEnded { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(json!({ "sandboxes": out })).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct LogsQuery {
    /// Unix milliseconds.
    start: Option<i64>,
    limit: Option<u32>,
}

/// The sandbox's lifecycle events (created, paused, resumed, ...) as log lines.
async fn logs_v1(
    State(s): St,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, E2bError> {
    let events = s.tools.sandbox_events(
        &id,
        q.start.unwrap_or(0),
        q.limit.unwrap_or(1000).min(10_000),
    )?;
    let line = |e: &coppice_tools::lifecycle::SandboxEvent| {
        if e.detail.is_empty() {
            format!("sandbox {}", e.kind)
        } else {
            format!("sandbox {}: {}", e.kind, e.detail)
        }
    };
    let logs: Vec<Value> = events
        .iter()
        .map(|e| json!({ "timestamp": rfc3339_ms(e.at_ms), "line": line(e) }))
        .collect();
    let entries: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({ "timestamp": rfc3339_ms(e.at_ms), "level": "info", "message": line(e),
                    "fields": { "event": e.kind } })
        })
        .collect();
    Ok(Json(json!({ "logs": logs, "logEntries": entries })).into_response())
}

async fn logs_v2(
    State(s): St,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, E2bError> {
    let events = s
        .tools
        .sandbox_events(&id, 0, q.limit.unwrap_or(1000).min(10_000))?;
    let logs: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({ "timestamp": rfc3339_ms(e.at_ms), "level": "info",
                    "message": if e.detail.is_empty() { format!("sandbox {}", e.kind) } else { format!("sandbox {}: {}", e.kind, e.detail) },
                    "fields": { "event": e.kind } })
        })
        .collect();
    Ok(Json(json!({ "logs": logs })).into_response())
}
