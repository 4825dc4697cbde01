//! Keeping a sandbox alive while a call runs work in it: the sandbox's lease is extended to
//! outlive the call's timeout (never shortened), on every surface alike.

use std::time::Duration;

use crate::{Result, Tools};

/// How much longer than a call's timeout the sandbox is kept: time to collect the result.
const MARGIN_SECS: f64 = 60.0;

impl Tools {
    /// Extends sandbox `id`'s lease to last `timeout_secs` plus a margin from now, if it would
    /// end sooner. A timeout that is not a positive number changes nothing (the call itself
    /// refuses it).
    pub(crate) fn keep_alive_for(&self, id: &str, timeout_secs: f64) -> Result<()> {
        if !(timeout_secs.is_finite() && timeout_secs > 0.0) {
            return Ok(());
        }
        let secs = (timeout_secs + MARGIN_SECS).min(u32::MAX as f64);
        self.rt.keep_alive(id, Duration::from_secs_f64(secs))
    }
}
