//! Why a code-context request failed, with the kind every surface maps it by.

use crate::wire;

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
