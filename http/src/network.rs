//! Native API for network policy: `GET|PUT /api/v1/sandboxes/{id}/network` (body: the
//! `NetworkPolicy` JSON; answer: `{sandbox_id, policy}`).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use coppice_tools::network::NetworkPolicy;

use crate::{ApiError, AppState};

pub(crate) async fn get(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(t.network_policy(&id)?).into_response())
}

pub(crate) async fn set(
    State(t): AppState,
    Path(id): Path<String>,
    Json(policy): Json<NetworkPolicy>,
) -> Result<Response, ApiError> {
    Ok(Json(t.set_network_policy(&id, policy).await?).into_response())
}
