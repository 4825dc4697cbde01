//! MCP browser tools, page level: navigate, snapshot, find, evaluate, screenshot, PDF, console,
//! network, wait, resize, tabs, close. Names and parameters are playwright-mcp's; each is a thin
//! adapter over `coppice_tools::browser`, and every answer is the page after the call (markdown
//! sections, the snapshot in YAML), with screenshots as image content.

use coppice_tools::browser::requests as r;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use crate::in_sandbox::InSandbox;
use crate::session::CoppiceMcp;
use coppice_tools::browser::Report;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::ContentBlock;
use schemars::JsonSchema;
use serde::Serialize;

use crate::explain::{About, explain};

#[tool_router(router = browser_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Navigate the sandbox's browser to a URL (its own servers are on localhost) and wait for the
    /// page to load. Answers with the page's accessibility snapshot; pass an element's ref (e.g.
    /// e12) as `target` to the other browser tools. The browser (headless Chromium inside the
    /// sandbox, under its network policy) starts on the first browser call.
    #[tool(
        annotations(
        title = "Navigate to a URL",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_navigate(
        &self,
        Parameters(a): Parameters<InSandbox<r::Navigate>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_navigate(&id, a.request).await,
        )
    }

    /// Go back to the previous page in the current tab.
    #[tool(
        annotations(
        title = "Go back",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_navigate_back(
        &self,
        Parameters(a): Parameters<InSandbox<r::NoParams>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_navigate_back(&id).await)
    }

    /// Capture the current page's accessibility snapshot (YAML, each element with its ref); better
    /// than a screenshot for acting on the page. `target` limits it to one element's subtree,
    /// `depth` to a number of levels, `filename` saves it to a file in the sandbox.
    #[tool(
        annotations(
        title = "Page snapshot",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_snapshot(
        &self,
        Parameters(a): Parameters<InSandbox<r::Snapshot>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_snapshot(&id, a.request).await,
        )
    }

    /// Find elements in the page snapshot by text (case-insensitive) or regex; cheaper than reading
    /// a whole snapshot.
    #[tool(
        annotations(
        title = "Find in page",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_find(
        &self,
        Parameters(a): Parameters<InSandbox<r::Find>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_find(&id, a.request).await)
    }

    /// Evaluate a JavaScript function in the page: `() => document.title`, or `(element) =>
    /// element.value` with a target. The result comes back as JSON; a function that runs over 15 s
    /// is terminated.
    #[tool(
        annotations(
        title = "Evaluate JavaScript",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_evaluate(
        &self,
        Parameters(a): Parameters<InSandbox<r::Evaluate>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_evaluate(&id, a.request).await,
        )
    }

    /// Take a screenshot of the viewport, the full page (`fullPage`) or one element (`target`), as
    /// png (default) or jpeg; `filename` also saves it in the sandbox. You can't act on elements
    /// from a screenshot: use browser_snapshot for that.
    #[tool(
        annotations(
        title = "Take a screenshot",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_take_screenshot(
        &self,
        Parameters(a): Parameters<InSandbox<r::Screenshot>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_take_screenshot(&id, a.request).await,
        )
    }

    /// List the page's console messages (and uncaught errors) at `level` (error, warning, info =
    /// default, debug) and above, since the last navigation (`all`: since the browser started).
    #[tool(
        annotations(
        title = "Console messages",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_console_messages(
        &self,
        Parameters(a): Parameters<InSandbox<r::ConsoleMessages>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_console_messages(&id, a.request).await,
        )
    }

    /// List the page's network requests since it loaded: method, URL, status. Successful static
    /// resources (images, fonts, scripts, stylesheets) only with `static`; `filter` is a URL regex.
    #[tool(
        annotations(
        title = "Network requests",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_network_requests(
        &self,
        Parameters(a): Parameters<InSandbox<r::NetworkRequests>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_network_requests(&id, a.request).await,
        )
    }

    /// Wait for `text` to appear or `textGone` to disappear (up to `time` seconds, default 30), or
    /// for `time` seconds alone.
    #[tool(
        annotations(
        title = "Wait for",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_wait_for(
        &self,
        Parameters(a): Parameters<InSandbox<r::WaitFor>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_wait_for(&id, a.request).await,
        )
    }

    /// Resize the browser's viewport (CSS pixels).
    #[tool(
        annotations(
        title = "Resize the viewport",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_resize(
        &self,
        Parameters(a): Parameters<InSandbox<r::Resize>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_resize(&id, a.request).await,
        )
    }

    /// List, open (`new`, with an optional url), close (by index, default the current one) or
    /// select browser tabs.
    #[tool(
        annotations(
        title = "Manage tabs",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_tabs(
        &self,
        Parameters(a): Parameters<InSandbox<r::Tabs>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_tabs(&id, a.request).await)
    }

    /// Close the sandbox's browser and all its tabs; the next browser call starts a fresh one.
    #[tool(
        annotations(
        title = "Close the browser",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_close(
        &self,
        Parameters(a): Parameters<InSandbox<r::NoParams>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_close(&id).await)
    }

    /// Save the current page as a PDF file in the sandbox (default /tmp/page-<time>.pdf).
    #[tool(
        annotations(
        title = "Save as PDF",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_pdf_save(
        &self,
        Parameters(a): Parameters<InSandbox<r::PdfSave>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_pdf_save(&id, a.request).await,
        )
    }
}

/// A browser tool's answer: the report as markdown, its image as image content. Failures are
/// tool errors (`isError`) whose text says what to do next.
pub(crate) fn answer(
    id: String,
    r: coppice_tools::Result<Report>,
) -> Result<CallToolResult, String> {
    let report = r.map_err(|e| explain(e, About::Browser))?;
    let mut content = vec![ContentBlock::text(report.markdown())];
    if let Some(image) = &report.image {
        content.push(ContentBlock::image(
            image.data.clone(),
            image.mime_type.clone(),
        ));
    }
    let out = BrowserOutput {
        sandbox_id: id,
        report,
    };
    let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    // The model reads the markdown (and the image); clients read the structured form.
    let mut result = CallToolResult::structured(value);
    result.content = content;
    Ok(result)
}

/// Every browser tool's structured output: the sandbox and the page after the call.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct BrowserOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub report: Report,
}

/// The browser tools' output schema.
pub(crate) fn output_schema() -> std::sync::Arc<rmcp::model::JsonObject> {
    schema_for_output::<BrowserOutput>()
}
