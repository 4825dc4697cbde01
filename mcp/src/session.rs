//! Who a call acts for: the state every handler shares, the MCP handler value itself, and the
//! per-session default sandbox (created on first use, kept alive by use).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use coppice_tools::Tools;
use coppice_tools::sandboxes::CreateSandbox;
use rmcp::RoleServer;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::service::RequestContext;

use crate::explain::{About, explain};

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
    /// The tool layer every tool call goes through.
    pub tools: Tools,
    /// How the server runs (embedded in a CLI process or in the daemon).
    pub mode: Mode,
    /// Default sandbox per session key.
    pub(crate) defaults: Arc<tokio::sync::Mutex<HashMap<String, String>>>,
    /// Every sandbox created through this state (the embedded mode kills them at exit).
    created: Arc<std::sync::Mutex<Vec<String>>>,
    /// Keys for stateless HTTP clients' defaults (random per daemon: credentials never show).
    client_keys: std::hash::RandomState,
}

impl McpState {
    /// Shared state with no default sandboxes yet.
    pub fn new(tools: Tools, mode: Mode) -> Self {
        Self {
            tools,
            mode,
            defaults: Default::default(),
            created: Default::default(),
            client_keys: Default::default(),
        }
    }

    pub(crate) fn record_created(&self, id: &str) {
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
    pub(crate) state: McpState,
    /// Identifies this connection's (or HTTP session's) default sandbox.
    pub(crate) session_key: String,
    pub(crate) tool_router: &'static ToolRouter<Self>,
}

/// Key shared by stateless (2026-07-28) HTTP requests, which have no session.
const STATELESS_KEY: &str = "http-stateless";

impl CoppiceMcp {
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
                .check_visible(&id)
                .map_err(|e| explain(e, About::Sandbox))?;
            return Ok(id);
        }
        let key = self.key(ctx);
        let mut defaults = self.state.defaults.lock().await;
        if let Some(id) = defaults.get(&key).cloned() {
            if self.tools().touch_sandbox(&id).is_ok() {
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
