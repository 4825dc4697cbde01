//! Coppice's MCP surface: every tool of `coppice_tools::Tools` as an MCP tool (rmcp), served
//! over stdio (the `coppice-mcp` binary), over streamable HTTP at the daemon's `/mcp`, and
//! over a raw upgraded connection on the daemon's socket (`/mcp-stdio`, which is how
//! `coppice-mcp` joins a running daemon).
//!
//! This crate only adapts: argument structs with described fields, result structs with
//! output schemas, annotations, error text that says what to do next, the per-session
//! default sandbox, progress and cancellation. The capabilities live in the tools crate.

pub mod bridge;
mod browser_input_tools;
mod browser_tools;
mod code_tools;
mod command_tools;
mod explain;
mod file_tools;
pub mod http;
mod in_sandbox;
pub mod limits;
pub mod markdown;
pub mod network_tools;
mod progress;
pub mod resources;
mod sandbox_tools;
mod schema_formats;
pub mod server;
mod session;
mod snapshot_tools;
pub mod stdio;
mod terminal_tools;

pub use session::{CoppiceMcp, McpState, Mode};
