//! Requests of the background command tools (start, read, write stdin, signal). Doc comments
//! are the field descriptions every surface's schema shows.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use coppice_envd::process::Signal;

/// Start a shell command line in the background; its output is buffered by the tool layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCommand {
    /// Shell command line, run as `/bin/bash -lc CMD` in the background.
    pub cmd: String,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User to run as: "user" (default) or "root".
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the command after this many seconds; default: no limit (it ends with the sandbox).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// Read a background command's output since given offsets, optionally waiting for its end.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadCommand {
    /// Pid returned by commands_start.
    pub pid: u32,
    /// Return stdout from this byte offset (the previous call's stdout.next_offset); default 0.
    #[serde(default)]
    pub stdout_offset: u64,
    /// Return stderr from this byte offset (the previous call's stderr.next_offset); default 0.
    #[serde(default)]
    pub stderr_offset: u64,
    /// Wait up to this many seconds for the process to exit before answering (returns as soon
    /// as it exits); default 0 = answer at once. At most 300.
    #[serde(default)]
    pub wait_secs: f64,
    /// Most bytes returned per stream (the newest are kept); default 65536.
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// Write to a background command's stdin.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteStdin {
    /// Pid returned by commands_start.
    pub pid: u32,
    /// Text to write to the process's standard input (include "\n" to end a line).
    #[serde(default)]
    pub data: String,
    /// Close stdin after writing, so the process reads end-of-file.
    #[serde(default)]
    pub close: bool,
}

/// A signal the sandbox agent can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignalName {
    /// Ask the process to stop.
    #[serde(rename = "SIGTERM")]
    Sigterm,
    /// Stop it at once.
    #[serde(rename = "SIGKILL")]
    Sigkill,
}

/// Signal a process and its process group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalCommand {
    /// Pid of the process (from commands_start or commands_list); its whole process group
    /// receives the signal.
    pub pid: u32,
    /// "SIGTERM" (default) or "SIGKILL".
    #[serde(default)]
    pub signal: Option<SignalName>,
}

impl SignalName {
    /// The signal to send: SIGTERM unless SIGKILL was asked for.
    pub fn signal(name: Option<SignalName>) -> Signal {
        match name {
            Some(SignalName::Sigkill) => Signal::Sigkill,
            _ => Signal::Sigterm,
        }
    }
}
