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
///
/// The copies run on two plain threads over the raw socket rather than through tokio's
/// stdio, which hands every 8 KiB chunk to its blocking pool: a 1 MiB file's base64 reply
/// cost ~20 ms of CPU that way.
pub async fn run(io: TokioIo<Upgraded>) {
    let parts = match io.into_inner().downcast::<TokioIo<UnixStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            tracing::error!("the daemon connection is not a unix socket");
            return;
        }
    };
    let sock = match parts.io.into_inner().into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("daemon socket: {e}");
            return;
        }
    };
    if let Err(e) = copy_blocking(sock, parts.read_buf).await {
        tracing::debug!("bridge: {e}");
    }
}

async fn copy_blocking(sock: std::os::unix::net::UnixStream, early: Bytes) -> std::io::Result<()> {
    use std::io::Write;
    sock.set_nonblocking(false)?;
    grow_buffers(&sock);
    let mut to_daemon = sock.try_clone()?;
    let mut from_daemon = sock;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        let r = stdout
            .write_all(&early)
            .and_then(|()| stdout.flush())
            .and_then(|()| pump(&mut from_daemon, &mut stdout));
        if let Err(e) = r {
            tracing::debug!("daemon stream: {e}");
        }
        let _ = done_tx.send(());
    });
    let (stdin_tx, stdin_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        if let Err(e) = pump(&mut std::io::stdin().lock(), &mut to_daemon) {
            tracing::debug!("stdin: {e}");
        }
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
        let _ = stdin_tx.send(());
    });
    tokio::select! {
        _ = stdin_rx => {
            // stdin closed: let the daemon finish writing, but never linger.
            let _ = tokio::time::timeout(Duration::from_millis(800), &mut done_rx).await;
        }
        done = &mut done_rx => {
            if done.is_ok() {
                tracing::info!("the daemon closed the MCP session");
            }
        }
    }
    Ok(())
}

/// A megabyte reply crosses the daemon socket and the stdout pipe in as few hand-offs as the
/// kernel allows: a pipe holds 64 KiB by default, so a 1.4 MB line took ~22 wake-ups of the
/// client and of this bridge in turn (each a scheduler round on a busy host). Best effort: a
/// pipe is grown up to /proc/sys/fs/pipe-max-size (1 MiB by default); stdio that is not a
/// pipe (a terminal, ssh's socket) is left alone.
fn grow_buffers(sock: &std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    const PIPE: libc::c_int = 1 << 20;
    const SOCK: libc::c_int = 4 << 20;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: fcntl on our own stdio descriptors; fails harmlessly on non-pipes.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE) };
    }
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int option value on a socket we own.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCK as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Copies until EOF, flushing after every read. Not `std::io::copy`: on Linux it splices,
/// and splice from a unix socket into a pipe waits for its whole (2 GiB) length.
fn pump(from: &mut impl std::io::Read, to: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
