//! `filesystem.Filesystem`: to be implemented (owned by the filesystem-service work).

use std::sync::Arc;

use axum::Router;

use crate::state::AgentState;

#[derive(Default)]
pub struct Watchers {}

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
}
