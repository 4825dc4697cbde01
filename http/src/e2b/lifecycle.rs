//! E2B lifecycle routes: connect (resumes a paused sandbox), pause, the deprecated resume,
//! metrics and logs.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coppice_runtime::Error;
use coppice_runtime::clock::rfc3339_ms;
use coppice_runtime::model::Resumed;
use coppice_runtime::model::SandboxState;
use coppice_runtime::model::{OnTimeout, PauseKind};
use coppice_tools::lifecycle::PauseSandbox;
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::error::E2bError;
use super::wire::{metric_json, optional_body, sandbox_json};
use coppice_runtime::ids::new_token;

type St = State<Arc<E2bState>>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConnectBody {
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: Option<bool>,
}

/// `connect`: 200 when it was running (its timeout extended if asked for more), 201 when it
/// was paused and is now resumed.
pub(super) async fn connect(
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
        Resumed::Thawed | Resumed::Restored => StatusCode::CREATED,
        Resumed::WasRunning => StatusCode::OK,
    };
    ensure_reachable(&s, &info.id).await?;
    Ok((status, Json(sandbox_json(&s, &info)?)).into_response())
}

/// A sandbox made by the native API or MCP has no access token, and E2B sandbox traffic
/// without one is refused: connecting gives it one, which the response carries.
async fn ensure_reachable(s: &E2bState, id: &str) -> Result<(), Error> {
    if s.tools.access_token(id)?.is_none() && !s.tools.open_traffic(id)? {
        s.tools.set_access_token(id, &new_token()).await?;
    }
    Ok(())
}

/// `SandboxPauseRequest`: what the pause keeps (`memory`, default true: a full pause).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PauseBody {
    memory: Option<bool>,
}

pub(super) async fn pause(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: PauseBody = optional_body(&raw)?;
    let kind = match b.memory {
        Some(false) => PauseKind::Filesystem,
        _ => PauseKind::Memory,
    };
    s.tools.pause_sandbox(&id, PauseSandbox { kind }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The deprecated `resume`: 409 when the sandbox is not paused.
pub(super) async fn resume(
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

#[derive(Debug, Default, Deserialize)]
pub(super) struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

/// Coppice samples on request (no history): the array holds the current sample when "now"
/// is inside the asked window.
pub(super) async fn metrics(
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
pub(super) struct ManyQuery {
    sandbox_ids: Option<String>,
}

pub(super) async fn metrics_many(
    State(s): St,
    Query(q): Query<ManyQuery>,
) -> Result<Response, E2bError> {
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
pub(super) struct LogsQuery {
    /// Unix milliseconds.
    start: Option<i64>,
    limit: Option<u32>,
}

/// The sandbox's lifecycle events (created, paused, resumed, ...) as log lines.
pub(super) async fn logs_v1(
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

pub(super) async fn logs_v2(
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
