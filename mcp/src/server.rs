//! The MCP handler: one rmcp tool per capability, each a thin adapter over `Tools`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use coppice_envd::Code;
use coppice_runtime::Error;
use coppice_runtime::model::SandboxInfo;
use coppice_tools::Tools;
use coppice_tools::commands::{
    CommandInfo, HeadTail, OutputStream, RunCommand, RunResult, Signal, StartCommand, StreamRead,
};
use coppice_tools::files::{ContentKind, FileEntry, FileRead, Search, SearchMatch};
use coppice_tools::sandboxes::{CreateSandbox, SetTimeout};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CacheScope, CallToolResult, ContentBlock, CustomRequest, CustomResult, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources;
use crate::stdio::{MAX_MESSAGE_BYTES, OVERSIZED_METHOD};

#[path = "snapshot_tools.rs"]
mod snapshot_tools;

/// How this server reaches sandboxes; stated in the server instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside the daemon: sandboxes are shared with HTTP and the CLI and outlive the session.
    Daemon,
    /// `coppice-mcp` with no daemon running: an embedded runtime that ends with the session.
    Embedded,
}

/// State shared by every handler instance (one per stdio connection or HTTP session, one
/// per request for stateless HTTP).
#[derive(Clone)]
pub struct McpState {
    pub tools: Tools,
    pub mode: Mode,
    /// Default sandbox per session key.
    defaults: Arc<tokio::sync::Mutex<HashMap<String, String>>>,
    /// Every sandbox created through this state (the embedded mode kills them at exit).
    created: Arc<std::sync::Mutex<Vec<String>>>,
    /// Keys for stateless HTTP clients' defaults (random per daemon: credentials never show).
    client_keys: std::hash::RandomState,
}

impl McpState {
    pub fn new(tools: Tools, mode: Mode) -> Self {
        Self {
            tools,
            mode,
            defaults: Default::default(),
            created: Default::default(),
            client_keys: Default::default(),
        }
    }

    fn record_created(&self, id: &str) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.push(id.to_string());
    }

    /// Ids of the sandboxes created through this state so far.
    pub fn created_sandboxes(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The MCP server. Cheap to construct; rmcp's HTTP service makes one per session/request.
#[derive(Clone)]
pub struct CoppiceMcp {
    state: McpState,
    /// Identifies this connection's (or HTTP session's) default sandbox.
    session_key: String,
    tool_router: &'static ToolRouter<Self>,
}

/// Built once: building it (26 tools, their schemas and name checks) cost ~0.25 ms, and
/// stateless HTTP makes a handler twice per request.
static TOOL_ROUTER: std::sync::LazyLock<ToolRouter<CoppiceMcp>> =
    std::sync::LazyLock::new(CoppiceMcp::all_tools);

/// Key shared by stateless (2026-07-28) HTTP requests, which have no session.
const STATELESS_KEY: &str = "http-stateless";

/// Default per-stream cap of commands_run output.
const DEFAULT_MAX_OUTPUT: usize = 64 << 10;
/// Upper bound on caller-chosen output caps.
const MAX_OUTPUT_CAP: usize = 4 << 20;
/// commands_run output beyond the cap is saved in the sandbox up to this many bytes per
/// stream (head and tail beyond that).
/// Largest base64 a files_read text block repeats (structuredContent always has it).
const INLINE_TEXT_BASE64: usize = 64 << 10;
const SAVED_OUTPUT_BYTES: usize = 8 << 20;
/// Where commands_run saves output that was too long to return.
const SAVED_OUTPUT_DIR: &str = "/tmp/coppice-output";

// ---------------------------------------------------------------------------------------
// Arguments. Doc comments become the field descriptions of each tool's input schema.

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// New lifetime in seconds, counted from now.
    pub timeout_secs: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Sandbox to run in; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Shell command line, run as `/bin/bash -lc CMD` (pipes, redirections, && work).
    pub cmd: String,
    /// Working directory; default: the user's home (/home/user, or /root for root).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User to run as: "user" (default) or "root" (root inside the sandbox only).
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the command (its whole process group) after this many seconds; default 600.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Text written to the command's standard input, which is then closed. Without it the
    /// command's stdin is closed at once.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Cap in bytes on each of stdout and stderr in the result; the start and the end are
    /// kept and a marker shows what was cut. Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// Sandbox to run in; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum SignalName {
    /// Ask the process to stop.
    #[serde(rename = "SIGTERM")]
    Sigterm,
    /// Stop it at once.
    #[serde(rename = "SIGKILL")]
    Sigkill,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalArgs {
    /// Sandbox of the process; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Pid of the process (from commands_start or commands_list); its whole process group
    /// receives the signal.
    pub pid: u32,
    /// "SIGTERM" (default) or "SIGKILL".
    #[serde(default)]
    pub signal: Option<SignalName>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// Sandbox to read from; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// File path; relative paths are relative to /home/user.
    pub path: String,
    /// For text files: 1-based line to start at; default 1.
    #[serde(default)]
    pub offset: Option<u64>,
    /// For text files: number of lines to return; default 2000.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// How `content` is encoded.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Plain text, written as UTF-8.
    #[default]
    Utf8,
    /// Base64 of arbitrary bytes.
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// Sandbox to write to; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// File path; relative paths are relative to /home/user. Missing parent directories are
    /// created; an existing file is replaced.
    pub path: String,
    /// The whole new content of the file.
    pub content: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileArgs {
    /// Sandbox of the file; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Text file to edit; relative paths are relative to /home/user.
    pub path: String,
    /// Exact text to replace, including whitespace and indentation. It must occur exactly
    /// once unless replace_all is set.
    pub old_string: String,
    /// Text to put in its place.
    pub new_string: String,
    /// Replace every occurrence instead of requiring exactly one.
    #[serde(default)]
    pub replace_all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// Sandbox to list; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Directory to list; default /home/user.
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend: 1 (default) lists the directory itself, 2 also its subdirectories...
    /// At most 10.
    #[serde(default)]
    pub depth: Option<u32>,
    /// Only entries matching this glob: "*.py" matches names; a pattern with "/" such as
    /// "src/**/*.rs" matches paths relative to `path`.
    #[serde(default)]
    pub glob: Option<String>,
    /// Most entries returned; default 1000.
    #[serde(default)]
    pub max_entries: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Path; relative paths are relative to /home/user.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Existing file or directory.
    pub source: String,
    /// New path (an existing file there is replaced).
    pub destination: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Sandbox to search; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Extended regular expression, as `grep -E` takes it.
    pub pattern: String,
    /// File or directory to search recursively; default /home/user. `.git` and
    /// `node_modules` are skipped, binary files ignored.
    #[serde(default)]
    pub path: Option<String>,
    /// Only search files whose name matches this glob, e.g. "*.py".
    #[serde(default)]
    pub glob: Option<String>,
    /// Match case-insensitively.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Most matches returned; default 100, at most 1000.
    #[serde(default)]
    pub max_results: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// Results. Every one is an object that names the sandbox it acted on.

/// A sandbox as the tools report it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxView {
    pub sandbox_id: String,
    pub template: String,
    /// "running" while usable.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the sandbox is killed then unless extended.
    pub expires_at: String,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    /// Address on the host bridge, when the sandbox has a network.
    pub ip: Option<String>,
    /// IPv6 address on the host bridge, when the host has IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// Sandbox ports reachable from the host through the daemon (network policy "expose").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed: Vec<coppice_runtime::expose::ExposedPort>,
    pub hostname: String,
}

impl From<SandboxInfo> for SandboxView {
    fn from(i: SandboxInfo) -> Self {
        SandboxView {
            sandbox_id: i.id,
            template: i.template,
            state: i.state.as_str().into(),
            created_at: i.created_at,
            expires_at: i.expires_at,
            memory_bytes: i.limits.memory_bytes,
            cpus: i.limits.cpus,
            pids: i.limits.pids,
            metadata: i.metadata,
            ip: i.ip,
            ip6: i.ip6,
            exposed: i.exposed,
            hostname: i.hostname,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxOutput {
    pub sandbox_id: String,
    pub sandbox: SandboxView,
    /// True when this is the session's default sandbox (used when sandbox_id is omitted).
    pub is_default: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxListOutput {
    pub sandboxes: Vec<SandboxView>,
    /// This session's default sandbox, once one has been created.
    pub default_sandbox_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KillOutput {
    pub sandbox_id: String,
    pub killed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub result: RunResult,
    /// When stdout was truncated: a file in the sandbox holding all of it (its first and last
    /// 4 MiB when longer than 8 MiB), also returned as a resource_link content block. Read it
    /// with files_read (offset/limit) or files_search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    /// When stderr was truncated: a file holding all of it, as for stdout_file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_file: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StartOutput {
    pub sandbox_id: String,
    /// Handle of the background process: pass it to commands_read, commands_write_stdin and
    /// commands_signal. Output is kept (last 1 MiB per stream) for an hour after it exits.
    pub pid: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutput {
    pub sandbox_id: String,
    pub pid: u32,
    pub cmd: String,
    pub running: bool,
    /// Exit code once it has ended (-1 for death by signal).
    pub exit_code: Option<i32>,
    /// How it ended, e.g. "exit status 0" or "signal: killed".
    pub status: Option<String>,
    pub stdout: StreamRead,
    pub stderr: StreamRead,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DoneOutput {
    pub sandbox_id: String,
    pub pid: u32,
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandsListOutput {
    pub sandbox_id: String,
    pub processes: Vec<CommandInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileReadOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub file: FileRead,
    /// When truncated: the whole file as an MCP resource, also returned as a resource_link
    /// content block (read it with resources/read, at most 16 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_uri: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileWriteOutput {
    pub sandbox_id: String,
    /// Absolute path written.
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEditOutput {
    pub sandbox_id: String,
    pub path: String,
    pub replacements: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileListOutput {
    pub sandbox_id: String,
    pub entries: Vec<FileEntry>,
    /// True when max_entries cut the list.
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEntryOutput {
    pub sandbox_id: String,
    pub entry: FileEntry,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MkdirOutput {
    pub sandbox_id: String,
    pub entry: FileEntry,
    /// False when the directory already existed.
    pub created: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RemoveOutput {
    pub sandbox_id: String,
    pub path: String,
    pub removed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOutput {
    pub sandbox_id: String,
    pub matches: Vec<SearchMatch>,
    /// True when there were more matches than max_results.
    pub truncated: bool,
    /// grep's complaints (unreadable files and the like), if any.
    pub errors: String,
}

// ---------------------------------------------------------------------------------------
// Errors: one mapping, with the next step spelled out.

/// What a failed call was about, for the hint in its error text.
#[derive(Clone, Copy)]
pub(crate) enum About {
    Sandbox,
    Process,
    File,
}

pub(crate) fn explain(e: Error, about: About) -> String {
    match e {
        e @ Error::SandboxEnded { .. } => format!(
            "{e}; call sandbox_list to see live sandboxes, or omit sandbox_id to use your default sandbox"
        ),
        Error::SandboxNotFound(id) => format!(
            "sandbox '{id}' not found (it was killed or timed out); call sandbox_list to see live sandboxes, or omit sandbox_id to use your default sandbox"
        ),
        Error::TemplateNotFound(t) => {
            format!("template '{t}' not found; omit template to use the default one")
        }
        Error::InvalidArgument(m) => m,
        Error::Agent(c) => match (c.code, about) {
            (Code::NotFound, About::Process) => format!(
                "{}; the process has exited or never existed: call commands_list to see running processes",
                c.message
            ),
            (Code::NotFound, _) => format!(
                "{}; check the path with files_list on its directory (relative paths start at /home/user)",
                c.message
            ),
            (Code::PermissionDenied, _) => format!(
                "{}; files tools act as the sandbox's default user 'user': use commands_run with user \"root\" for system paths",
                c.message
            ),
            (Code::AlreadyExists, _) => format!("{}; choose another path", c.message),
            (Code::Unavailable, _) => format!(
                "the sandbox's agent did not answer ({}); the sandbox may have died: check it with sandbox_info, or omit sandbox_id to get a fresh default sandbox",
                c.message
            ),
            (Code::InvalidArgument, About::Process) => {
                format!("{}; check cwd and user (\"user\" or \"root\")", c.message)
            }
            _ => c.message,
        },
        Error::Unavailable(m) => format!("{m}; retry in a moment"),
        other => {
            let _ = about;
            other.to_string()
        }
    }
}

impl CoppiceMcp {
    pub fn new(state: McpState) -> Self {
        Self {
            state,
            session_key: format!("conn-{:016x}", rand::random::<u64>()),
            tool_router: &TOOL_ROUTER,
        }
    }

    /// Every tool group's router, combined. Each group (sandboxes, commands and files here;
    /// groups in their own modules with `#[tool_router(router = ...)]`) adds one term.
    fn all_tools() -> ToolRouter<Self> {
        let mut router = Self::tool_router()
            + Self::snapshot_router()
            + Self::network_router()
            + Self::code_router();
        for route in router.map.values_mut() {
            let tool = &mut route.attr;
            let mut input = (*tool.input_schema).clone();
            crate::schema_formats::keep_standard(&mut input);
            tool.input_schema = std::sync::Arc::new(input);
            if let Some(output) = &tool.output_schema {
                let mut output = (**output).clone();
                crate::schema_formats::keep_standard(&mut output);
                tool.output_schema = Some(std::sync::Arc::new(output));
            }
        }
        router
    }

    pub(crate) fn tools(&self) -> &Tools {
        &self.state.tools
    }

    /// The key of the caller's default sandbox: this connection or HTTP session; for
    /// session-less (stateless) HTTP requests, the client as known by its credentials and
    /// its name and version, so each agent still gets a sandbox of its own.
    fn key(&self, ctx: &RequestContext<RoleServer>) -> String {
        use std::hash::{BuildHasher, Hasher};
        match ctx.extensions.get::<http::request::Parts>() {
            Some(parts) if !parts.headers.contains_key("mcp-session-id") => {
                let mut h = self.state.client_keys.build_hasher();
                if let Some(auth) = parts.headers.get(http::header::AUTHORIZATION) {
                    h.write(auth.as_bytes());
                }
                h.write_u8(0);
                // The request's own `_meta` clientInfo (2026-07-28); rmcp's stateless peer
                // info is a placeholder.
                if let Some(info) = ctx.meta.client_info() {
                    h.write(info.name.as_bytes());
                    h.write_u8(0);
                    h.write(info.version.as_bytes());
                }
                format!("{STATELESS_KEY}-{:016x}", h.finish())
            }
            _ => self.session_key.clone(),
        }
    }

    pub(crate) async fn current_default(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        let key = self.key(ctx);
        let id = self.state.defaults.lock().await.get(&key).cloned()?;
        self.tools().sandbox_info(&id).ok().map(|_| id)
    }

    /// The sandbox a call acts on: the one named, else the session's default, created on
    /// first use (and kept alive by use: each call pushes its expiry out again).
    pub(crate) async fn sandbox(
        &self,
        id: Option<String>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<String, String> {
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            self.tools()
                .runtime()
                .check_visible(&id)
                .map_err(|e| explain(e, About::Sandbox))?;
            return Ok(id);
        }
        let key = self.key(ctx);
        let mut defaults = self.state.defaults.lock().await;
        if let Some(id) = defaults.get(&key).cloned() {
            let secs = self.tools().runtime().config().default_timeout_secs as f64;
            if self
                .tools()
                .set_timeout(&id, SetTimeout { timeout_secs: secs })
                .is_ok()
            {
                return Ok(id);
            }
            tracing::info!(sandbox = %id, "default sandbox is gone; creating a new one");
        }
        let info = self
            .tools()
            .create_sandbox(CreateSandbox {
                metadata: BTreeMap::from([("mcp_default_for".to_string(), key.clone())]),
                ..Default::default()
            })
            .await
            .map_err(|e| explain(e, About::Sandbox))?;
        tracing::info!(sandbox = %info.id, session = %key, "created a default sandbox");
        self.state.record_created(&info.id);
        defaults.insert(key, info.id.clone());
        Ok(info.id)
    }
}

impl CoppiceMcp {
    /// Saves a command's whole output (what `saved` kept of it) as `name` in the sandbox's
    /// [`SAVED_OUTPUT_DIR`]; returns its path and adds a link to it. Best effort: a sandbox
    /// where it cannot be written just gets no file.
    async fn save_output(
        &self,
        id: &str,
        name: &str,
        saved: &HeadTail,
        links: &mut Vec<Resource>,
    ) -> Option<String> {
        let data = saved.render().into_bytes();
        let size = data.len() as u64;
        let path = format!("{SAVED_OUTPUT_DIR}/{name}");
        match self.tools().write_file(id, &path, data).await {
            Ok(path) => {
                links.push(resources::file_link(id, &path, size, Some("text/plain")));
                Some(path)
            }
            Err(e) => {
                tracing::debug!(sandbox = id, "command output not saved to {path}: {e}");
                None
            }
        }
    }

    /// `resources/read` of a parsed URI.
    async fn read_target(
        &self,
        uri: &str,
        target: resources::Target,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ResourceContents, ErrorData> {
        let failed = |e| resources::read_error(uri, e);
        match target {
            resources::Target::Sandboxes => {
                let list = self.tools().list_sandboxes().map_err(failed)?;
                let out = SandboxListOutput {
                    sandboxes: list.into_iter().map(SandboxView::from).collect(),
                    default_sandbox_id: self.current_default(ctx).await,
                };
                resources::json_contents(uri, &out)
            }
            resources::Target::Sandbox(id) => {
                let info = self.tools().sandbox_info(&id).map_err(failed)?;
                let out = SandboxOutput {
                    is_default: self.current_default(ctx).await.as_deref() == Some(&id),
                    sandbox_id: id,
                    sandbox: info.into(),
                };
                resources::json_contents(uri, &out)
            }
            resources::Target::File(id, path) => {
                self.tools().sandbox_info(&id).map_err(failed)?;
                let (path, data) = self
                    .tools()
                    .read_file_bytes(&id, &path)
                    .await
                    .map_err(failed)?;
                Ok(resources::file_contents(uri, &path, data))
            }
        }
    }
}

/// Cache hints for 2026-07-28 peers: results are per caller and change at any time.
fn cache_hints(ctx: &RequestContext<RoleServer>) -> (Option<u64>, Option<CacheScope>) {
    let hints = ctx
        .protocol_version()
        .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
    (hints.then_some(0), hints.then_some(CacheScope::Private))
}

fn signal_of(s: Option<SignalName>) -> Signal {
    match s {
        Some(SignalName::Sigkill) => Signal::Sigkill,
        _ => Signal::Sigterm,
    }
}

#[tool_router]
impl CoppiceMcp {
    /// Create a new sandbox: an isolated Linux machine (Debian, network, a user "user" with
    /// home /home/user, root available). You rarely need this: every tool given no sandbox_id
    /// uses your session's default sandbox, created on first use.
    #[tool(annotations(
        title = "Create sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn sandbox_create(
        &self,
        Parameters(a): Parameters<CreateSandbox>,
    ) -> Result<Json<SandboxOutput>, String> {
        let info = self
            .tools()
            .create_sandbox(a)
            .await
            .map_err(|e| explain(e, About::Sandbox))?;
        self.state.record_created(&info.id);
        Ok(Json(SandboxOutput {
            sandbox_id: info.id.clone(),
            sandbox: info.into(),
            is_default: false,
        }))
    }

    /// List live sandboxes, with this session's default sandbox marked.
    #[tool(annotations(
        title = "List sandboxes",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_list(
        &self,
        Parameters(_): Parameters<EmptyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxListOutput>, String> {
        let list = self
            .tools()
            .list_sandboxes()
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxListOutput {
            sandboxes: list.into_iter().map(SandboxView::from).collect(),
            default_sandbox_id: self.current_default(&ctx).await,
        }))
    }

    /// Describe a sandbox: template, limits, expiry, address.
    #[tool(annotations(
        title = "Sandbox info",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_info(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .sandbox_info(&id)
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxOutput {
            is_default: self.current_default(&ctx).await.as_deref() == Some(&id),
            sandbox_id: id,
            sandbox: info.into(),
        }))
    }

    /// Kill a sandbox and everything in it; its files are gone. Without sandbox_id, kills
    /// this session's default sandbox (the next call creates a fresh one).
    #[tool(annotations(
        title = "Kill sandbox",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_kill(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<KillOutput>, String> {
        let id = match a.sandbox_id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => self.current_default(&ctx).await.ok_or_else(|| {
                "this session has no default sandbox yet; pass sandbox_id (see sandbox_list)"
                    .to_string()
            })?,
        };
        self.tools()
            .kill_sandbox(&id)
            .await
            .map_err(|e| explain(e, About::Sandbox))?;
        self.state.defaults.lock().await.retain(|_, v| *v != id);
        Ok(Json(KillOutput {
            sandbox_id: id,
            killed: true,
        }))
    }

    /// Set how long a sandbox lives from now (it is killed then). The default sandbox is
    /// extended automatically while you use it.
    #[tool(annotations(
        title = "Set sandbox timeout",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn sandbox_set_timeout(
        &self,
        Parameters(a): Parameters<SetTimeoutArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let info = self
            .tools()
            .set_timeout(
                &id,
                SetTimeout {
                    timeout_secs: a.timeout_secs,
                },
            )
            .map_err(|e| explain(e, About::Sandbox))?;
        Ok(Json(SandboxOutput {
            is_default: self.current_default(&ctx).await.as_deref() == Some(&id),
            sandbox_id: id,
            sandbox: info.into(),
        }))
    }

    /// Run a shell command to completion and return its exit code, stdout and stderr. Output
    /// streams as progress notifications when the call carries a progress token; cancelling
    /// the call kills the command. Output over the cap is cut in the middle and saved whole
    /// in a file (stdout_file, stderr_file). For servers and other long-running work use
    /// commands_start.
    #[tool(
        annotations(
            title = "Run command",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        ),
        output_schema = schema_for_output::<RunOutput>()
    )]
    async fn commands_run(
        &self,
        Parameters(a): Parameters<RunArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let explicit = a.sandbox_id.as_deref().is_some_and(|s| !s.is_empty());
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let timeout_secs = a.timeout_secs.unwrap_or(600.0);
        if !explicit && timeout_secs.is_finite() && timeout_secs > 0.0 {
            // The default sandbox must outlive the command (the reaper would kill it first).
            let keep = self.tools().runtime().config().default_timeout_secs as f64;
            let _ = self.tools().set_timeout(
                &id,
                SetTimeout {
                    timeout_secs: keep.max(timeout_secs + 60.0),
                },
            );
        }
        let req = RunCommand {
            cmd: a.cmd,
            cwd: a.cwd,
            env: a.env,
            user: a.user,
            timeout_secs: Some(timeout_secs),
            stdin: a.stdin,
            max_output_bytes: a
                .max_output_bytes
                .unwrap_or(DEFAULT_MAX_OUTPUT)
                .clamp(64, MAX_OUTPUT_CAP),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OutputStream, Vec<u8>)>();
        let token = ctx.meta.get_progress_token();
        let on_output = move |stream: OutputStream, data: &[u8]| {
            let _ = tx.send((stream, data.to_vec()));
        };
        let peer = ctx.peer.clone();
        // Progress: one notification per output chunk, `progress` = bytes so far. All output
        // is also kept (bounded) in case the result has to cut it.
        let forward = async move {
            let mut total = 0u64;
            let mut saved = (
                HeadTail::new(SAVED_OUTPUT_BYTES),
                HeadTail::new(SAVED_OUTPUT_BYTES),
            );
            while let Some((stream, data)) = rx.recv().await {
                total += data.len() as u64;
                match stream {
                    OutputStream::Stdout => saved.0.push(&data),
                    OutputStream::Stderr => saved.1.push(&data),
                }
                if let Some(token) = &token {
                    let mut text = String::from_utf8_lossy(&data).into_owned();
                    if text.len() > 8192 {
                        let mut cut = 8192;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                        text.push('…');
                    }
                    let label = match stream {
                        OutputStream::Stdout => "stdout",
                        OutputStream::Stderr => "stderr",
                    };
                    let note = ProgressNotificationParam::new(token.clone(), total as f64)
                        .with_message(format!("[{label}] {text}"));
                    if let Err(e) = peer.notify_progress(note).await {
                        tracing::debug!("progress notification not sent: {e}");
                    }
                }
            }
            saved
        };
        let run = self
            .tools()
            .run_command(&id, req, on_output, ctx.ct.clone());
        let (result, (saved_out, saved_err)) = tokio::join!(run, forward);
        let result = result.map_err(|e| explain(e, About::Process))?;
        let mut links = Vec::new();
        let mut out = RunOutput {
            sandbox_id: id,
            stdout_file: None,
            stderr_file: None,
            result,
        };
        if !out.result.cancelled {
            let pid = out.result.pid;
            if out.result.stdout_truncated {
                out.stdout_file = self
                    .save_output(
                        &out.sandbox_id,
                        &format!("{pid}-stdout.log"),
                        &saved_out,
                        &mut links,
                    )
                    .await;
            }
            if out.result.stderr_truncated {
                out.stderr_file = self
                    .save_output(
                        &out.sandbox_id,
                        &format!("{pid}-stderr.log"),
                        &saved_err,
                        &mut links,
                    )
                    .await;
            }
        }
        let value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        let mut result = CallToolResult::structured(value);
        result
            .content
            .extend(links.into_iter().map(ContentBlock::resource_link));
        Ok(result)
    }

    /// Start a shell command in the background and return its pid at once. Read its output
    /// with commands_read, feed it with commands_write_stdin, stop it with commands_signal.
    #[tool(annotations(
        title = "Start background command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn commands_start(
        &self,
        Parameters(a): Parameters<StartArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<StartOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let pid = self
            .tools()
            .start_command(
                &id,
                StartCommand {
                    cmd: a.cmd,
                    cwd: a.cwd,
                    env: a.env,
                    user: a.user,
                    timeout_secs: a.timeout_secs,
                },
            )
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(StartOutput {
            sandbox_id: id,
            pid,
        }))
    }

    /// Read a background command's output since the given offsets, optionally waiting for it
    /// to exit first. Returns whether it is still running and its exit code once it is not.
    #[tool(annotations(
        title = "Read command output",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_read(
        &self,
        Parameters(a): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        if !(a.wait_secs.is_finite() && a.wait_secs >= 0.0) {
            return Err("wait_secs must be a number of seconds from 0 to 300".into());
        }
        let wait = Duration::from_secs_f64(a.wait_secs.min(300.0));
        let read = self.tools().read_command(
            &id,
            a.pid,
            a.stdout_offset,
            a.stderr_offset,
            wait,
            a.max_bytes.unwrap_or(DEFAULT_MAX_OUTPUT).max(1),
        );
        // A cancelled call stops waiting.
        let out = tokio::select! {
            r = read => r.map_err(|e| explain(e, About::Process))?,
            _ = ctx.ct.cancelled() => return Err("cancelled".into()),
        };
        Ok(Json(ReadOutput {
            sandbox_id: id,
            pid: out.pid,
            cmd: out.cmd,
            running: out.running,
            exit_code: out.exit_code,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    /// Write text to a background command's standard input; optionally close it after.
    #[tool(annotations(
        title = "Write to command stdin",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn commands_write_stdin(
        &self,
        Parameters(a): Parameters<WriteStdinArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DoneOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .write_stdin(&id, a.pid, a.data.as_bytes(), a.close)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.pid,
            ok: true,
        }))
    }

    /// Send SIGTERM or SIGKILL to a process and its process group.
    #[tool(annotations(
        title = "Signal command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_signal(
        &self,
        Parameters(a): Parameters<SignalArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DoneOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .signal_process(&id, a.pid, signal_of(a.signal))
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(DoneOutput {
            sandbox_id: id,
            pid: a.pid,
            ok: true,
        }))
    }

    /// List the sandbox's running processes started through Coppice, and background commands
    /// that have finished (with their exit codes).
    #[tool(annotations(
        title = "List commands",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn commands_list(
        &self,
        Parameters(a): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CommandsListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let processes = self
            .tools()
            .list_commands(&id)
            .await
            .map_err(|e| explain(e, About::Process))?;
        Ok(Json(CommandsListOutput {
            sandbox_id: id,
            processes,
        }))
    }

    /// Read a file. Text comes back as lines (1-based offset/limit, 2000 lines by default,
    /// next_offset when more follow); PNG, JPEG, GIF and WebP images come back as image
    /// content; other binary files as base64.
    #[tool(
        annotations(
            title = "Read file",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schema_for_output::<FileReadOutput>()
    )]
    async fn files_read(
        &self,
        Parameters(a): Parameters<ReadFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let mut file = self
            .tools()
            .read_file(&id, &a.path, a.offset, a.limit)
            .await
            .map_err(|e| explain(e, About::File))?;
        let image = file.image_base64.take();
        // Too large to inline: link the whole file instead.
        let link = file.truncated.then(|| {
            let mime = file
                .mime_type
                .as_deref()
                .or_else(|| resources::mime_by_extension(&file.path));
            resources::file_link(&id, &file.path, file.size, mime)
        });
        // Binary bytes travel once, in structuredContent; the text block repeats them only when
        // small (a megabyte of base64 is no use in a model's context and doubles the reply).
        let bytes_b64 = file.base64.take();
        let out = FileReadOutput {
            sandbox_id: id,
            resource_uri: link.as_ref().map(|l| l.uri.clone()),
            file,
        };
        let mut value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        let mut result = match bytes_b64 {
            Some(b64) if b64.len() > INLINE_TEXT_BASE64 => {
                let mut result = CallToolResult::structured(value);
                result.content.push(ContentBlock::text(format!(
                    "{} bytes of binary data, base64-encoded in structuredContent.base64 (too large to repeat here).",
                    out.file.size
                )));
                if let Some(map) = result
                    .structured_content
                    .as_mut()
                    .and_then(|v| v.as_object_mut())
                {
                    map.insert("base64".into(), serde_json::Value::String(b64));
                }
                result
            }
            Some(b64) => {
                if let Some(map) = value.as_object_mut() {
                    map.insert("base64".into(), serde_json::Value::String(b64));
                }
                CallToolResult::structured(value)
            }
            None => CallToolResult::structured(value),
        };
        if let (Some(data), ContentKind::Image) = (image, out.file.kind) {
            let mime = out.file.mime_type.clone().unwrap_or_default();
            result.content.push(ContentBlock::image(data, mime));
        }
        result.content.extend(link.map(ContentBlock::resource_link));
        Ok(result)
    }

    /// Write a file (text, or bytes as base64), creating missing parent directories and
    /// replacing any existing file.
    #[tool(annotations(
        title = "Write file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_write(
        &self,
        Parameters(a): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileWriteOutput>, String> {
        let data = match a.encoding {
            Encoding::Utf8 => a.content.into_bytes(),
            Encoding::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(a.content.trim())
                    .map_err(|e| format!("content is not valid base64 ({e}); send text with encoding \"utf8\" or fix the encoding"))?
            }
        };
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let bytes = data.len() as u64;
        let path = self
            .tools()
            .write_file(&id, &a.path, data)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileWriteOutput {
            sandbox_id: id,
            path,
            bytes,
        }))
    }

    /// Replace an exact string in a text file. old_string must occur exactly once (add
    /// surrounding lines to make it unique) unless replace_all is set.
    #[tool(annotations(
        title = "Edit file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn files_edit(
        &self,
        Parameters(a): Parameters<EditFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEditOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (path, replacements) = self
            .tools()
            .edit_file(&id, &a.path, &a.old_string, &a.new_string, a.replace_all)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEditOutput {
            sandbox_id: id,
            path,
            replacements,
        }))
    }

    /// List a directory, optionally several levels deep and filtered by a glob.
    #[tool(annotations(
        title = "List files",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_list(
        &self,
        Parameters(a): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (entries, truncated) = self
            .tools()
            .list_files(
                &id,
                a.path.as_deref().unwrap_or(""),
                a.depth.unwrap_or(1).clamp(1, 10),
                a.glob.as_deref(),
                a.max_entries.unwrap_or(1000).max(1),
            )
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileListOutput {
            sandbox_id: id,
            entries,
            truncated,
        }))
    }

    /// Size, type, permissions, owner and modification time of a path.
    #[tool(annotations(
        title = "Stat file",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_stat(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEntryOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let entry = self
            .tools()
            .stat(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEntryOutput {
            sandbox_id: id,
            entry,
        }))
    }

    /// Create a directory and any missing parents (no error if it exists).
    #[tool(annotations(
        title = "Make directory",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_mkdir(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MkdirOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (entry, created) = self
            .tools()
            .make_dir(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(MkdirOutput {
            sandbox_id: id,
            entry,
            created,
        }))
    }

    /// Move or rename a file or directory.
    #[tool(annotations(
        title = "Move file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn files_move(
        &self,
        Parameters(a): Parameters<MoveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEntryOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let entry = self
            .tools()
            .move_file(&id, &a.source, &a.destination)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEntryOutput {
            sandbox_id: id,
            entry,
        }))
    }

    /// Remove a file, or a directory with everything in it.
    #[tool(annotations(
        title = "Remove file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_remove(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RemoveOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .remove_file(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(RemoveOutput {
            sandbox_id: id,
            path: a.path,
            removed: true,
        }))
    }

    /// Search file contents for a regular expression (grep -E), recursively; returns
    /// path, line number and line for each match, capped at max_results.
    #[tool(annotations(
        title = "Search files",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_search(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let res = self
            .tools()
            .search_files(
                &id,
                Search {
                    pattern: a.pattern,
                    path: a.path.unwrap_or_default(),
                    glob: a.glob,
                    case_insensitive: a.case_insensitive,
                    max_results: a.max_results.unwrap_or(100).clamp(1, 1000),
                },
            )
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(SearchOutput {
            sandbox_id: id,
            matches: res.matches,
            truncated: res.truncated,
            errors: res.errors,
        }))
    }
}

fn instructions(mode: Mode, network: bool) -> String {
    let where_ = match mode {
        Mode::Daemon => {
            "Connected to the Coppice daemon: sandboxes are shared with its HTTP API and CLI and outlive this session until they time out."
        }
        Mode::Embedded => {
            "No Coppice daemon was running, so this server runs an embedded runtime: sandboxes it creates are killed when this session ends. Start `coppice serve` to keep sandboxes across sessions."
        }
    };
    let net = if network {
        "with network access"
    } else {
        "without network"
    };
    format!(
        "Coppice gives you isolated Linux sandboxes (Debian, {net}). {where_}\n\
         Every tool takes an optional sandbox_id; omit it to use your own default sandbox, created on first use, reused across your calls, kept alive while you use it, and named in every result.\n\
         Commands run as `/bin/bash -lc CMD` as user \"user\" (home /home/user) unless user is \"root\"; relative file paths start at /home/user.\n\
         Use commands_run for commands that finish, commands_start + commands_read for servers and long jobs, files_* for file work (files_edit for exact-string edits)."
    )
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CoppiceMcp {
    #[allow(deprecated)] // enable_logging: 2025-11-25 clients still call logging/setLevel
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            // Prompts (none yet) and logging are advertised so that clients probing them get
            // well-formed answers instead of method-not-found.
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("coppice", env!("CARGO_PKG_VERSION")))
        .with_instructions(instructions(
            self.state.mode,
            self.tools().runtime().config().network,
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let ids: Vec<String> = self
            .tools()
            .list_sandboxes()
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources::listed(&ids));
        (result.ttl_ms, result.cache_scope) = cache_hints(&ctx);
        Ok(result)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let mut result = ListPromptsResult::default();
        (result.ttl_ms, result.cache_scope) = cache_hints(&ctx);
        Ok(result)
    }

    /// Accepted for older clients; the server sends no log notifications (its logs go to
    /// stderr), so every level is already honoured. (Logging is deprecated by SEP-2577.)
    #[allow(deprecated)]
    async fn set_level(
        &self,
        _request: rmcp::model::SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut result = ListResourceTemplatesResult::with_all_items(resources::templates());
        (result.ttl_ms, result.cache_scope) = cache_hints(&ctx);
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let target = resources::parse(&uri).ok_or_else(|| resources::unknown_uri(&uri))?;
        let contents = self.read_target(&uri, target, &ctx).await?;
        let mut result = ReadResourceResult::new(vec![contents]);
        (result.ttl_ms, result.cache_scope) = cache_hints(&ctx);
        Ok(result.into())
    }

    /// The stand-in for a request over the size limit (see `crate::stdio`).
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        if request.method != OVERSIZED_METHOD {
            return Err(ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("unknown method {}", request.method),
                None,
            ));
        }
        let bytes = request
            .params
            .as_ref()
            .and_then(|p| p.get("bytes"))
            .and_then(|b| b.as_u64())
            .unwrap_or_default();
        Err(ErrorData::invalid_request(
            format!(
                "request too large: {bytes} bytes, over the {MAX_MESSAGE_BYTES}-byte limit on one MCP message; send large file content in parts (files_write each part, then join them with commands_run `cat part1 part2 > file`), or produce the data inside the sandbox with commands_run"
            ),
            Some(serde_json::json!({ "bytes": bytes, "limit": MAX_MESSAGE_BYTES })),
        ))
    }
}

/// Every tool as listed to clients (for the generated reference).
pub fn tool_list() -> Vec<rmcp::model::Tool> {
    CoppiceMcp::all_tools().list_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client's validator sees: no format JSON Schema does not define, in any tool.
    #[test]
    fn tool_schemas_carry_only_standard_formats() {
        let standard = [
            "date-time",
            "uri",
            "uuid",
            "ipv4",
            "ipv6",
            "hostname",
            "email",
        ];
        fn formats(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(serde_json::Value::String(f)) = o.get("format") {
                        out.push(f.clone());
                    }
                    o.values().for_each(|v| formats(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let router = CoppiceMcp::all_tools();
        assert!(router.map.len() >= 20);
        for route in router.map.values() {
            let mut found = Vec::new();
            formats(
                &serde_json::Value::Object((*route.attr.input_schema).clone()),
                &mut found,
            );
            if let Some(o) = &route.attr.output_schema {
                formats(&serde_json::Value::Object((**o).clone()), &mut found);
            }
            found.retain(|f| !standard.contains(&f.as_str()));
            assert!(found.is_empty(), "{}: {found:?}", route.attr.name);
        }
    }
}
