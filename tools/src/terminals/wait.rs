//! Reading a terminal (its screen, or raw output since an offset) and waiting for a pattern on
//! either: what lets an agent follow a program a person drives, and the reverse.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::requests::{ReadMode, ReadTerminal, WaitForTerminal};
use super::terminal::{ScreenText, Terminal};
use crate::{Error, Result, Tools};

/// Raw output read by default per call.
const DEFAULT_READ_BYTES: usize = 64 << 10;
/// Output a wait on raw output searches at most (the newest part).
const WAIT_WINDOW: usize = 1 << 20;

/// Raw output since an offset.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutputText {
    /// The output (UTF-8, invalid bytes replaced; escapes included).
    pub text: String,
    /// Offset of the first byte returned.
    pub offset: u64,
    /// Pass this as `since` next time to get only newer output.
    pub next_offset: u64,
    /// Bytes between `since` and `offset` that were not returned: they left the 1 MiB ring,
    /// or max_bytes kept only the newest.
    pub skipped_bytes: u64,
}

/// What a terminal read returns.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TerminalRead {
    /// The visible screen.
    Screen(ScreenText),
    /// Raw output.
    Output(OutputText),
}

/// Where a wait found its pattern.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WaitMatch {
    /// The text that matched.
    pub matched: String,
    /// The screen when it matched.
    pub screen: ScreenText,
    /// For output waits: the offset just past the match (continue from here).
    pub next_offset: u64,
}

fn output_since(t: &Terminal, since: u64, max: usize) -> OutputText {
    let (from, bytes) = t.tail(since, max);
    OutputText {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        offset: from,
        next_offset: from + bytes.len() as u64,
        skipped_bytes: from.saturating_sub(since),
    }
}

impl Tools {
    /// The terminal's screen, or its raw output since an offset.
    pub fn read_terminal(&self, id: &str, tid: &str, req: ReadTerminal) -> Result<TerminalRead> {
        let t = self.terminal(id, tid)?;
        Ok(match req.mode {
            ReadMode::Screen => TerminalRead::Screen(t.screen()),
            ReadMode::Output => TerminalRead::Output(output_since(
                &t,
                req.since.unwrap_or(0),
                req.max_bytes.unwrap_or(DEFAULT_READ_BYTES).max(1),
            )),
        })
    }

    /// Waits until `pattern` matches the screen or the new output. Dropping the future (MCP
    /// cancellation) stops the wait; the terminal ending or the timeout fails it.
    pub async fn wait_for_terminal(
        &self,
        id: &str,
        tid: &str,
        req: WaitForTerminal,
    ) -> Result<WaitMatch> {
        let t = self.terminal(id, tid)?;
        let re = regex::RegexBuilder::new(&req.pattern)
            .multi_line(req.mode == ReadMode::Screen)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("pattern is not a valid regex: {e}")))?;
        let secs = req.timeout_secs.unwrap_or(30.0);
        if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
            return Err(Error::InvalidArgument(format!(
                "timeout_secs must be in (0, 3600], got {secs}"
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        let since = req.since.unwrap_or_else(|| t.offsets().1);
        let mut changes = t.watch_output();
        loop {
            changes.mark_unchanged();
            let found = match req.mode {
                ReadMode::Screen => {
                    let screen = t.screen();
                    re.find(&screen.text).map(|m| WaitMatch {
                        matched: m.as_str().to_string(),
                        next_offset: screen.offset,
                        screen: screen.clone(),
                    })
                }
                ReadMode::Output => {
                    let out = output_since(&t, since, WAIT_WINDOW);
                    re.find(&out.text).map(|m| WaitMatch {
                        matched: m.as_str().to_string(),
                        // Offsets in the lossy text equal byte offsets for valid UTF-8; for the
                        // rest this stays within the output read.
                        next_offset: (out.offset + m.end() as u64).min(out.next_offset),
                        screen: t.screen(),
                    })
                }
            };
            if let Some(m) = found {
                return Ok(m);
            }
            if let Some(exit) = t.exit() {
                return Err(Error::FailedPrecondition(format!(
                    "terminal '{tid}' ended ({}) before /{}/ showed",
                    exit.status, req.pattern
                )));
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::DeadlineExceeded(format!(
                    "/{}/ did not show on terminal '{tid}' within {secs} s; its screen ends: {}",
                    req.pattern,
                    last_lines(&t.screen().text, 3)
                )));
            }
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
