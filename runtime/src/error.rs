//! Runtime errors: typed, mapped once per surface (MCP isError, E2B {code,message}, CLI exit).

use coppice_envd::ConnectError;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such sandbox visible to callers, and no record of one that ended.
    #[error(
        "sandbox '{0}' not found (it may have been killed or timed out; list sandboxes to see live ones)"
    )]
    SandboxNotFound(String),
    /// A sandbox that existed and ended: its tombstone says how.
    #[error("sandbox '{id}' not found: it is gone, {why}")]
    SandboxEnded {
        /// The sandbox asked for.
        id: String,
        /// How it ended and when, e.g. `its timeout passed at <time>`.
        why: String,
    },
    /// No installed template has this name.
    #[error("template '{0}' not found (list the templates to see the installed ones)")]
    TemplateNotFound(String),
    /// No ready snapshot has this id or name.
    #[error("snapshot '{0}' not found (list the snapshots to see the existing ones)")]
    SnapshotNotFound(String),
    /// A code context that does not exist in the sandbox (E2B's text: "Context X not found").
    #[error("{0}")]
    ContextNotFound(String),
    /// No terminal has this id in the sandbox.
    #[error("no terminal '{terminal}' in sandbox '{sandbox}' (list its terminals to see them)")]
    TerminalNotFound {
        /// The sandbox asked about.
        sandbox: String,
        /// The terminal id asked for.
        terminal: String,
    },
    /// run_code asked for a language the sandbox has no kernel for.
    #[error("{0}")]
    UnknownLanguage(String),
    /// The request is valid but the current state forbids it (e.g. deleting a snapshot that
    /// forks still stand on).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong (a bad value, a conflicting option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// What the request would create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The operation cannot be served right now (a paused sandbox, another daemon owns the host).
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
    /// This host lacks a kernel or tool feature the operation needs.
    #[error("host is missing a required feature: {0}")]
    HostUnsupported(String),
    /// The sandbox's agent answered with an error.
    #[error("sandbox agent: {0}")]
    Agent(#[from] ConnectError),
    /// An I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `reading <path>`.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("state store: {0}")]
    State(#[from] rusqlite::Error),
    /// A bug or broken invariant in the runtime.
    #[error("{0}")]
    Internal(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A `map_err` adapter: turns an I/O error into [`Error::Io`] with `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// An [`Error::Internal`] with `msg`.
    pub fn internal(msg: impl std::fmt::Display) -> Error {
        Error::Internal(msg.to_string())
    }
}

/// Adds context to I/O results: `fs::read(p).ctx(|| format!("reading {p:?}"))`.
pub trait IoContext<T> {
    /// Wraps the error with the context `what` returns, called only on failure.
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
