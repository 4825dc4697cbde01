//! Coppice runtime: the sandbox model and lifecycle behind every surface.
//!
//! Backends are plan + executor (ARCHITECTURE decision 2): pure functions turn a sandbox spec
//! into data (mount steps, cgroup writes, nft text) that is unit-tested everywhere, and a thin
//! executor runs it on the host.

pub mod accept;
pub mod backend;
pub mod clock;
pub mod config;
pub mod error;
pub mod expose;
pub mod fsutil;
pub mod ids;
pub mod limits;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod state;
pub mod templates;

#[cfg(target_os = "linux")]
pub mod linux;

pub use config::Config;
pub use error::{Error, Result};
pub use manager::Runtime;
