//! The tool layer: each capability as a typed request and response with exactly one
//! implementation. MCP, the HTTP API (native and E2B) and the CLI are thin adapters over it.

pub mod access;
mod agent_json;
pub mod browser;
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
pub mod terminals;

use std::sync::Arc;

use coppice_runtime::Runtime;

/// Entry point to every tool; cheap to clone.
#[derive(Clone)]
pub struct Tools {
    rt: Arc<Runtime>,
    /// Background processes (commands_start) whose output this layer buffers.
    registry: Arc<commands::Registry>,
    /// Terminals this daemon brokers.
    terminals: Arc<terminals::Registry>,
    /// Secret the terminals' share tokens derive from.
    terminal_secret: Arc<str>,
    /// Replay ring size of new terminals.
    terminal_ring_bytes: usize,
    /// The sandboxes' browsers this daemon drives.
    browsers: Arc<browser::Registry>,
}

impl Tools {
    /// The tool layer over a runtime.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self {
            rt,
            registry: Default::default(),
            terminals: Default::default(),
            terminal_secret: coppice_runtime::ids::new_api_token().into(),
            terminal_ring_bytes: terminals::DEFAULT_RING_BYTES,
            browsers: Default::default(),
        }
    }

    /// Derives terminal share tokens from `secret` (the daemon's API token, so links survive a
    /// restart and die with a rotated token) and gives new terminals rings of `ring_bytes`.
    pub fn with_terminals(mut self, secret: &str, ring_bytes: usize) -> Self {
        self.terminal_secret = secret.into();
        self.terminal_ring_bytes = ring_bytes.max(4096);
        self
    }
}

pub use coppice_runtime::{Error, Result};
