//! Runtime errors: typed, mapped once per surface (MCP isError, E2B {code,message}, CLI exit).

use coppice_envd::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "sandbox '{0}' not found (it may have been killed or timed out; list sandboxes to see live ones)"
    )]
    SandboxNotFound(String),
    /// A sandbox that existed and ended: its tombstone says how.
    #[error("sandbox '{id}' not found: it is gone, {why}")]
    SandboxEnded { id: String, why: String },
    #[error("template '{0}' not found (list the templates to see the installed ones)")]
    TemplateNotFound(String),
    #[error("snapshot '{0}' not found (list the snapshots to see the existing ones)")]
    SnapshotNotFound(String),
    /// A code context that does not exist in the sandbox (E2B's text: "Context X not found").
    #[error("{0}")]
    ContextNotFound(String),
    /// run_code asked for a language the sandbox has no kernel for.
    #[error("{0}")]
    UnknownLanguage(String),
    /// The request is valid but the current state forbids it (e.g. deleting a snapshot that
    /// forks still stand on).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller's credential does not cover this sandbox or operation.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A host or daemon limit is reached (admission, a per-sandbox cap); retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The sandbox did not answer in time (its agent is stopped, hung or overloaded).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("host is missing a required feature: {0}")]
    HostUnsupported(String),
    #[error("sandbox agent: {0}")]
    Agent(#[from] ConnectError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    State(#[from] rusqlite::Error),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn internal(msg: impl std::fmt::Display) -> Error {
        Error::Internal(msg.to_string())
    }
}

/// Adds context to I/O results: `fs::read(p).ctx(|| format!("reading {p:?}"))`.
pub trait IoContext<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what().into(),
            source,
        })
    }
}
