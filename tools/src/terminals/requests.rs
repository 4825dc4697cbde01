//! The terminal tools' requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Open a terminal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTerminal {
    /// Command line to run (through `sh -c`); default: the user's login shell.
    #[serde(default)]
    pub cmd: Option<String>,
    /// Width in columns (default 80).
    #[serde(default)]
    pub cols: Option<u16>,
    /// Height in rows (default 24).
    #[serde(default)]
    pub rows: Option<u16>,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables (TERM=xterm-256color and LANG=C.UTF-8 are set already).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User to run as: "user" (default) or "root".
    #[serde(default)]
    pub user: Option<String>,
}

/// What to type into a terminal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendToTerminal {
    /// Text typed as is (no Enter is added).
    #[serde(default)]
    pub text: Option<String>,
    /// Named keys typed after the text, e.g. ["Enter"] or ["C-c"]. Names: Enter, Tab, BackTab, Backspace,
    /// Escape, Space, Up, Down, Left, Right, Home, End, Insert, Delete, PageUp, PageDown,
    /// F1..F12, C-<letter> (C-c, C-d, C-z…), M-<key>.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// Which view of a terminal to read.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// The visible screen as text, with the cursor (what a person attached sees).
    #[default]
    Screen,
    /// Raw output (escapes included) since an offset.
    Output,
}

/// Read a terminal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadTerminal {
    /// "screen" (default) or "output".
    #[serde(default)]
    pub mode: ReadMode,
    /// For "output": the offset to read from (a previous read's next_offset; default 0, the
    /// oldest output held).
    #[serde(default)]
    pub since: Option<u64>,
    /// For "output": at most this many bytes, the newest kept (default 65536).
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// Wait until a pattern shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForTerminal {
    /// A regular expression (Rust regex syntax). On the screen, ^ and $ match at each line's
    /// start and end, and lines have trailing blanks trimmed: "\\$$" finds a `$ ` prompt.
    pub pattern: String,
    /// Match against "screen" (default: the visible text) or "output" (raw output since
    /// `since`, escapes included).
    #[serde(default)]
    pub mode: ReadMode,
    /// For "output": where to start looking (default: the output end now, i.e. new output).
    #[serde(default)]
    pub since: Option<u64>,
    /// Give up after this many seconds (default 30, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}
