//! MCP tools of the code interpreter: run_code and the code_context_* tools, thin adapters
//! over `coppice_tools::code`.

use coppice_tools::code::{ContextInfo, OutputLine, RunCode, RunCodeResult};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::progress::notify_output;
use crate::session::CoppiceMcp;

/// Text content keeps at most this much of stdout and of stderr (all of it is in the
/// structured result).
const TEXT_CAP: usize = 64 << 10;

/// RunCode's arguments: the tool layer's request and the sandbox it acts on.
pub type RunCodeArgs = InSandbox<RunCode>;

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunCodeOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub result: RunCodeResult,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextCreateArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// "python" (default), "javascript"/"typescript" (Deno), "bash", or another language whose
    /// kernel is installed.
    #[serde(default)]
    pub language: Option<String>,
    /// Working directory of the kernel (default /home/user; relative paths start there).
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// The context's id (from code_context_create or code_context_list).
    pub context_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextView {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

impl From<ContextInfo> for ContextView {
    fn from(c: ContextInfo) -> Self {
        Self {
            id: c.id,
            language: c.language,
            cwd: c.cwd,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextOutput {
    pub sandbox_id: String,
    pub context: ContextView,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextListOutput {
    pub sandbox_id: String,
    /// Contexts created with code_context_create, plus the default ones ("default" for
    /// Python, "default-<language>" for others) once they have been used.
    pub contexts: Vec<ContextView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextRemovedOutput {
    pub sandbox_id: String,
    pub context_id: String,
    pub removed: bool,
}

fn cap(text: &str) -> String {
    if text.len() <= TEXT_CAP {
        return text.to_string();
    }
    let mut cut = TEXT_CAP;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n[... {} more bytes in the structured result ...]",
        &text[..cut],
        text.len() - cut
    )
}

/// Content blocks for the model: output and text results as text, PNG/JPEG as images.
fn content_of(r: &RunCodeResult) -> Vec<ContentBlock> {
    let mut text = String::new();
    let stdout = r.stdout_text();
    let stderr = r.stderr_text();
    if !stdout.is_empty() {
        text.push_str(&format!("[stdout]\n{}", cap(&stdout)));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    if !stderr.is_empty() {
        text.push_str(&format!("[stderr]\n{}", cap(&stderr)));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let mut images = Vec::new();
    for res in &r.results {
        let field = |k: &str| res.data.get(k).and_then(|v| v.as_str());
        let label = if res.is_main_result {
            "[result]"
        } else {
            "[display]"
        };
        if let Some(png) = field("png") {
            images.push(ContentBlock::image(png, "image/png"));
        }
        if let Some(jpeg) = field("jpeg") {
            images.push(ContentBlock::image(jpeg, "image/jpeg"));
        }
        let body = field("markdown")
            .or(field("text"))
            .map(str::to_string)
            .or_else(|| res.data.get("json").map(|j| j.to_string()));
        match body {
            Some(t) => text.push_str(&format!("{label} {}\n", cap(&t))),
            None => text.push_str(&format!("{label} ({})\n", res.formats.join(", "))),
        }
    }
    if let Some(e) = &r.error {
        text.push_str(&format!("[error] {}: {}\n", e.name, e.value));
        if !e.traceback.is_empty() {
            text.push_str(&cap(&strip_ansi(&e.traceback)));
            text.push('\n');
        }
    }
    if text.is_empty() {
        text.push_str("(no output)");
    }
    let mut out = vec![ContentBlock::text(text)];
    out.extend(images);
    out
}

/// Removes ANSI colour sequences (tracebacks are coloured for terminals).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tool_router(router = code_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Run code in a persistent Jupyter kernel (Python by default; bash too) and get its
    /// stdout, stderr, rich results (text, HTML tables, PNG charts with their data, JSON, ...)
    /// and any error with its traceback. State persists between calls in the same context.
    /// stdout/stderr stream as progress notifications when the call carries a progress token;
    /// cancelling the call or passing timeout_secs interrupts the kernel and keeps its state.
    #[tool(
        annotations(
            title = "Run code",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        ),
        output_schema = schema_for_output::<RunCodeOutput>()
    )]
    async fn run_code(
        &self,
        Parameters(a): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let req = a.request;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
        let on_line = move |line: &OutputLine| match line {
            OutputLine::Stdout { text, .. } => {
                let _ = tx.send(("stdout", text.clone()));
            }
            OutputLine::Stderr { text, .. } => {
                let _ = tx.send(("stderr", text.clone()));
            }
            _ => {}
        };
        let token = ctx.meta.get_progress_token();
        let peer = ctx.peer.clone();
        // One progress notification per output chunk; `progress` counts the chunks.
        let forward = async move {
            let mut n = 0u64;
            while let Some((label, text)) = rx.recv().await {
                n += 1;
                if let Some(token) = &token {
                    notify_output(&peer, token, n as f64, label, &text).await;
                }
            }
        };
        let run = self.tools().run_code(&id, req, on_line, ctx.ct.clone());
        let (result, ()) = tokio::join!(run, forward);
        let result = result.map_err(explain_code)?;
        let content = content_of(&result);
        let out = RunCodeOutput {
            sandbox_id: id,
            result,
        };
        let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        // Text and images for the model, not the JSON dump (it would repeat every image).
        let mut result = CallToolResult::structured(value);
        result.content = content;
        Ok(result)
    }

    /// Create a code context: a separate kernel (Python by default, or bash) with its own
    /// variables and working directory. Pass its id as context_id to run_code.
    #[tool(annotations(
        title = "Create code context",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn code_context_create(
        &self,
        Parameters(a): Parameters<ContextCreateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ContextOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .create_code_context(&id, a.language, a.cwd)
            .await
            .map_err(explain_code)?;
        Ok(Json(ContextOutput {
            sandbox_id: id,
            context: info.into(),
        }))
    }

    /// List the sandbox's code contexts (id, language, cwd).
    #[tool(annotations(
        title = "List code contexts",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn code_context_list(
        &self,
        Parameters(a): Parameters<crate::sandbox_tools::SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ContextListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let list = self
            .tools()
            .list_code_contexts(&id)
            .await
            .map_err(explain_code)?;
        Ok(Json(ContextListOutput {
            sandbox_id: id,
            contexts: list.into_iter().map(ContextView::from).collect(),
        }))
    }

    /// Restart a code context's kernel: all its variables are lost. Use it when the kernel
    /// died or hangs.
    #[tool(annotations(
        title = "Restart code context",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn code_context_restart(
        &self,
        Parameters(a): Parameters<ContextArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ContextOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .restart_code_context(&id, &a.context_id)
            .await
            .map_err(explain_code)?;
        Ok(Json(ContextOutput {
            sandbox_id: id,
            context: info.into(),
        }))
    }

    /// Remove a code context and stop its kernel.
    #[tool(annotations(
        title = "Remove code context",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn code_context_remove(
        &self,
        Parameters(a): Parameters<ContextArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ContextRemovedOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .remove_code_context(&id, &a.context_id)
            .await
            .map_err(explain_code)?;
        Ok(Json(ContextRemovedOutput {
            sandbox_id: id,
            context_id: a.context_id,
            removed: true,
        }))
    }
}

/// Error text for the code tools: the runtime's explanation plus where to look next.
fn explain_code(e: coppice_runtime::Error) -> String {
    let hint = match &e {
        coppice_runtime::Error::ContextNotFound(_) => {
            "; call code_context_list to see the sandbox's contexts"
        }
        coppice_runtime::Error::UnknownLanguage(_) => "; omit language to use Python",
        _ => "",
    };
    format!("{}{hint}", explain(e, About::Sandbox))
}
