//! The E2B code-interpreter wire format (`POST /execute`, `/contexts`), shared by the agent that
//! serves it and the host-side tool layer that reads it. Field names are exactly E2B's
//! (reference: e2b-protocol.md §5), so the E2B SDKs parse these lines unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Header on an error answer of the code routes naming its kind (the body stays E2B's plain
/// text), so the host-side tools learn the kind without reading the text.
pub const ERROR_KIND_HEADER: &str = "coppice-error-kind";

/// The kinds [`ERROR_KIND_HEADER`] carries.
pub mod error_kinds {
    /// The request body was malformed or inconsistent.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The named context does not exist.
    pub const CONTEXT_NOT_FOUND: &str = "context_not_found";
    /// No kernel is installed for the requested language.
    pub const UNKNOWN_LANGUAGE: &str = "unknown_language";
    /// The kernel could not be started or died.
    pub const KERNEL: &str = "kernel";
}

/// Body of `POST /execute`. The Python SDK sends every key (nulls included), the JS SDK omits
/// unset ones. `timeout` is Coppice's extension: seconds after which the kernel is interrupted
/// (the E2B SDKs enforce their timeout client-side and never send it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// The code to run.
    pub code: String,
    /// Context to run in; absent means the default context of `language`.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Language whose default context runs the code (Python when absent); not with `context_id`.
    #[serde(default)]
    pub language: Option<String>,
    /// Environment variables set for this execution only.
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Seconds after which the kernel is interrupted; must be positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Body of `POST /contexts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateContext {
    /// Kernel language (Python when absent); E2B's aliases such as `js` are accepted.
    #[serde(default)]
    pub language: Option<String>,
    /// Working directory of the kernel, relative to the user's home; absent: the home itself.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// A code context as `/contexts` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    /// Context id, passed as `context_id` to `/execute`.
    pub id: String,
    /// Normalized language of its kernel, e.g. `python`.
    pub language: String,
    /// Absolute working directory of its kernel.
    pub cwd: String,
}

/// One rich output: every MIME type the kernel sent, under E2B's field names. Types without a
/// field of their own go to `extra` keyed by MIME type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultData {
    /// `text/plain`, with the quotes around a string repr stripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `text/html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// `text/markdown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    /// `image/svg+xml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    /// Base64, as Jupyter sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    /// `text/latex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    /// `application/json`, kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// `application/javascript`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    /// `e2b/data`, E2B's structured data, kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// `e2b/chart`, E2B's chart description, kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    /// Every other MIME type, keyed by type.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
    /// True for the cell's value (`execute_result`), false for `display_data`.
    #[serde(default)]
    pub is_main_result: bool,
}

impl ResultData {
    /// Builds a result from a Jupyter MIME bundle (`{"text/plain": ..., "image/png": ...}`).
    pub fn from_mime_bundle(bundle: &Map<String, Value>, is_main_result: bool) -> Self {
        let mut r = ResultData {
            is_main_result,
            ..Default::default()
        };
        for (mime, value) in bundle {
            // Jupyter allows multi-line strings as arrays of lines.
            let text = || match value {
                Value::String(s) => Some(s.clone()),
                Value::Array(lines) => Some(
                    lines
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .concat(),
                ),
                _ => None,
            };
            match mime.as_str() {
                "text/plain" => r.text = text().map(|t| strip_quotes(&t)),
                "text/html" => r.html = text(),
                "text/markdown" => r.markdown = text(),
                "image/svg+xml" => r.svg = text(),
                "image/png" => r.png = text().map(|t| t.replace('\n', "")),
                "image/jpeg" => r.jpeg = text().map(|t| t.replace('\n', "")),
                "application/pdf" => r.pdf = text(),
                "text/latex" => r.latex = text(),
                "application/json" => r.json = Some(value.clone()),
                "application/javascript" => r.javascript = text(),
                "e2b/data" => r.data = Some(value.clone()),
                "e2b/chart" => r.chart = Some(value.clone()),
                _ => {
                    r.extra.insert(mime.clone(), value.clone());
                }
            }
        }
        r
    }

    /// The MIME types this result carries.
    pub fn formats(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |present: bool, mime: &str| {
            if present {
                out.push(mime.to_string())
            }
        };
        add(self.text.is_some(), "text/plain");
        add(self.html.is_some(), "text/html");
        add(self.markdown.is_some(), "text/markdown");
        add(self.svg.is_some(), "image/svg+xml");
        add(self.png.is_some(), "image/png");
        add(self.jpeg.is_some(), "image/jpeg");
        add(self.pdf.is_some(), "application/pdf");
        add(self.latex.is_some(), "text/latex");
        add(self.json.is_some(), "application/json");
        add(self.javascript.is_some(), "application/javascript");
        add(self.data.is_some(), "e2b/data");
        add(self.chart.is_some(), "e2b/chart");
        out.extend(self.extra.keys().cloned());
        out
    }
}

/// E2B strips the quotes around a string's repr, so `'abc'` reads as `abc`.
fn strip_quotes(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// One line of the `/execute` NDJSON stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    /// The execution began; carries the kernel's execution counter.
    NumberOfExecutions {
        /// The kernel's execution count for this cell (`In [n]`).
        execution_count: i64,
    },
    /// Text the code wrote to stdout.
    Stdout {
        /// The text, as the kernel sent it.
        text: String,
        /// ISO-8601, the kernel's message date.
        timestamp: String,
    },
    /// Text the code wrote to stderr.
    Stderr {
        /// The text, as the kernel sent it.
        text: String,
        /// ISO-8601, the kernel's message date.
        timestamp: String,
    },
    /// Boxed: a result is much larger than the other lines.
    Result(Box<ResultData>),
    /// The code raised an error (or Coppice reports one from [`errors`]).
    Error {
        /// Error class, e.g. `NameError`.
        name: String,
        /// Error message.
        value: String,
        /// The traceback lines joined (with the kernel's ANSI colours).
        traceback: String,
    },
    /// The execution finished; always the last line.
    EndOfExecution,
    /// Sent while the execution is quiet, to keep the stream alive.
    Keepalive,
    /// Recorded by the reader when the stream ended without `end_of_execution`; never sent.
    UnexpectedEndOfExecution,
}

impl OutputLine {
    /// The line as sent: compact JSON and one `\n` (never a blank line).
    pub fn to_ndjson(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("output lines always serialize");
        v.push(b'\n');
        v
    }
}

/// Error names Coppice itself reports in `error` lines (besides the kernel's own).
pub mod errors {
    /// The per-call timeout passed and the kernel was interrupted.
    pub const TIMEOUT: &str = "TimeoutError";
    /// The kernel process died (killed, crashed, out of memory); restart the context.
    pub const KERNEL_DIED: &str = "KernelDiedError";
    /// The kernel could not be started.
    pub const KERNEL_START: &str = "KernelStartError";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_match_e2b() {
        let l = OutputLine::Stdout {
            text: "1\n".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            String::from_utf8(l.to_ndjson()).unwrap(),
            "{\"type\":\"stdout\",\"text\":\"1\\n\",\"timestamp\":\"2026-01-01T00:00:00Z\"}\n"
        );
        assert_eq!(
            OutputLine::EndOfExecution.to_ndjson(),
            b"{\"type\":\"end_of_execution\"}\n"
        );
        let bundle = json!({"text/plain": "'abc'", "image/png": "iVBO\n", "text/x-foo": "z"});
        let r = ResultData::from_mime_bundle(bundle.as_object().unwrap(), true);
        let v = serde_json::to_value(OutputLine::Result(Box::new(r))).unwrap();
        assert_eq!(
            v,
            json!({"type": "result", "text": "abc", "png": "iVBO",
                   "extra": {"text/x-foo": "z"}, "is_main_result": true})
        );
    }
}
