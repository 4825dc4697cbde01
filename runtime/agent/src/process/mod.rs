//! `process.Process`: to be implemented (owned by the process-service work).

use std::sync::Arc;

use axum::Router;

use crate::state::AgentState;

#[derive(Default)]
pub struct Processes {}

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
}
