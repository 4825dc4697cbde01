//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir, Remove, WatchDir and the polled
//! watcher calls, with envd's semantics. Every filesystem syscall runs with the requesting
//! user's filesystem identity (see `creds`).

pub mod creds;
pub mod entry;
mod watch;

use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use coppice_envd::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EntryInfo, EntryResponse, GetWatcherEventsRequest,
    GetWatcherEventsResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest,
    WatchDirRequest, WatchDirResponse, WatcherIdRequest,
};
use coppice_envd::{Code, ConnectError};
use serde::Serialize;

pub use self::creds::{FsCreds, run_as};
use self::entry::Names;
use self::watch::WatchSpec;
pub use self::watch::Watchers;
use crate::connect_axum::{
    RpcError, keepalive_interval, parse_stream_request, parse_unary, stream_response, timeout_ms,
    unary_ok,
};
use crate::env::Env;
use crate::users::{self, UserIdentity};

/// What the filesystem service works with: the sandbox's environment and its watchers.
pub struct FilesystemService {
    pub env: Arc<Env>,
    pub watchers: Watchers,
}

pub fn router() -> Router<Arc<FilesystemService>> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(get_watcher_events),
        )
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
}

/// The user a request acts as (`Authorization: Basic` or the default) and their credentials.
pub fn caller(
    env: &Env,
    headers: &HeaderMap,
    username: Option<&str>,
) -> Result<(UserIdentity, FsCreds), ConnectError> {
    let name = users::requested_user(headers, username, &env.default_user);
    let user = users::lookup(&name)?;
    let creds = FsCreds::for_user(&user);
    Ok((user, creds))
}

/// Runs a unary handler body and encodes its result.
fn reply<T: Serialize>(res: Result<T, ConnectError>) -> Response {
    match res {
        Ok(msg) => unary_ok(&msg),
        Err(e) => RpcError(e).into_response(),
    }
}

fn not_found_as(err: std::io::Error, what: &str, path: &Path) -> ConnectError {
    if err.kind() == ErrorKind::NotFound {
        ConnectError::not_found(format!("{what} not found: {}", path.display()))
    } else {
        ConnectError::from_io(&err, &path.display().to_string())
    }
}

async fn stat(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: PathRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let path = entry::resolve(&req.path, &user)?;
            let entry = run_as(creds, move || {
                entry::entry_info(&path, &mut Names::default())
                    .map_err(|e| not_found_as(e, "file", &path))
            })
            .await?;
            Ok(EntryResponse { entry })
        }
        .await,
    )
}

async fn make_dir(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: PathRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let path = entry::resolve(&req.path, &user)?;
            let owner = creds.clone();
            let entry = run_as(creds, move || {
                match std::fs::metadata(&path) {
                    Ok(md) if md.is_dir() => {
                        return Err(ConnectError::new(
                            Code::AlreadyExists,
                            format!("directory already exists: {}", path.display()),
                        ));
                    }
                    Ok(_) => {
                        return Err(ConnectError::invalid_argument(format!(
                            "path already exists but it is not a directory: {}",
                            path.display()
                        )));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(ConnectError::from_io(&e, &path.display().to_string())),
                }
                create_dirs(&path, &owner)?;
                entry::entry_info(&path, &mut Names::default())
                    .map_err(|e| ConnectError::from_io(&e, &path.display().to_string()))
            })
            .await?;
            Ok(EntryResponse { entry })
        }
        .await,
    )
}

/// `mkdir -p` with envd's 0755; run inside `run_as`, so new directories belong to the user.
/// Each directory made is chowned to `owner` too, as envd's `EnsureDirs` does: its watchers
/// see CREATE then CHMOD for it, and SDK code written against envd may wait for either.
pub fn create_dirs(path: &Path, owner: &FsCreds) -> Result<(), ConnectError> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(dir) = at {
        if std::fs::symlink_metadata(dir).is_ok() {
            break;
        }
        missing.push(dir);
        at = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => chown_like_envd(dir, owner),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(ConnectError::from_io(
                    &e,
                    &format!("creating {}", dir.display()),
                ));
            }
        }
    }
    Ok(())
}

/// envd chowns every file and directory it makes or writes to the caller (the IN_ATTRIB its
/// watchers report as CHMOD); ours already belong to the caller, so only the event differs.
pub fn chown_like_envd(path: &Path, owner: &FsCreds) {
    if let Err(e) = std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)) {
        tracing::debug!("chown of {}: {e}", path.display());
    }
}

async fn move_entry(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: MoveRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let source = entry::resolve(&req.source, &user)?;
            let destination = entry::resolve(&req.destination, &user)?;
            let owner = creds.clone();
            let entry = run_as(creds, move || {
                std::fs::symlink_metadata(&source)
                    .map_err(|e| not_found_as(e, "source file", &source))?;
                if let Some(parent) = destination.parent() {
                    create_dirs(parent, &owner)?;
                }
                std::fs::rename(&source, &destination).map_err(|e| {
                    ConnectError::from_io(
                        &e,
                        &format!("renaming {} to {}", source.display(), destination.display()),
                    )
                })?;
                entry::entry_info(&destination, &mut Names::default())
                    .map_err(|e| not_found_as(e, "file", &destination))
            })
            .await?;
            Ok(EntryResponse { entry })
        }
        .await,
    )
}

async fn list_dir(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: ListDirRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let path = entry::resolve(&req.path, &user)?;
            let depth = req.depth.max(1);
            let entries = run_as(creds, move || {
                // The listed directory may be reached through a symlink; entries below are
                // reported under the requested path and symlinks below are not descended.
                let md = std::fs::metadata(&path).map_err(|e| not_found_as(e, "path", &path))?;
                if !md.is_dir() {
                    return Err(ConnectError::invalid_argument(format!(
                        "path is not a directory: {}",
                        path.display()
                    )));
                }
                let mut out = Vec::new();
                let mut names = Names::default();
                walk(&path, 1, depth, &mut names, &mut out).map_err(|e| {
                    ConnectError::from_io(&e, &format!("reading {}", path.display()))
                })?;
                Ok(out)
            })
            .await?;
            Ok(ListDirResponse { entries })
        }
        .await,
    )
}

/// Pre-order listing sorted by name, down to `depth` levels. Unreadable subdirectories are
/// listed but not descended; only the top directory's read error fails the call.
fn walk(
    dir: &Path,
    level: u32,
    depth: u32,
    names: &mut Names,
    out: &mut Vec<EntryInfo>,
) -> std::io::Result<()> {
    let mut children: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    for child in std::fs::read_dir(dir)? {
        let child = child?;
        // DirEntry::metadata does not follow symlinks; a vanished entry is skipped.
        if let Ok(md) = child.metadata() {
            children.push((child.path(), md));
        }
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, md) in children {
        out.push(entry::entry_from_metadata(&path, &md, names));
        if md.is_dir()
            && level < depth
            && let Err(e) = walk(&path, level + 1, depth, names, out)
        {
            tracing::debug!("listing {}: {e}", path.display());
        }
    }
    Ok(())
}

async fn remove(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: PathRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let path = entry::resolve(&req.path, &user)?;
            run_as(creds, move || {
                let res = match std::fs::symlink_metadata(&path) {
                    // envd uses os.RemoveAll: removing what is not there succeeds.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                    Ok(md) if md.is_dir() => std::fs::remove_dir_all(&path),
                    Ok(_) => std::fs::remove_file(&path),
                };
                match res {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(ConnectError::from_io(
                        &e,
                        &format!("removing {}", path.display()),
                    )),
                    _ => Ok(()),
                }
            })
            .await?;
            Ok(serde_json::json!({}))
        }
        .await,
    )
}

fn watch_spec(req: &WatchDirRequest, user: &UserIdentity) -> Result<WatchSpec, ConnectError> {
    Ok(WatchSpec {
        root: entry::resolve(&req.path, user)?,
        recursive: req.recursive,
        include_entry: req.include_entry,
        allow_network_mounts: req.allow_network_mounts,
    })
}

/// Server stream: `start`, then events; a `keepalive` after each idle interval. Runs until the
/// client goes away (the body is dropped, which drops the receiver and stops the watcher).
async fn watch_dir(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let setup = async {
        let req: WatchDirRequest = parse_stream_request(&body).map_err(|e| e.0)?;
        let (user, creds) = caller(&state.env, &headers, None)?;
        let spec = watch_spec(&req, &user)?;
        watch::stream(spec, creds).await
    };
    // Errors before the first message go out as a unary-style error, which the SDKs accept.
    let rx = match setup.await {
        Ok(rx) => rx,
        Err(e) => return RpcError(e).into_response(),
    };
    let idle = keepalive_interval(&headers);
    // `connect-timeout-ms` (the SDKs' watch timeout, 0 = none) bounds the stream, as the
    // request deadline does in envd's connect-go handler.
    let deadline = timeout_ms(&headers)
        .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
    let messages = futures::stream::unfold(Some((rx, true)), move |state| async move {
        let (mut rx, first) = state?;
        if first {
            return Some((Ok(WatchDirResponse::Start {}), Some((rx, false))));
        }
        let wait = match deadline {
            Some(d) => idle.min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => idle,
        };
        let msg = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(ev)) => WatchDirResponse::Filesystem(ev),
            Ok(None) => return None,
            Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                let e = ConnectError::new(Code::DeadlineExceeded, "watch timeout reached");
                return Some((Err(e), None));
            }
            Err(_) => WatchDirResponse::Keepalive {},
        };
        Some((Ok(msg), Some((rx, false))))
    });
    stream_response(messages)
}

async fn create_watcher(
    State(state): State<Arc<FilesystemService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reply(
        async {
            let req: CreateWatcherRequest = parse_unary(&body).map_err(|e| e.0)?;
            let (user, creds) = caller(&state.env, &headers, None)?;
            let spec = watch_spec(&req, &user)?;
            let watcher_id = state.watchers.create(spec, creds).await?;
            Ok(CreateWatcherResponse { watcher_id })
        }
        .await,
    )
}

async fn get_watcher_events(State(state): State<Arc<FilesystemService>>, body: Bytes) -> Response {
    reply((|| {
        let req: GetWatcherEventsRequest = parse_unary(&body).map_err(|e| e.0)?;
        let events = state.watchers.take_events(&req.watcher_id)?;
        Ok(GetWatcherEventsResponse { events })
    })())
}

async fn remove_watcher(State(state): State<Arc<FilesystemService>>, body: Bytes) -> Response {
    reply((|| {
        let req: WatcherIdRequest = parse_unary(&body).map_err(|e| e.0)?;
        state.watchers.remove(&req.watcher_id)?;
        Ok(serde_json::json!({}))
    })())
}
