//! Joining a running daemon from `coppice-mcp`: one HTTP upgrade on the daemon's unix
//! socket (`POST /mcp-stdio`), then bytes are copied between our stdio and that connection.
//! The daemon serves the MCP session itself, so sandboxes are the daemon's (shared with HTTP
//! and the CLI, outliving this process), and progress, cancellation and both protocol eras
//! behave exactly as over plain stdio.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::http::STDIO_UPGRADE;

/// Connects to the daemon at `socket`. `Ok(None)` when nothing answers there (no daemon);
/// an error when something answers but the upgrade fails.
pub async fn connect(socket: &Path) -> anyhow::Result<Option<TokioIo<Upgraded>>> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("no daemon at {}: {e}", socket.display());
            return Ok(None);
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| anyhow::anyhow!("talking to the daemon at {}: {e}", socket.display()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("daemon connection ended: {e}");
        }
    });
    let req = http::Request::post("/mcp-stdio")
        .header(http::header::HOST, "localhost")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, STDIO_UPGRADE)
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| anyhow::anyhow!("asking the daemon for an MCP session: {e}"))?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        anyhow::bail!(
            "the daemon at {} answered {} to the MCP upgrade (is it an older coppice?)",
            socket.display(),
            resp.status()
        );
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| anyhow::anyhow!("MCP upgrade: {e}"))?;
    Ok(Some(TokioIo::new(upgraded)))
}

/// Copies stdin to the daemon and the daemon's output to stdout until either side ends.
/// After stdin's EOF the daemon gets our half-close and has up to a second to flush replies.
pub async fn run(io: TokioIo<Upgraded>) {
    let (mut from_daemon, mut to_daemon) = tokio::io::split(io);
    let up = async {
        let mut stdin = tokio::io::stdin();
        if let Err(e) = tokio::io::copy(&mut stdin, &mut to_daemon).await {
            tracing::debug!("stdin: {e}");
        }
        let _ = to_daemon.shutdown().await;
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        if let Err(e) = tokio::io::copy(&mut from_daemon, &mut stdout).await {
            tracing::debug!("daemon stream: {e}");
        }
        let _ = stdout.flush().await;
    };
    tokio::pin!(down);
    tokio::select! {
        _ = up => {
            // stdin closed: let the daemon finish writing, but never linger.
            let _ = tokio::time::timeout(Duration::from_millis(800), &mut down).await;
        }
        _ = &mut down => {
            tracing::info!("the daemon closed the MCP session");
        }
    }
}
