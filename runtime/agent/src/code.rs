//! Code kernels: the E2B code-interpreter routes (`POST /execute`, `/contexts`) on the agent's
//! socket, at exactly E2B's paths so the host's port-49999 proxy forwards them unchanged.
//! Contexts and the Jupyter protocol live in coppice-kernel; this module supplies how kernels
//! are started (as the sandbox user, through the PID-1 reaper) and the HTTP framing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use coppice_kernel::Contexts;
use coppice_kernel::kernel::{LaunchSpec, Launched, Launcher};
use coppice_kernel::wire::{CreateContext, ExecuteRequest, OutputLine};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use serde::Deserialize;

use crate::env::Env;
use crate::process::{child_env, prepare_as_user};
use crate::users;

/// A line is sent after this long without output, so proxies and clients see a live stream.
/// It is also how a caller that went away is noticed (the write fails; hyper does not watch
/// an idle request's socket), which interrupts the kernel: keep it short.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// Kernel connection files and logs: root's, outside the user's home.
const RUN_DIR: &str = "/tmp/.coppice-kernels";

/// The code service: the sandbox's environment and its code contexts, created on first use
/// (kernels run as the agent's default user).
pub struct CodeService {
    env: Arc<Env>,
    contexts: OnceLock<Arc<Contexts>>,
}

impl CodeService {
    pub fn new(env: Arc<Env>) -> Self {
        Self {
            env,
            contexts: OnceLock::new(),
        }
    }

    fn contexts(&self) -> &Arc<Contexts> {
        self.contexts.get_or_init(|| {
            let home = users::lookup(&self.env.default_user)
                .map(|u| u.home)
                .unwrap_or_else(|_| PathBuf::from("/"));
            let launcher = Arc::new(AgentLauncher {
                env: self.env.clone(),
            });
            Arc::new(Contexts::new(launcher, PathBuf::from(RUN_DIR), home))
        })
    }
}

pub fn router() -> Router<Arc<CodeService>> {
    Router::new()
        .route("/execute", post(execute))
        .route("/contexts", post(create).get(list))
        .route("/contexts/warm", post(warm))
        .route("/contexts/reconnect", post(reconnect))
        .route("/contexts/{id}/restart", post(restart))
        .route("/contexts/{id}", delete(remove))
        .route("/contexts/kernelspecs", get(kernelspecs))
}

struct AgentLauncher {
    env: Arc<Env>,
}

impl Launcher for AgentLauncher {
    fn launch(&self, spec: &LaunchSpec) -> std::io::Result<Launched> {
        let user =
            users::lookup(&self.env.default_user).map_err(|e| std::io::Error::other(e.message))?;
        let env = child_env(&user, &spec.env, &BTreeMap::new());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(&env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        prepare_as_user(&mut cmd, &user);
        // Through the reaper: PID 1 reaps every child, and only it may report this one's exit.
        let (child, exit) = crate::reaper::spawn(&mut cmd)?;
        let pid = child.id();
        drop(child);
        let (tx, exited) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let how = match exit.await {
                Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
                Ok(other) => format!("{other:?}"),
                Err(_) => "lost track of the process".into(),
            };
            tracing::info!(pid, "kernel process ended: {how}");
            let _ = tx.send(how);
        });
        tracing::info!(pid, argv = ?spec.argv, "kernel started");
        Ok(Launched { pid, exited })
    }

    fn signal(&self, pid: u32, signal: i32) -> bool {
        match Signal::try_from(signal) {
            Ok(sig) => crate::reaper::signal_group(pid, sig),
            Err(_) => false,
        }
    }

    fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(()); // development: kernels run as ourselves
        }
        let user =
            users::lookup(&self.env.default_user).map_err(|e| std::io::Error::other(e.message))?;
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
    }

    fn sandbox_env(&self) -> BTreeMap<String, String> {
        self.env.env_snapshot()
    }
}

/// Errors as E2B's server sends them: plain text with the status.
fn error_response(e: coppice_kernel::Error) -> Response {
    use coppice_kernel::Error as E;
    let status = match &e {
        E::BadRequest(_) | E::UnknownLanguage(_) => StatusCode::BAD_REQUEST,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Start(_) | E::Died(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let kind = [(coppice_kernel::wire::ERROR_KIND_HEADER, e.kind())];
    (status, kind, e.to_string()).into_response()
}

/// JSON bodies parsed by hand: the SDKs' Content-Type varies, and an empty body means defaults.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON request body: {e}"))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// `POST /execute`: NDJSON, one line per output, `end_of_execution` last, keepalives between.
async fn execute(State(state): State<Arc<CodeService>>, body: Bytes) -> Response {
    let req: ExecuteRequest = match parse(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    let rx = match state.contexts().execute(req) {
        Ok(rx) => rx,
        Err(e) => return error_response(e),
    };
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let line = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(line)) => line,
            // The execution task always ends with end_of_execution; a closed channel without
            // it means the task is gone.
            Ok(None) => return None,
            Err(_) => OutputLine::Keepalive,
        };
        let mut done = line == OutputLine::EndOfExecution;
        let mut buf = line.to_ndjson();
        // Lines already waiting go out in the same chunk: a short execution's result and
        // end_of_execution then cost one write and one proxied frame instead of one each.
        while !done && let Ok(next) = rx.try_recv() {
            done = next == OutputLine::EndOfExecution;
            buf.extend_from_slice(&next.to_ndjson());
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(buf)),
            (!done).then_some(rx),
        ))
    });
    // The response head waits for the first chunk (at most KEEPALIVE, when a keepalive line
    // is due anyway): head and output then leave in one write, and every hop (the daemon's
    // proxy, its tools) wakes once for them instead of twice. For a short execution the first
    // chunk is the whole output, end_of_execution included.
    let mut stream = Box::pin(stream);
    let first = futures::StreamExt::next(&mut stream).await;
    let body = futures::StreamExt::chain(futures::stream::iter(first), stream);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .expect("static response")
}

async fn create(State(state): State<Arc<CodeService>>, body: Bytes) -> Response {
    let req: CreateContext = match parse(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    match state
        .contexts()
        .create(req.language.as_deref(), req.cwd.as_deref())
        .await
    {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => error_response(e),
    }
}

/// Every context, the default ones included (E2B lists them; `?all=true`, which older hosts
/// send, asks for the same).
async fn list(State(state): State<Arc<CodeService>>) -> Response {
    axum::Json(state.contexts().list_all()).into_response()
}

/// Coppice: the host says the sandbox resumed from a memory snapshot; the kernels are
/// reconnected (their own state is intact).
async fn reconnect(State(state): State<Arc<CodeService>>) -> Response {
    if let Some(contexts) = state.contexts.get() {
        contexts.reconnect_all().await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn restart(State(state): State<Arc<CodeService>>, UrlPath(id): UrlPath<String>) -> Response {
    match state.contexts().restart(&id).await {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => error_response(e),
    }
}

async fn remove(State(state): State<Arc<CodeService>>, UrlPath(id): UrlPath<String>) -> Response {
    match state.contexts().remove(&id).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Default, Deserialize)]
struct WarmRequest {
    #[serde(default)]
    language: Option<String>,
}

/// Coppice extension: starts the default context of a language (Python) now, so the first
/// execution does not wait for the kernel. 400 when the template has no such kernel.
async fn warm(State(state): State<Arc<CodeService>>, body: Bytes) -> Response {
    let req: WarmRequest = match parse(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    match state
        .contexts()
        .warm(req.language.as_deref().unwrap_or("python"))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

/// Coppice extension: the kernelspecs installed in the sandbox (name → language).
async fn kernelspecs(State(state): State<Arc<CodeService>>) -> Response {
    let home = users::lookup(&state.env.default_user)
        .map(|u| u.home)
        .unwrap_or_else(|_| PathBuf::from("/"));
    let specs = coppice_kernel::contexts::find_kernelspecs(
        &coppice_kernel::contexts::kernelspec_dirs(&home),
    );
    let map: BTreeMap<String, String> = specs
        .into_iter()
        .map(|(name, s)| (name, s.spec.language.to_ascii_lowercase()))
        .collect();
    axum::Json(map).into_response()
}
