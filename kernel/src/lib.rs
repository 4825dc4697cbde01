//! coppice-kernel: code execution contexts over the Jupyter messaging protocol.
//!
//! - [`wire`]: the E2B code-interpreter wire format (`/execute` NDJSON lines, `/contexts`),
//!   always built; the host-side tool layer needs only this.
//! - with the `client` feature (default): [`kernel`] talks to one real kernel process over
//!   ZeroMQ (via `jupyter-zmq-client`, pure Rust, no libzmq) and [`contexts`] owns a sandbox's
//!   contexts. It runs inside the sandbox, in coppice-agent, which supplies a [`kernel::Launcher`]
//!   so that kernels are spawned and reaped by PID 1 as the sandbox user.

mod error;
pub mod wire;

pub use error::Error;

#[cfg(feature = "client")]
pub mod contexts;
#[cfg(feature = "client")]
pub mod kernel;

#[cfg(feature = "client")]
pub use contexts::Contexts;
