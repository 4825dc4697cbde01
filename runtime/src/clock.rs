//! Wall-clock helpers: unix milliseconds and RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use coppice_envd::time::{parse_rfc3339_ms, rfc3339_ms};
