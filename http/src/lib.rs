//! The daemon's HTTP app. Handlers only translate HTTP to tool calls and results back; the
//! same app is served on loopback TCP and on the unix control socket used by the CLI.

mod agent_proxy;
mod browser_cdp;
pub mod e2b;
pub mod guard;
mod stream_end;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use coppice_envd::Code;
use coppice_runtime::Error;
use coppice_tools::Tools;
use coppice_tools::commands::Exec;
use coppice_tools::sandboxes::{BuildTemplate, CreateSandbox, SetTimeout};
use futures::StreamExt;

mod lifecycle;
mod network;
mod snapshots;
mod terminal_page;
mod terminal_ws;
mod terminals;

/// The daemon's app without MCP or credentials (see [`unix_app`] and [`tcp_app`]).
pub fn app(tools: Tools) -> Router {
    api(tools).route("/health", get(health))
}

/// Liveness: always answered, with no auth (it says nothing but "up").
async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn api(tools: Tools) -> Router {
    Router::new()
        .route("/api/v1/sandboxes", post(create).get(list))
        .route("/api/v1/sandboxes/{id}", get(info).delete(kill))
        .route("/api/v1/sandboxes/{id}/timeout", post(set_timeout))
        .route("/api/v1/sandboxes/{id}/exec", post(exec))
        .route(
            "/api/v1/sandboxes/{id}/network",
            get(network::get).put(network::set),
        )
        .route("/api/v1/sandboxes/{id}/envd/{*rest}", any(envd_proxy))
        .route("/api/v1/templates", get(templates).post(build_template))
        .route("/metrics", get(metrics))
        .merge(lifecycle::routes())
        .merge(snapshots::routes())
        .merge(terminals::routes())
        .merge(browser_cdp::routes())
        .with_state(Arc::new(tools))
}

/// Prometheus scrape (OpenMetrics text), behind the listener's credentials like the API.
async fn metrics(State(t): State<Arc<Tools>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.metrics_text().await,
    )
        .into_response()
}

/// The root-only unix socket's app: the native API and MCP (streamable HTTP at `/mcp`, the
/// stdio upgrade at `/mcp-stdio`) with no credential, and `GET /api/v1/token`, the TCP
/// listener's bearer token (`coppice token` prints it for clients that use TCP).
pub fn unix_app(tools: Tools, mcp: coppice_mcp::McpState, api_token: String) -> Router {
    let token = Arc::new(serde_json::json!({ "token": api_token }));
    with_mcp(api(tools), mcp, Default::default()).route(
        "/api/v1/token",
        get(move || {
            let token = token.clone();
            async move { Json((*token).clone()) }
        }),
    )
}

fn with_mcp(
    api: Router,
    mcp: coppice_mcp::McpState,
    opts: coppice_mcp::http::HttpOptions,
) -> Router {
    let app = api.merge(coppice_mcp::http::router(mcp, opts.clone()));
    // The token guards the whole listener (native API and envd proxy too), not just /mcp;
    // only the liveness probe stays open.
    guard::require_bearer(app, &opts).route("/health", get(health))
}

/// The TCP listener's app (docs/security.md): the native API and MCP behind the bearer
/// token, sandbox traffic of a sandbox with an access token behind that token too, the E2B
/// surface with its own credentials, and on loopback the Host/Origin check in front of all.
pub fn tcp_app(
    tools: Tools,
    mcp: coppice_mcp::McpState,
    opts: coppice_mcp::http::HttpOptions,
    e2b: e2b::E2bOptions,
) -> Router {
    let hosts = (!opts.allowed_hosts.is_empty())
        .then(|| guard::AllowedHosts::new(&opts.allowed_hosts, e2b.domain.as_deref()));
    let api = guard::access_token_guard(api(tools.clone()), tools.clone());
    let app = e2b::mount(with_mcp(api, mcp, opts), tools, e2b);
    match hosts {
        Some(hosts) => guard::host_guard(app, hosts),
        None => app,
    }
}

type AppState = State<Arc<Tools>>;

/// Errors as `{"code": "...", "message": "..."}` with a matching status.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The Connect-style code every surface maps an error to.
pub fn error_code(e: &Error) -> Code {
    match e {
        Error::SandboxNotFound(_)
        | Error::SandboxEnded { .. }
        | Error::TemplateNotFound(_)
        | Error::SnapshotNotFound(_)
        | Error::ContextNotFound(_)
        | Error::TerminalNotFound { .. } => Code::NotFound,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) | Error::UnknownLanguage(_) => Code::InvalidArgument,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Unavailable(_) => Code::Unavailable,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::HostUnsupported(_) => Code::FailedPrecondition,
        Error::Agent(c) => c.code,
        Error::Io { .. } | Error::State(_) | Error::Internal(_) => Code::Internal,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = error_code(&self.0);
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "code": code, "message": self.0.to_string() });
        (status, Json(body)).into_response()
    }
}

async fn create(State(t): AppState, Json(req): Json<CreateSandbox>) -> Result<Response, ApiError> {
    let info = t.create_sandbox(req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(t): AppState) -> Result<Response, ApiError> {
    Ok(Json(t.list_sandboxes()?).into_response())
}

async fn info(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(t.sandbox_info(&id)?).into_response())
}

async fn kill(State(t): AppState, Path(id): Path<String>) -> Result<Response, ApiError> {
    t.kill_sandbox(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_timeout(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<SetTimeout>,
) -> Result<Response, ApiError> {
    Ok(Json(t.set_timeout(&id, req)?).into_response())
}

async fn templates(State(t): AppState) -> Result<Response, ApiError> {
    Ok(Json(t.list_templates()?).into_response())
}

/// Streams build progress as NDJSON lines ending with a `done` or `error` line.
async fn build_template(State(t): AppState, Json(req): Json<BuildTemplate>) -> Response {
    let rx = t.build_template(req);
    let lines = tokio_stream_from(rx).map(|ev| Ok::<_, std::convert::Infallible>(ndjson(&ev)));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn ndjson<T: serde::Serialize>(v: &T) -> bytes::Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

/// Streams the command's events as NDJSON, one line per event, as they happen.
async fn exec(
    State(t): AppState,
    Path(id): Path<String>,
    Json(req): Json<Exec>,
) -> Result<Response, ApiError> {
    let events = t.exec(&id, req).await?;
    let lines = events.map(|ev| {
        let value = match ev {
            Ok(ev) => serde_json::to_value(ev).unwrap_or_default(),
            Err(e) => serde_json::json!({ "type": "error", "code": error_code(&e), "message": e.to_string() }),
        };
        Ok::<_, std::convert::Infallible>(ndjson(&value))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Forwards a request to the sandbox's agent, streaming both ways.
async fn envd_proxy(
    State(t): AppState,
    Path((id, rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let agent = t.agent(&id)?;
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let resp = agent_proxy::forward(&agent, req, Some(format!("/{rest}{query}"))).await?;
    Ok(stream_end::end_broken_streams(resp, (*t).clone(), id))
}
