//! The envd protocol that the in-sandbox agent serves and the daemon speaks.
//!
//! ARCHITECTURE decision 1: the agent is envd-compatible so the unmodified E2B SDKs can talk to
//! it through a plain reverse proxy, and the host's own tools use this same client. Only the
//! Connect protocol with the JSON codec is spoken (the SDKs never send binary protobuf).

pub mod auth;
pub mod client;
pub mod connect;
pub mod deadline;
pub mod filesystem;
#[cfg(target_os = "linux")]
pub mod netns_socket;
pub mod process;
pub mod time;
pub mod wire;

pub use client::AgentClient;
pub use connect::{Code, ConnectError};

/// Version advertised to E2B SDKs; every feature gate up to it must be honoured by the agent.
pub const ENVD_VERSION: &str = "0.6.13";
