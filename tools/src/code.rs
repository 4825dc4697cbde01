//! run_code: code contexts backed by real Jupyter kernels inside the sandbox. The agent serves
//! the E2B code-interpreter routes (`POST /execute` NDJSON, `/contexts`); this layer calls them
//! over the agent's socket and turns the stream into a typed result.

use std::collections::BTreeMap;

use bytes::Bytes;
pub use coppice_kernel::wire::{ContextInfo, OutputLine, ResultData};
use coppice_kernel::wire::{CreateContext, ExecuteRequest};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, Tools};

/// Run code in a code context (a Jupyter kernel whose state persists between calls). The doc
/// comments are the field descriptions every surface's schema shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCode {
    /// The code to run, e.g. "import pandas as pd\npd.DataFrame({'a': [1, 2]})". Variables,
    /// imports and definitions persist in the context between calls; the value of the last
    /// expression is the main result; matplotlib figures come back as PNG images without
    /// savefig.
    pub code: String,
    /// Language of the default context to run in: "python" (default), "javascript" ("js") or
    /// "typescript" ("ts") on Deno, "bash" (any language with a Jupyter kernel in the sandbox).
    /// Do not combine with context_id.
    #[serde(default)]
    pub language: Option<String>,
    /// A context created with code_context_create (its own kernel and state). Omit to use
    /// the language's default context.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Environment variables for this call only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Interrupt the code after this many seconds (default 300); the context keeps its state
    /// and stays usable.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// Default of `RunCode::timeout_secs` (E2B's).
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;

/// One timestamped chunk of stdout or stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutputChunk {
    /// The text as the kernel sent it.
    pub text: String,
    /// When the kernel sent it (ISO-8601).
    pub timestamp: String,
}

/// One rich result. `data` maps each MIME type the kernel sent to its content (images and PDF
/// base64-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CodeResult {
    /// True for the cell's value (the last expression), false for display() outputs such as
    /// a matplotlib figure.
    pub is_main_result: bool,
    /// The MIME types present, e.g. ["text/plain", "text/html"].
    pub formats: Vec<String>,
    /// The E2B-shaped result: text, html, markdown, svg, png, jpeg, pdf, latex, json,
    /// javascript, data, chart, extra.
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// An error raised by the code (or by Coppice: TimeoutError, KernelDiedError, KernelStartError).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CodeError {
    /// The exception's class name, e.g. "ZeroDivisionError".
    pub name: String,
    /// The exception's message.
    pub value: String,
    /// The traceback as the kernel formats it (with ANSI colour codes).
    pub traceback: String,
}

/// The outcome of a run_code call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunCodeResult {
    /// The kernel's execution counter for this call (None when the code never ran).
    pub execution_count: Option<i64>,
    /// Standard output, in chunks as they came.
    pub stdout: Vec<OutputChunk>,
    /// Standard error, in chunks as they came.
    pub stderr: Vec<OutputChunk>,
    /// Results in the order the kernel produced them.
    pub results: Vec<CodeResult>,
    /// The error the code raised, if it did.
    pub error: Option<CodeError>,
    /// True when the timeout passed and the kernel was interrupted.
    pub timed_out: bool,
    /// True when the caller cancelled the call (the kernel was interrupted).
    pub cancelled: bool,
}

impl RunCodeResult {
    /// Folds one stream line into the result.
    pub fn push(&mut self, line: OutputLine) {
        match line {
            OutputLine::NumberOfExecutions { execution_count } => {
                self.execution_count = Some(execution_count)
            }
            OutputLine::Stdout { text, timestamp } => {
                self.stdout.push(OutputChunk { text, timestamp })
            }
            OutputLine::Stderr { text, timestamp } => {
                self.stderr.push(OutputChunk { text, timestamp })
            }
            OutputLine::Result(r) => {
                let formats = r.formats();
                let mut data = match serde_json::to_value(&r) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => Default::default(),
                };
                data.remove("is_main_result");
                self.results.push(CodeResult {
                    is_main_result: r.is_main_result,
                    formats,
                    data,
                });
            }
            OutputLine::Error {
                name,
                value,
                traceback,
            } => {
                if name == coppice_kernel::wire::errors::TIMEOUT {
                    self.timed_out = true;
                }
                self.error = Some(CodeError {
                    name,
                    value,
                    traceback,
                })
            }
            OutputLine::UnexpectedEndOfExecution => {
                self.error = Some(CodeError {
                    name: "UnexpectedEndOfExecution".into(),
                    value: "the execution stream ended unexpectedly".into(),
                    traceback: String::new(),
                })
            }
            OutputLine::EndOfExecution | OutputLine::Keepalive => {}
        }
    }

    /// All stdout text concatenated.
    pub fn stdout_text(&self) -> String {
        self.stdout.iter().map(|c| c.text.as_str()).collect()
    }

    /// All of stderr as one string.
    pub fn stderr_text(&self) -> String {
        self.stderr.iter().map(|c| c.text.as_str()).collect()
    }
}

/// Maps an error answer of the agent's code routes: by the kind it names, else by status.
fn agent_error(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Error {
    use coppice_kernel::wire::{ERROR_KIND_HEADER, error_kinds};
    let text = String::from_utf8_lossy(body).trim().to_string();
    match headers.get(ERROR_KIND_HEADER).and_then(|v| v.to_str().ok()) {
        Some(error_kinds::CONTEXT_NOT_FOUND) => return Error::ContextNotFound(text),
        Some(error_kinds::UNKNOWN_LANGUAGE) => return Error::UnknownLanguage(text),
        _ => {}
    }
    match status.as_u16() {
        400 | 404 => Error::InvalidArgument(text),
        405..=499 => Error::InvalidArgument(format!("{status}: {text}")),
        _ => Error::Unavailable(format!("code kernel: {text}")),
    }
}

impl Tools {
    /// Runs code in a context. Each output line is passed to `on_line` as it arrives;
    /// cancelling `cancel` closes the stream, which makes the agent interrupt the kernel.
    pub async fn run_code(
        &self,
        id: &str,
        req: RunCode,
        mut on_line: impl FnMut(&OutputLine) + Send,
        cancel: CancellationToken,
    ) -> Result<RunCodeResult> {
        let t = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "timeout_secs must be a positive number of seconds, got {t}"
            )));
        }
        self.keep_alive_for(id, t)?;
        let body = serde_json::to_vec(&ExecuteRequest {
            code: req.code,
            context_id: req.context_id,
            language: req.language,
            env_vars: Some(req.env).filter(|e| !e.is_empty()),
            timeout: Some(t),
        })
        .map_err(Error::internal)?;
        let resp = self
            .agent_request(id, http::Method::POST, "/execute", Some(body))
            .await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(agent_error(status, &headers, &bytes));
        }
        let mut result = RunCodeResult::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut ended = false;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = cancel.cancelled() => {
                    // Dropping the body closes the connection; the agent interrupts the kernel.
                    result.cancelled = true;
                    return Ok(result);
                }
            };
            let data: Bytes = match frame {
                None => break,
                Some(Err(e)) => {
                    return Err(Error::Unavailable(format!(
                        "the execution stream broke: {e}"
                    )));
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<OutputLine>(line) {
                    Ok(l) => {
                        ended |= l == OutputLine::EndOfExecution;
                        on_line(&l);
                        result.push(l);
                    }
                    // Unknown line types are skipped, as the E2B SDKs do.
                    Err(e) => tracing::debug!("skipping an execution line: {e}"),
                }
            }
        }
        if !ended {
            result.push(OutputLine::UnexpectedEndOfExecution);
        }
        Ok(result)
    }

    /// Creates a code context (a new kernel) with its own state.
    pub async fn create_code_context(
        &self,
        id: &str,
        language: Option<String>,
        cwd: Option<String>,
    ) -> Result<ContextInfo> {
        let body = serde_json::to_vec(&CreateContext { language, cwd }).map_err(Error::internal)?;
        self.agent_json(id, http::Method::POST, "/contexts", Some(body), agent_error)
            .await?
            .ok_or_else(|| Error::internal("the agent returned no context"))
    }

    /// Every context of the sandbox, the default ones included.
    pub async fn list_code_contexts(&self, id: &str) -> Result<Vec<ContextInfo>> {
        Ok(self
            .agent_json(
                id,
                http::Method::GET,
                "/contexts?all=true",
                None,
                agent_error,
            )
            .await?
            .unwrap_or_default())
    }

    /// Restarts a context's kernel: its state is lost.
    pub async fn restart_code_context(&self, id: &str, context_id: &str) -> Result<ContextInfo> {
        check_context_id(context_id)?;
        self.agent_json(
            id,
            http::Method::POST,
            &format!("/contexts/{context_id}/restart"),
            None,
            agent_error,
        )
        .await?
        .ok_or_else(|| Error::internal("the agent returned no context"))
    }

    /// Removes a context and stops its kernel.
    pub async fn remove_code_context(&self, id: &str, context_id: &str) -> Result<()> {
        check_context_id(context_id)?;
        self.agent_json::<serde_json::Value>(
            id,
            http::Method::DELETE,
            &format!("/contexts/{context_id}"),
            None,
            agent_error,
        )
        .await?;
        Ok(())
    }
}

/// Context ids go into a URL path.
fn check_context_id(context_id: &str) -> Result<()> {
    if context_id.is_empty()
        || !context_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidArgument(format!(
            "'{context_id}' is not a context id (list the sandbox's code contexts to see them)"
        )));
    }
    Ok(())
}
