//! Native routes for pause, resume and a sandbox's lifecycle events: thin adapters over
//! `coppice_tools::lifecycle`. (E2B's pause and connect map onto the same tool functions.)

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coppice_tools::Tools;
use coppice_tools::lifecycle::{PauseSandbox, ResumeSandbox};
use serde::Deserialize;

use crate::{ApiError, AppState};

pub fn routes() -> Router<Arc<Tools>> {
    Router::new()
        .route("/api/v1/sandboxes/{id}/pause", post(pause))
        .route("/api/v1/sandboxes/{id}/resume", post(resume))
        .route("/api/v1/sandboxes/{id}/events", get(events))
}

async fn pause(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<PauseSandbox>,
) -> Result<Response, ApiError> {
    Ok(Json(t.pause_sandbox(&id, req).await?).into_response())
}

async fn resume(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<ResumeSandbox>,
) -> Result<Response, ApiError> {
    Ok(Json(t.resume(&id, req).await?).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Unix milliseconds.
    since_ms: Option<i64>,
    limit: Option<u32>,
}

async fn events(
    State(t): AppState,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let events = t.sandbox_events(
        &id,
        q.since_ms.unwrap_or(0),
        q.limit.unwrap_or(1000).min(10_000),
    )?;
    Ok(Json(events).into_response())
}
