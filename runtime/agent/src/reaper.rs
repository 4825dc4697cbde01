//! Child reaping (PID 1 duty): to be implemented with the process service.

use std::sync::Arc;

use crate::state::AgentState;

pub fn start(_state: Arc<AgentState>) {}
