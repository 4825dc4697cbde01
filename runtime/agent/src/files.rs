//! `GET`/`POST /files`: to be implemented (owned by the filesystem-service work).

use std::sync::Arc;

use axum::Router;

use crate::state::AgentState;

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
}
