//! `coppice serve`: the daemon.

use std::path::PathBuf;

use clap::Args;
use coppice_mcp::http::HttpOptions;
use coppice_mcp::{McpState, Mode};
use coppice_runtime::{Config, Runtime};
use coppice_tools::Tools;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (every key is optional).
    #[arg(long, env = "COPPICE_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (templates, sandboxes, state.db).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long)]
    listen: Option<String>,
    /// Warm sandboxes kept per template (0 = off).
    #[arg(long)]
    pool_size: Option<usize>,
    /// Default sandbox lifetime, e.g. 300s or 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    default_timeout: Option<std::time::Duration>,
    /// Sandboxes get no network at all.
    #[arg(long)]
    no_network: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Bearer token required on every route of the TCP listener (MCP and the native API;
    /// the E2B routes take their own keys). Default: a token made at first start in
    /// <state>/api-token (root only; `coppice token` prints it). The unix socket needs none.
    #[arg(long, env = "COPPICE_MCP_TOKEN", hide_env_values = true)]
    mcp_token: Option<String>,
    /// An API key the E2B control plane accepts (`X-API-Key`; the SDKs' E2B_API_KEY).
    /// Repeatable; adds to `[e2b] api_keys` in the config.
    #[arg(
        long = "e2b-api-key",
        env = "COPPICE_E2B_API_KEY",
        hide_env_values = true
    )]
    e2b_api_keys: Vec<String>,
    /// Accept any E2B API key (local development; refused unless --listen is loopback).
    #[arg(long)]
    e2b_no_auth: bool,
    /// Nameserver the sandboxes' DNS resolver forwards to (address or address:port);
    /// default: the first nameserver of /etc/resolv.conf.
    #[arg(long, env = "COPPICE_DNS_UPSTREAM")]
    dns_upstream: Option<String>,
}

pub fn run(args: ServeArgs, socket: PathBuf) -> i32 {
    init_logging(args.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coppice: starting the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(args, socket)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("coppice serve: {e:#}");
            1
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COPPICE_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn config(args: &ServeArgs, socket: PathBuf) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    cfg.listener.socket = socket;
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(l) = &args.listen {
        cfg.listener.listen = l.clone();
    }
    if let Some(n) = args.pool_size {
        cfg.pool_size = n;
    }
    if let Some(t) = args.default_timeout {
        cfg.default_timeout_secs = t.as_secs().max(1);
    }
    if args.no_network {
        cfg.network = false;
    }
    if let Some(t) = &args.mcp_token {
        cfg.listener.token = Some(t.clone());
    }
    cfg.e2b.api_keys.extend(args.e2b_api_keys.iter().cloned());
    if args.e2b_no_auth {
        cfg.e2b.no_auth = true;
    }
    if let Some(u) = &args.dns_upstream {
        cfg.dns_upstream = Some(u.clone());
    }
    Ok(cfg)
}

/// The daemon holds a few descriptors per sandbox and per client connection: its soft limit
/// goes up to the hard one, and the hard one to the kernel's ceiling (`fs.nr_open`) where root
/// may raise it.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.max(ceiling);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        tracing::debug!("open files limit {soft}");
    }
}

async fn serve(args: ServeArgs, socket: PathBuf) -> anyhow::Result<()> {
    raise_nofile();
    let cfg = config(&args, socket)?;
    // A listener without a configured token gets the state dir's; a non-loopback one must be
    // given one explicitly (a token only root can read is no use to remote clients).
    let loopback = !HttpOptions::for_tcp(&cfg.listener.listen, cfg.listener.token.clone())?
        .allowed_hosts
        .is_empty();
    let api_token =
        crate::api_token::load_or_create(cfg.listener.token.as_deref(), &cfg.state_dir)?;
    let tcp_mcp = HttpOptions::for_tcp(&cfg.listener.listen, Some(api_token.clone()))?;
    let e2b = coppice_http::e2b::E2bOptions::from_config(&cfg.e2b, loopback)?;
    let runtime = Runtime::start(cfg.clone()).await?;
    runtime.spawn_background_tasks();
    let tools = Tools::new(runtime).with_terminals(&api_token, cfg.terminals.ring_bytes);
    // Terminals the agents kept running while no daemon brokered them.
    tools.adopt_all_terminals().await;
    let mcp = McpState::new(tools.clone(), Mode::Daemon);
    // The E2B surface is on the TCP listener only (the SDKs speak TCP): its control plane
    // takes API keys, its sandbox traffic the sandboxes' access tokens.
    let tcp_app = coppice_http::tcp_app(tools.clone(), mcp.clone(), tcp_mcp, e2b);
    // The socket is root-only: no token; Host is not checked (clients name no real host).
    let unix_app = coppice_http::unix_app(tools, mcp, api_token);

    let tcp = tokio::net::TcpListener::bind(&cfg.listener.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cfg.listener.listen))?;
    if let Some(dir) = cfg.listener.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&cfg.listener.socket);
    let unix = tokio::net::UnixListener::bind(&cfg.listener.socket)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cfg.listener.socket.display()))?;
    std::fs::set_permissions(
        &cfg.listener.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    tracing::info!(
        "coppice ready: http://{} and unix:{} (state in {})",
        cfg.listener.listen,
        cfg.listener.socket.display(),
        cfg.state_dir.display()
    );

    // TCP_NODELAY: exec streams NDJSON lines as separate writes; with Nagle on, every line
    // after the first waits for the client's delayed ACK (~40 ms per exec of `true`).
    let tcp = axum::serve::ListenerExt::tap_io(tcp, |s| {
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!("setting TCP_NODELAY: {e}");
        }
    });
    let tcp_server = axum::serve(tcp, tcp_app).with_graceful_shutdown(shutdown());
    let unix_server = axum::serve(unix, unix_app).with_graceful_shutdown(shutdown());
    tokio::try_join!(async { tcp_server.await }, async { unix_server.await })?;
    // Sandboxes keep running; the next daemon recovers them.
    tracing::info!("coppice stopped (sandboxes keep running and are recovered on restart)");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
