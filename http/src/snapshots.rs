//! Native routes for snapshots, forks, restore and lineage: thin adapters over
//! `coppice_tools::snapshots`. (The E2B routes map onto the same tool functions.)

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coppice_tools::Tools;
use coppice_tools::snapshots::{CreateSnapshot, ForkSandbox, RestoreSandbox};
use serde::Deserialize;

use crate::{ApiError, AppState};
use axum::Json;
use coppice_runtime::Error;

pub fn routes() -> Router<Arc<Tools>> {
    Router::new()
        .route("/api/v1/sandboxes/{id}/snapshots", post(create))
        .route("/api/v1/sandboxes/{id}/fork", post(fork_sandbox))
        .route("/api/v1/sandboxes/{id}/restore", post(restore))
        .route("/api/v1/snapshots", get(list))
        .route("/api/v1/snapshots/{id}", get(info).delete(delete))
        .route("/api/v1/snapshots/{id}/fork", post(fork_snapshot))
        .route("/api/v1/forks", post(fork))
        .route("/api/v1/lineage/{id}", get(lineage))
}

async fn create(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<CreateSnapshot>,
) -> Result<Response, ApiError> {
    let info = t.create_snapshot(&id, req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    sandbox_id: Option<String>,
}

async fn list(State(t): AppState, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    Ok(Json(t.list_snapshots(q.sandbox_id.as_deref())?).into_response())
}

async fn info(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(t.snapshot_info(&id)?).into_response())
}

async fn delete(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    t.delete_snapshot(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fork(State(t): AppState, Json(req): Json<ForkSandbox>) -> Result<Response, ApiError> {
    Ok(Json(t.fork_sandbox(req).await?).into_response())
}

async fn fork_sandbox(
    State(t): AppState,
    Path(id): Path<String>,
    Json(mut req): Json<ForkSandbox>,
) -> Result<Response, ApiError> {
    if req.snapshot_id.is_some() {
        return Err(Error::InvalidArgument(
            "snapshot_id does not go with /sandboxes/{id}/fork; use /snapshots/{id}/fork".into(),
        )
        .into());
    }
    req.sandbox_id = Some(id);
    Ok(Json(t.fork_sandbox(req).await?).into_response())
}

async fn fork_snapshot(
    State(t): AppState,
    Path(id): Path<String>,
    Json(mut req): Json<ForkSandbox>,
) -> Result<Response, ApiError> {
    if req.sandbox_id.is_some() {
        return Err(Error::InvalidArgument(
            "sandbox_id does not go with /snapshots/{id}/fork; use /sandboxes/{id}/fork".into(),
        )
        .into());
    }
    req.snapshot_id = Some(id);
    Ok(Json(t.fork_sandbox(req).await?).into_response())
}

async fn restore(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<RestoreSandbox>,
) -> Result<Response, ApiError> {
    Ok(Json(t.restore_sandbox(&id, req).await?).into_response())
}

async fn lineage(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(t.lineage(&id)?).into_response())
}
