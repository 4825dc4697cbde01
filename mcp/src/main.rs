//! `coppice-mcp`: Coppice's MCP server on stdio. Joins the running daemon through its unix
//! socket when there is one; otherwise runs an embedded runtime for this session only.
//! Only MCP goes to stdout; logs go to stderr (`COPPICE_LOG`, default `warn`).

use std::path::PathBuf;

use clap::Parser;
use coppice_mcp::{CoppiceMcp, McpState, Mode};
use rmcp::ServiceExt;

#[derive(Parser)]
#[command(
    name = "coppice-mcp",
    version,
    about = "Coppice's MCP server over stdio"
)]
struct Args {
    /// The daemon's control socket; joined when a daemon answers there.
    #[arg(
        long,
        env = "COPPICE_SOCKET",
        default_value = "/run/coppice/coppice.sock"
    )]
    socket: PathBuf,
    /// Embedded mode only: state directory (default /var/lib/coppice).
    #[arg(long, env = "COPPICE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Embedded mode only: sandboxes get no network.
    #[arg(long)]
    no_network: bool,
    /// Print the tool reference (docs/tools.md) generated from the schemas, then exit.
    #[arg(long)]
    print_tools_markdown: bool,
}

fn main() {
    let args = Args::parse();
    if args.print_tools_markdown {
        print!("{}", coppice_mcp::markdown::tools_markdown());
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("COPPICE_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coppice-mcp: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("coppice-mcp: {e:#}");
            1
        }
    };
    // Don't wait for tokio's blocking stdin reader: exit now.
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(io) = coppice_mcp::bridge::connect(&args.socket).await? {
        tracing::info!("joined the daemon at {}", args.socket.display());
        coppice_mcp::bridge::run(io).await;
        return Ok(());
    }
    embedded(args).await
}

/// No daemon: a runtime of our own, serving MCP on stdio; what this session created is killed
/// when stdin closes.
async fn embedded(args: Args) -> anyhow::Result<()> {
    let mut cfg = coppice_runtime::Config {
        pool_size: 0,
        ..Default::default()
    };
    cfg.listener.socket = args.socket.clone();
    if let Some(dir) = args.state_dir {
        cfg.state_dir = dir;
    }
    if args.no_network {
        cfg.network = false;
    }
    tracing::warn!(
        "no daemon at {}: running an embedded runtime (state in {}); sandboxes end with this session",
        args.socket.display(),
        cfg.state_dir.display()
    );
    let runtime = coppice_runtime::Runtime::start(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("embedded runtime: {e} (it needs root and Linux >= 6.8; or start `coppice serve` and connect through it)"))?;
    runtime.spawn_background_tasks();
    let tools = coppice_tools::Tools::new(runtime);
    let state = McpState::new(tools.clone(), Mode::Embedded);
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
    let stdin = EofNotify {
        inner: tokio::io::stdin(),
        eof: Some(eof_tx),
    };
    let transport = coppice_mcp::stdio::LineTransport::new(
        stdin,
        tokio::io::stdout(),
        coppice_mcp::stdio::MAX_MESSAGE_BYTES,
    );
    let service = CoppiceMcp::new(state.clone())
        .serve(transport)
        .await
        .map_err(|e| anyhow::anyhow!("MCP over stdio: {e}"))?;
    // rmcp drains in-flight calls for up to 5 s after EOF; we give it a moment, then kill
    // what this session created (which ends those calls too) and exit.
    tokio::select! {
        _ = service.waiting() => {}
        _ = async {
            let _ = eof_rx.await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        } => {}
    }
    let kills = state.created_sandboxes().into_iter().map(|id| {
        let tools = tools.clone();
        async move {
            if let Err(e) = tools.kill_sandbox(&id).await {
                tracing::debug!(sandbox = %id, "kill at exit: {e}");
            }
        }
    });
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(600),
        futures::future::join_all(kills),
    )
    .await;
    Ok(())
}

/// Stdin that reports its end-of-file.
struct EofNotify<R> {
    inner: R,
    eof: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EofNotify<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &res
            && buf.filled().len() == before
            && buf.remaining() > 0
            && let Some(tx) = self.eof.take()
        {
            let _ = tx.send(());
        }
        res
    }
}
