//! coppice-agent: the daemon inside every sandbox. On Linux it is PID 1 of the sandbox's pid
//! namespace (so it also reaps orphans), and it serves the envd-compatible API on a unix socket
//! whose listening fd the host hands it (the host reaches processes and files only through it).

mod auth;
mod browser;
mod code;
mod connect_axum;
mod env;
mod files;
mod filesystem;
mod init;
mod loopback;
mod process;
mod reaper;
mod users;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use clap::Parser;

use crate::env::Env;

#[derive(Parser, Debug)]
#[command(
    name = "coppice-agent",
    version,
    about = "Coppice in-sandbox agent (envd-compatible)"
)]
struct Args {
    /// Serve on an already-listening unix socket inherited at this fd (set by the host).
    #[arg(long, env = "COPPICE_AGENT_FD")]
    listen_fd: Option<i32>,
    /// Serve on a unix socket at this path (development and tests outside a sandbox).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Also serve on this TCP address, e.g. 127.0.0.1:49983 (bhyve guests, local debugging).
    #[arg(long)]
    tcp: Option<String>,
    /// User that requests run as when they name none.
    #[arg(long, default_value = "user")]
    default_user: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Not dumpable: no process of the sandbox (none holds CAP_SYS_PTRACE) may ptrace the
    // agent, read or write its memory through /proc/1/mem, or take its descriptors.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("coppice-agent: PR_SET_DUMPABLE: {e}");
    }
    // Logs go to stderr, which the host points at the sandbox's log file.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COPPICE_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One thread: the agent's RSS is part of every sandbox's idle cost.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent runtime")?;
    rt.block_on(serve(args))
}

/// Routes of the envd-compatible API: each service with the state it needs; only here are
/// they all known.
pub fn app(env: Arc<Env>) -> Router {
    let processes = Arc::new(process::ProcessService {
        env: env.clone(),
        processes: process::Processes::default(),
    });
    let filesystem = Arc::new(filesystem::FilesystemService {
        env: env.clone(),
        watchers: filesystem::Watchers::default(),
    });
    let code = Arc::new(code::CodeService::new(env.clone()));
    let browser = Arc::new(browser::BrowserService::new(env.clone()));
    Router::new()
        .route("/health", get(health))
        .route("/envs", get(init::get_envs))
        .route("/init", post(init::post_init))
        .merge(files::router())
        .with_state(env.clone())
        .merge(process::router().with_state(processes))
        .merge(filesystem::router().with_state(filesystem))
        .merge(code::router().with_state(code))
        .merge(browser::router().with_state(browser))
        .route("/loopback/{port}", get(loopback::open))
        // Keep this layer last: it must cover every route merged above (including code
        // kernels' /execute), or those routes would skip the access-token check.
        .layer(axum::middleware::from_fn_with_state(env, auth::guard))
}

async fn health() -> http::StatusCode {
    http::StatusCode::NO_CONTENT
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let env = Env::new(args.default_user.clone());
    reaper::start();
    // Load the NSS modules and passwd file now, not on the first request's user lookup.
    let default_user = args.default_user.clone();
    tokio::task::spawn_blocking(move || users::lookup(&default_user));
    let app = app(env);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(fd) = args.listen_fd {
        // SAFETY: the host passes a listening unix socket at this fd and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let app = app.clone();
        tasks.spawn(async move { axum::serve(listener, app).await });
    }
    if let Some(path) = &args.listen {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        let app = app.clone();
        tasks.spawn(async move { axum::serve(listener, app).await });
    }
    if let Some(addr) = &args.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let app = app.clone();
        tasks.spawn(async move { axum::serve(listener, app).await });
    }
    if tasks.is_empty() {
        anyhow::bail!("nothing to serve on: give --listen-fd, --listen or --tcp");
    }
    tracing::info!("agent ready");
    while let Some(res) = tasks.join_next().await {
        res??;
    }
    Ok(())
}
