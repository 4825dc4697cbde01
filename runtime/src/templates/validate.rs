//! Validation of template names, package names, suites and mirrors.

use crate::error::{Error, Result};

/// Template names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "template name '{name}': use 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]*` (at most 128 characters).
pub fn validate_package(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "package name '{name}': Debian package names are a-z, 0-9, '+', '.', '-', starting with a letter or digit"
        )))
    }
}

pub(super) fn validate_suite(suite: &str) -> Result<()> {
    let b = suite.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "suite '{suite}' is not a Debian suite name"
        )))
    }
}

pub(super) fn validate_mirror(mirror: &str) -> Result<()> {
    let ok = (mirror.starts_with("http://")
        || mirror.starts_with("https://")
        || mirror.starts_with("file:/"))
        && mirror.len() < 1024
        && !mirror
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "mirror '{mirror}' is not an http(s) or file URL"
        )))
    }
}
