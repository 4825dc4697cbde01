//! `coppice terminal new|ls|kill|attach`: the sandbox's collaborative terminals from a shell.
//! `attach` puts the local tty in raw mode and speaks the terminal WebSocket
//! (docs/terminals.md) over the daemon's unix socket. It needs no local PTY (it drives the
//! tty it runs on), so portable-pty has no part here; raw mode and the window size are
//! termios calls (rustix).

use std::io::Write;
use std::os::fd::AsFd;

use clap::Subcommand;
use coppice_tools::terminals::OpenTerminal;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use super::{Daemon, Failure, NO_BODY, print_value};

/// Detaches `attach` and leaves the terminal running (as telnet's escape).
const DETACH_KEY: u8 = 0x1d;

#[derive(Subcommand)]
pub enum TerminalCmd {
    /// Open a terminal (the user's login shell, or CMD) and print its id.
    New {
        id: String,
        /// Command line to run instead of the login shell.
        #[arg(long)]
        cmd: Option<String>,
        #[arg(long)]
        cols: Option<u16>,
        #[arg(long)]
        rows: Option<u16>,
        #[arg(long)]
        json: bool,
    },
    /// List a sandbox's terminals.
    Ls {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Kill a terminal's process.
    Kill { id: String, terminal: String },
    /// Attach this tty to a terminal (a new login shell when TERMINAL is omitted). Ctrl-]
    /// detaches and leaves it running; when its program exits, so does attach, with its
    /// exit code.
    Attach {
        id: String,
        terminal: Option<String>,
        /// Watch only: keys are not sent and this window does not resize it.
        #[arg(long)]
        viewer: bool,
    },
}

pub(super) async fn run(cmd: TerminalCmd, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        TerminalCmd::New {
            id,
            cmd,
            cols,
            rows,
            json,
        } => {
            let body = OpenTerminal {
                cmd,
                cols,
                rows,
                ..Default::default()
            };
            let v = open(d, &id, &body).await?;
            print_value(&v, json, |v| {
                println!("{}", v["id"].as_str().unwrap_or_default())
            });
            Ok(0)
        }
        TerminalCmd::Ls { id, json } => {
            let v = d
                .json("GET", &format!("/api/v1/sandboxes/{id}/terminals"), NO_BODY)
                .await?;
            print_value(&v, json, print_list);
            Ok(0)
        }
        TerminalCmd::Kill { id, terminal } => {
            d.json(
                "DELETE",
                &format!("/api/v1/sandboxes/{id}/terminals/{terminal}"),
                NO_BODY,
            )
            .await?;
            Ok(0)
        }
        TerminalCmd::Attach {
            id,
            terminal,
            viewer,
        } => {
            let tid = match terminal {
                Some(t) => t,
                None => {
                    let body = OpenTerminal::default();
                    let v = open(d, &id, &body).await?;
                    v["id"].as_str().unwrap_or_default().to_string()
                }
            };
            attach(d, &id, &tid, viewer).await
        }
    }
}

async fn open(d: &Daemon, id: &str, body: &OpenTerminal) -> Result<Value, Failure> {
    d.json(
        "POST",
        &format!("/api/v1/sandboxes/{id}/terminals"),
        Some(body),
    )
    .await
}

fn print_list(v: &Value) {
    println!(
        "{:<20} {:>7} {:>9} {:>7}  CMD",
        "TERMINAL", "PID", "SIZE", "CLIENTS"
    );
    for t in v.as_array().into_iter().flatten() {
        let state = match t["exit"]["status"].as_str() {
            Some(s) => format!(" ({s})"),
            None => String::new(),
        };
        println!(
            "{:<20} {:>7} {:>9} {:>7}  {}{state}",
            t["id"].as_str().unwrap_or_default(),
            t["pid"],
            format!("{}x{}", t["cols"], t["rows"]),
            t["clients"].as_array().map_or(0, Vec::len),
            t["cmd"].as_str().unwrap_or_default(),
        );
    }
}

/// The local tty in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ =
            rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let stdin = std::io::stdin();
            let _ = rustix::termios::tcsetattr(
                stdin.as_fd(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// The local window's size, when stdout is a tty.
fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

async fn attach(d: &Daemon, id: &str, tid: &str, viewer: bool) -> Result<i32, Failure> {
    let stream = tokio::net::UnixStream::connect(d.http.socket())
        .await
        .map_err(|e| {
            format!(
                "cannot reach the daemon at {}: {e}",
                d.http.socket().display()
            )
        })?;
    let role = if viewer { "?role=viewer" } else { "" };
    let url = format!("ws://coppice/api/v1/sandboxes/{id}/terminals/{tid}/ws{role}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let msg: Value = serde_json::from_slice(body).unwrap_or_default();
                Failure(
                    msg["message"]
                        .as_str()
                        .unwrap_or("the daemon refused")
                        .to_string(),
                    1,
                )
            }
            other => Failure(format!("attaching: {other}"), 1),
        })?;
    let (mut tx, mut rx) = ws.split();
    let mut hello = json!({"type": "hello", "name": whoami()});
    if let Some((cols, rows)) = window_size() {
        hello["cols"] = cols.into();
        hello["rows"] = rows.into();
    }
    tx.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let raw = RawMode::enter();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| e.to_string())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 << 10];
    let mut out = std::io::stdout();
    let code = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(frame))) if frame.len() >= 8 => {
                    let _ = out.write_all(&frame[8..]);
                    let _ = out.flush();
                }
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    if v["type"] == "exit" {
                        break v["exit_code"].as_i64().unwrap_or(1) as i32;
                    }
                    if v["type"] == "seed" {
                        let _ = out.write_all(v["data"].as_str().unwrap_or_default().as_bytes());
                        let _ = out.flush();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    return Err(format!("connection lost: {e}").into());
                }
                None => {
                    drop(raw);
                    return Err("the daemon closed the connection".to_string().into());
                }
            },
            n = stdin.read(&mut buf) => match n {
                Ok(0) | Err(_) => break 0,
                Ok(n) => {
                    let keys = &buf[..n];
                    let (keys, detach) = match keys.iter().position(|&b| b == DETACH_KEY) {
                        Some(i) => (&keys[..i], true),
                        None => (keys, false),
                    };
                    if !keys.is_empty() && !viewer {
                        tx.send(Message::Binary(keys.to_vec().into())).await.map_err(|e| e.to_string())?;
                    }
                    if detach {
                        drop(raw);
                        eprintln!("\r\n[detached: `coppice terminal attach {id} {tid}` comes back]");
                        return Ok(0);
                    }
                }
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let msg = json!({"type": "resize", "cols": cols, "rows": rows});
                    let _ = tx.send(Message::Text(msg.to_string().into())).await;
                }
            }
        }
    };
    drop(raw);
    let _ = tx.close().await;
    Ok(code)
}

fn whoami() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    format!("{user} (cli)")
}
