//! `/api/v1/sandboxes/{id}/terminals`: terminals as objects (open, list, info, resize, input,
//! read, share, kill), thin over `coppice_tools::terminals`. The WebSocket is terminal_ws.rs.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coppice_tools::Tools;
use coppice_tools::terminals::{OpenTerminal, ReadTerminal, Role, SendToTerminal};
use serde::Deserialize;

use crate::{ApiError, AppState};

/// The terminal routes (the WebSocket and the page included).
pub(crate) fn routes() -> Router<Arc<Tools>> {
    Router::new()
        .route("/api/v1/sandboxes/{id}/terminals", post(open).get(list))
        .route(
            "/api/v1/sandboxes/{id}/terminals/{tid}",
            get(info).delete(kill),
        )
        .route(
            "/api/v1/sandboxes/{id}/terminals/{tid}/resize",
            post(resize),
        )
        .route("/api/v1/sandboxes/{id}/terminals/{tid}/input", post(input))
        .route("/api/v1/sandboxes/{id}/terminals/{tid}/screen", get(read))
        .route("/api/v1/sandboxes/{id}/terminals/{tid}/share", post(share))
        .route(
            "/api/v1/sandboxes/{id}/terminals/{tid}/ws",
            get(crate::terminal_ws::attach),
        )
        .route("/terminals/{tid}", get(crate::terminal_page::page))
        .route("/terminals/assets/{name}", get(crate::terminal_page::asset))
}

async fn open(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<OpenTerminal>,
) -> Result<Response, ApiError> {
    let info = t.open_terminal(&id, req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(t.list_terminals(&id).await?).into_response())
}

async fn info(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(t.terminal_info(&id, &tid)?).into_response())
}

async fn kill(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    t.kill_terminal(&id, &tid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    cols: u16,
    rows: u16,
}

async fn resize(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
    Json(r): Json<Resize>,
) -> Result<Response, ApiError> {
    Ok(Json(t.resize_terminal(&id, &tid, r.cols, r.rows)?).into_response())
}

async fn input(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
    Json(req): Json<SendToTerminal>,
) -> Result<Response, ApiError> {
    t.send_to_terminal(&id, &tid, req).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn read(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
    Query(req): Query<ReadTerminal>,
) -> Result<Response, ApiError> {
    Ok(Json(t.read_terminal(&id, &tid, req)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Share {
    #[serde(default)]
    role: Option<Role>,
}

async fn share(
    State(t): AppState,
    Path((id, tid)): Path<(String, String)>,
    body: Option<Json<Share>>,
) -> Result<Response, ApiError> {
    let role = body.and_then(|b| b.0.role).unwrap_or(Role::Viewer);
    Ok(Json(t.share_terminal(&id, &tid, role)?).into_response())
}
