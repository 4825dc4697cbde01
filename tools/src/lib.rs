//! The tool layer: each capability as a typed request and response with exactly one
//! implementation. MCP, the HTTP API (native and E2B) and the CLI are thin adapters over it.

pub mod access;
pub mod code;
pub mod commands;
pub mod files;
pub mod launch;
mod lease;
pub mod lifecycle;
pub mod listing;
pub mod network;
pub mod sandboxes;
pub mod snapshots;

use std::sync::Arc;

use coppice_runtime::Runtime;

/// Entry point to every tool; cheap to clone.
#[derive(Clone)]
pub struct Tools {
    rt: Arc<Runtime>,
    /// Background processes (commands_start) whose output this layer buffers.
    registry: Arc<commands::Registry>,
}

impl Tools {
    /// The tool layer over a runtime.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self {
            rt,
            registry: Default::default(),
        }
    }
}

pub use coppice_runtime::{Error, Result};
