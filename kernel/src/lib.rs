//! coppice-kernel: code execution contexts over the Jupyter messaging protocol.
//!
//! - [`wire`]: the E2B code-interpreter wire format (`/execute` NDJSON lines, `/contexts`),
//!   always built; the host-side tool layer needs only this.
//! - with the `client` feature (default): [`kernel`] talks to one real kernel process over
//!   ZeroMQ (via `jupyter-zmq-client`, pure Rust, no libzmq) and [`contexts`] owns a sandbox's
//!   contexts. It runs inside the sandbox, in coppice-agent, which supplies a [`kernel::Launcher`]
//!   so that kernels are spawned and reaped by PID 1 as the sandbox user.

pub mod wire;

#[cfg(feature = "client")]
pub mod contexts;
#[cfg(feature = "client")]
pub mod kernel;

#[cfg(feature = "client")]
pub use contexts::Contexts;

/// Why a code-context request failed. Surfaces map these once: HTTP 400 for
/// `BadRequest`/`UnknownLanguage`, 404 for `NotFound`, 500 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or contradicts itself (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// E2B's exact text, which its SDK shows as NotFoundException.
    #[error("Context {0} not found")]
    NotFound(String),
    /// No kernel is installed for the language asked for (HTTP 400).
    #[error("{0}")]
    UnknownLanguage(String),
    /// The kernel could not be started.
    #[error("{0}")]
    Start(String),
    /// The kernel process died (or had to be killed).
    #[error("{0}")]
    Died(String),
}

impl Error {
    /// The kind sent in [`wire::ERROR_KIND_HEADER`].
    pub fn kind(&self) -> &'static str {
        use wire::error_kinds as k;
        match self {
            Error::BadRequest(_) => k::BAD_REQUEST,
            Error::NotFound(_) => k::CONTEXT_NOT_FOUND,
            Error::UnknownLanguage(_) => k::UNKNOWN_LANGUAGE,
            Error::Start(_) | Error::Died(_) => k::KERNEL,
        }
    }
}
