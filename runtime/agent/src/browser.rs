//! The sandbox's browser: one headless Chromium, started on the first browser call as the
//! default user, so it sees the sandbox's own servers on localhost, lives under its network
//! policy, memory and pids, and ends with it. CDP is served by Chromium itself on a loopback
//! port of the sandbox's network namespace (port mode rather than a pipe: every client, the
//! host's tools, an external Playwright and the live view, gets its own CDP connection, and
//! Chromium multiplexes them); the host reaches it through [`crate::loopback`].
//!
//! Chromium's own sandbox is off (`--no-sandbox`): it needs user namespaces, which the
//! sandbox's seccomp profile refuses, or a setuid helper. The sandbox's walls (user, pid,
//! mount and network namespaces, seccomp, cgroup limits) hold the whole browser instead;
//! see docs/decisions/browser.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::env::Env;
use crate::process::{child_env, prepare_as_user};
use crate::users;

/// Root-owned: the log; the profile inside is the user's.
const BROWSER_DIR: &str = "/tmp/.coppice-browser";
/// How long Chromium may take to open its DevTools port.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Where Chromium may be; Debian's `/usr/bin/chromium` is a wrapper script around the first.
const CANDIDATES: &[&str] = &[
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];

/// Switches for an automated headless browser: no first-run UI, no background traffic of its
/// own (it would show in the sandbox's network log and policy), /tmp instead of the small
/// /dev/shm, and a fixed window size so screenshots are predictable.
const SWITCHES: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--remote-debugging-port=0",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    "--window-size=1280,720",
    // Fewer processes, less memory: the GPU work (software, headless) and the network
    // service in the browser process, no crash reporter.
    "--in-process-gpu",
    "--disable-gpu",
    "--enable-features=NetworkServiceInProcess2",
    "--disable-crash-reporter",
];

/// The running browser as the host sees it.
#[derive(Debug, Clone, Serialize)]
pub struct BrowserInfo {
    pub pid: u32,
    /// Chromium's DevTools port on the sandbox's loopback.
    pub port: u16,
    /// The browser target's WebSocket path, `/devtools/browser/<id>`.
    pub ws_path: String,
    /// Whether this call started it (false: it was already running).
    pub started: bool,
}

struct Running {
    info: BrowserInfo,
    exited: Arc<AtomicBool>,
}

pub struct BrowserService {
    env: Arc<Env>,
    running: Mutex<Option<Running>>,
}

impl BrowserService {
    pub fn new(env: Arc<Env>) -> Self {
        Self {
            env,
            running: Mutex::new(None),
        }
    }
}

pub fn router() -> Router<Arc<BrowserService>> {
    Router::new().route("/browser", post(ensure).delete(stop))
}

/// `POST /browser`: the running browser, started (again, if it ended) when there is none.
async fn ensure(State(s): State<Arc<BrowserService>>) -> Response {
    let mut running = s.running.lock().await;
    if let Some(r) = running.as_ref()
        && !r.exited.load(Ordering::Acquire)
    {
        let mut info = r.info.clone();
        info.started = false;
        return Json(info).into_response();
    }
    match start(&s.env).await {
        Ok(r) => {
            let info = r.info.clone();
            *running = Some(r);
            Json(info).into_response()
        }
        Err(message) => (StatusCode::FAILED_DEPENDENCY, message).into_response(),
    }
}

/// `DELETE /browser`: ends the browser and every process it started.
async fn stop(State(s): State<Arc<BrowserService>>) -> StatusCode {
    if let Some(r) = s.running.lock().await.take()
        && !r.exited.load(Ordering::Acquire)
    {
        kill_tree(r.info.pid);
        let began = Instant::now();
        while !r.exited.load(Ordering::Acquire) && began.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    StatusCode::NO_CONTENT
}

/// Kills `root` and every process under it. Chromium's helpers (zygotes, renderers) do not
/// all stay in its process group, so the group alone would leave some behind.
fn kill_tree(root: u32) {
    let mut parents = Vec::new();
    let mut orphans = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The fields after the command's closing parenthesis: state, ppid, pgrp, session.
            let fields: Vec<u32> = stat
                .rsplit_once(')')
                .map(|(_, rest)| {
                    rest.split_whitespace()
                        .skip(1)
                        .take(3)
                        .filter_map(|f| f.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if let [ppid, _, session] = fields[..] {
                parents.push((pid, ppid));
                // Its session (Chromium's own, made at spawn): helpers that were reparented
                // to PID 1 when their parent died still belong to it.
                if session == root && pid != root {
                    orphans.push(pid);
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    crate::reaper::signal_group(root, Signal::SIGKILL);
    tree.extend(orphans);
    for pid in tree.into_iter().skip(1) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn chromium() -> Result<PathBuf, String> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no Chromium in this sandbox (looked for {}); the default template carries the \
                 host's, installed by scripts/setup.sh (Debian's chromium package)",
                CANDIDATES.join(", ")
            )
        })
}

async fn start(env: &Arc<Env>) -> Result<Running, String> {
    let binary = chromium()?;
    let user = users::lookup(&env.default_user).map_err(|e| e.message)?;
    let dir = Path::new(BROWSER_DIR);
    let profile = dir.join("profile");
    prepare_dirs(dir, &profile, &user).map_err(|e| format!("preparing {BROWSER_DIR}: {e}"))?;
    let port_file = profile.join("DevToolsActivePort");
    let _ = std::fs::remove_file(&port_file);
    let log_path = dir.join("chromium.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&binary);
    cmd.args(SWITCHES)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .env_clear()
        .envs(child_env(&user, &env.env_snapshot(), &Default::default()))
        .current_dir(&user.home)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log));
    prepare_as_user(&mut cmd, &user);
    let (child, exit) = crate::reaper::spawn(&mut cmd)
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let pid = child.id();
    drop(child);
    let exited = Arc::new(AtomicBool::new(false));
    let flag = exited.clone();
    tokio::spawn(async move {
        let how = exit.await;
        flag.store(true, Ordering::Release);
        tracing::info!(pid, "browser ended: {how:?}");
    });
    let began = Instant::now();
    loop {
        if let Some((port, ws_path)) = read_port_file(&port_file) {
            tracing::info!(
                pid,
                port,
                ms = began.elapsed().as_millis(),
                "browser started"
            );
            let info = BrowserInfo {
                pid,
                port,
                ws_path,
                started: true,
            };
            return Ok(Running { info, exited });
        }
        if exited.load(Ordering::Acquire) {
            return Err(format!(
                "Chromium exited while starting: {}",
                log_tail(&log_path)
            ));
        }
        if began.elapsed() > START_TIMEOUT {
            crate::reaper::signal_group(pid, Signal::SIGKILL);
            return Err(format!(
                "Chromium did not open its DevTools port within {} s: {}",
                START_TIMEOUT.as_secs(),
                log_tail(&log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// The profile is the user's (Chromium writes it); the directory holding it and the log is
/// root's, so the user cannot swap the log for a link.
fn prepare_dirs(dir: &Path, profile: &Path, user: &users::UserIdentity) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(profile)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(profile, std::fs::Permissions::from_mode(0o700))?;
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::chown(dir, Some(0), Some(0))?;
        std::os::unix::fs::chown(profile, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

/// `DevToolsActivePort`: the port on the first line, the browser target's path on the second.
fn read_port_file(path: &Path) -> Option<(u16, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let port = lines.next()?.trim().parse().ok()?;
    let ws_path = lines.next()?.trim().to_string();
    ws_path.starts_with("/devtools/").then_some((port, ws_path))
}

/// The log's last lines, for a start failure's message (the dbus complaints left out).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    if tail.is_empty() {
        "(nothing in its log)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_file_is_read_only_when_complete() {
        let dir = std::env::temp_dir().join(format!("coppice-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("DevToolsActivePort");
        std::fs::write(&f, "41279\n").unwrap();
        assert_eq!(read_port_file(&f), None);
        std::fs::write(&f, "41279\n/devtools/browser/01f0be05\n").unwrap();
        assert_eq!(
            read_port_file(&f),
            Some((41279, "/devtools/browser/01f0be05".into()))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
