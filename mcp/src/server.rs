//! The MCP handler: one rmcp tool per capability, each a thin adapter over `Tools`.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CacheScope, CustomRequest, CustomResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};

use crate::limits::{MAX_MESSAGE_BYTES, OVERSIZED_METHOD};
use crate::resources;
use crate::sandbox_tools::{SandboxListOutput, SandboxOutput, SandboxView};
use crate::session::{CoppiceMcp, McpState, Mode};

/// stateless HTTP makes a handler twice per request.
static TOOL_ROUTER: std::sync::LazyLock<ToolRouter<CoppiceMcp>> =
    std::sync::LazyLock::new(CoppiceMcp::all_tools);

impl CoppiceMcp {
    /// The MCP server of one session over shared state.
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
        let mut router = Self::sandbox_router()
            + Self::command_router()
            + Self::file_router()
            + Self::snapshot_router()
            + Self::network_router()
            + Self::code_router()
            + Self::terminal_router()
            + Self::browser_router()
            + Self::browser_input_router();
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
}

impl CoppiceMcp {
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
    /// The router's call, timed and counted by tool and outcome for `/metrics`.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        let started = std::time::Instant::now();
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let result = self.tool_router.call(tcc).await;
        let ok = match &result {
            Ok(rmcp::model::CallToolResponse::Complete(r)) => r.is_error != Some(true),
            Ok(_) => true,
            Err(_) => false,
        };
        // Unknown names are the caller's mistake, not a tool: one series, not one per typo.
        let tool = if self.tool_router.has_route(&tool) {
            tool
        } else {
            "unknown".into()
        };
        self.tools()
            .telemetry()
            .tool_called(&tool, ok, started.elapsed());
        result
    }

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
            self.tools().defaults().network,
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
