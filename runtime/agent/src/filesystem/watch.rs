//! Directory watchers on inotify: the streaming `WatchDir` and the polled
//! `CreateWatcher`/`GetWatcherEvents`/`RemoveWatcher`.
//!
//! One inotify instance per watcher, read by one tokio task. Recursive watchers keep a map from
//! watch descriptor to the directory's path relative to the watched root, add watches for
//! directories created or moved in, and drop the watches of directories moved out.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use coppice_envd::ConnectError;
use coppice_envd::filesystem::{EventType, FilesystemEvent};
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::creds::{FsCreds, run_as};
use super::entry::{self, Names};

/// Events a polled watcher keeps before dropping the oldest (a client that stopped polling
/// must not grow the agent without bound).
const POLL_BUFFER_MAX: usize = 10_000;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub root: PathBuf,
    pub recursive: bool,
    pub include_entry: bool,
    pub allow_network_mounts: bool,
}

/// Where a watcher delivers events.
enum Sink {
    /// A `WatchDir` stream; closed when the client goes away.
    Stream(mpsc::Sender<FilesystemEvent>),
    /// A polled watcher's buffer.
    Poll(Arc<Mutex<VecDeque<FilesystemEvent>>>),
}

impl Sink {
    /// Delivers one event; false when nobody listens any more.
    async fn deliver(&self, ev: FilesystemEvent) -> bool {
        match self {
            Sink::Stream(tx) => tx.send(ev).await.is_ok(),
            Sink::Poll(buf) => {
                let mut buf = buf.lock().expect("watcher buffer lock");
                if buf.len() >= POLL_BUFFER_MAX {
                    buf.pop_front();
                }
                buf.push_back(ev);
                true
            }
        }
    }

    async fn closed(&self) {
        match self {
            Sink::Stream(tx) => tx.closed().await,
            Sink::Poll(_) => std::future::pending().await,
        }
    }
}

struct PollWatcher {
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
    cancel: CancellationToken,
}

/// Polled watchers by id (`CreateWatcher` … `RemoveWatcher`).
#[derive(Default)]
pub struct Watchers {
    next_id: AtomicU64,
    polled: Mutex<HashMap<String, PollWatcher>>,
}

impl Watchers {
    /// Starts a polled watcher and returns its id.
    pub async fn create(&self, spec: WatchSpec, creds: FsCreds) -> Result<String, ConnectError> {
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let cancel = CancellationToken::new();
        start(spec, creds, Sink::Poll(events.clone()), cancel.clone()).await?;
        let id = format!("w{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        self.polled
            .lock()
            .expect("watchers lock")
            .insert(id.clone(), PollWatcher { events, cancel });
        Ok(id)
    }

    /// Events since the previous call.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let polled = self.polled.lock().expect("watchers lock");
        let w = polled
            .get(id)
            .ok_or_else(|| ConnectError::not_found(format!("watcher with id {id} not found")))?;
        Ok(w.events
            .lock()
            .expect("watcher buffer lock")
            .drain(..)
            .collect())
    }

    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        let w = self
            .polled
            .lock()
            .expect("watchers lock")
            .remove(id)
            .ok_or_else(|| ConnectError::not_found(format!("watcher with id {id} not found")))?;
        w.cancel.cancel();
        Ok(())
    }
}

/// Starts a streaming watcher; the receiver ends when the watcher stops (the watched directory
/// went away), and dropping it stops the watcher.
pub async fn stream(
    spec: WatchSpec,
    creds: FsCreds,
) -> Result<mpsc::Receiver<FilesystemEvent>, ConnectError> {
    let (tx, rx) = mpsc::channel(256);
    start(spec, creds, Sink::Stream(tx), CancellationToken::new()).await?;
    Ok(rx)
}

/// Validates the directory as the requesting user, sets up inotify and spawns the reader task.
/// Errors here are returned to the caller before any event is sent.
async fn start(
    spec: WatchSpec,
    creds: FsCreds,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<(), ConnectError> {
    let inotify = Inotify::init()
        .map_err(|e| ConnectError::internal(format!("creating inotify instance: {e}")))?;
    let events = inotify
        .into_event_stream(vec![0u8; 16 * 1024])
        .map_err(|e| ConnectError::internal(format!("registering inotify: {e}")))?;
    let watches = events.watches();

    // As the user: the directory must exist and be listable by them, like envd's os.Stat plus
    // the read access inotify_add_watch itself asks for.
    let s = spec.clone();
    let w = watches.clone();
    let (root_wd, dirs) = run_as(creds.clone(), move || {
        let md = std::fs::metadata(&s.root).map_err(|e| {
            ConnectError::from_io(&e, &format!("path {} not found", s.root.display()))
        })?;
        if !md.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "path {} is not a directory",
                s.root.display()
            )));
        }
        if !s.allow_network_mounts && is_network_mount(&s.root) {
            return Err(ConnectError::invalid_argument(format!(
                "cannot watch path on network filesystem: {}",
                s.root.display()
            )));
        }
        std::fs::read_dir(&s.root)
            .map_err(|e| ConnectError::from_io(&e, &format!("reading {}", s.root.display())))?;
        let mut w = w;
        let root_wd = w
            .add(&s.root, watch_mask(true))
            .map_err(|e| ConnectError::from_io(&e, "adding inotify watch"))?;
        let mut dirs = Vec::new();
        if s.recursive {
            add_subtree(&mut w, &s.root, Path::new(""), &mut dirs, &mut Vec::new());
        }
        Ok((root_wd, dirs))
    })
    .await?;

    let mut dir_of: HashMap<c_int, (WatchDescriptor, PathBuf)> = dirs
        .into_iter()
        .map(|(wd, rel)| (wd.get_watch_descriptor_id(), (wd, rel)))
        .collect();
    dir_of.insert(
        root_wd.get_watch_descriptor_id(),
        (root_wd.clone(), PathBuf::new()),
    );
    let task = WatchTask {
        spec,
        creds,
        sink,
        watches,
        dir_of,
        root_wd: root_wd.get_watch_descriptor_id(),
    };
    tokio::spawn(task.run(events, cancel));
    Ok(())
}

struct WatchTask {
    spec: WatchSpec,
    creds: FsCreds,
    sink: Sink,
    watches: Watches,
    /// Watched directories, relative to the root ("" for the root itself).
    dir_of: HashMap<c_int, (WatchDescriptor, PathBuf)>,
    root_wd: c_int,
}

impl WatchTask {
    async fn run(mut self, mut events: inotify::EventStream<Vec<u8>>, cancel: CancellationToken) {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.sink.closed() => break,
                ev = events.next() => ev,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    tracing::warn!("reading inotify events: {e}");
                    break;
                }
                None => break,
            };
            if !self.handle(ev).await {
                break;
            }
        }
        // Dropping `events` closes the inotify fd and with it every watch.
    }

    /// Handles one inotify event; false when the watcher should stop.
    async fn handle(&mut self, ev: inotify::Event<std::ffi::OsString>) -> bool {
        let mask = ev.mask;
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(root = %self.spec.root.display(), "inotify queue overflowed; events were lost");
            return true;
        }
        let id = ev.wd.get_watch_descriptor_id();
        if mask.contains(EventMask::IGNORED) {
            self.dir_of.remove(&id);
            // The watched directory itself is gone: nothing more will come.
            return id != self.root_wd;
        }
        let Some((_, dir_rel)) = self.dir_of.get(&id) else {
            return true; // a watch we already dropped
        };
        // Events about a watched directory itself (no name) are reported by its parent.
        let Some(name) = ev.name else {
            return true;
        };
        let rel = dir_rel.join(name);
        let is_dir = mask.contains(EventMask::ISDIR);

        let mut out = Vec::new();
        if self.spec.recursive && is_dir {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                out.extend(self.watch_new_dir(&rel).await);
            } else if mask.contains(EventMask::MOVED_FROM) {
                self.unwatch_subtree(&rel);
            }
        }
        for kind in event_types(mask) {
            if !self.emit(&rel, kind).await {
                return false;
            }
        }
        for found in out {
            if !self.emit(&found, EventType::Create).await {
                return false;
            }
        }
        true
    }

    async fn emit(&self, rel: &Path, kind: EventType) -> bool {
        let entry = if self.spec.include_entry && kind != EventType::Remove {
            // A single lstat; cheap enough to do inline.
            entry::entry_info(&self.spec.root.join(rel), &mut Names::default()).ok()
        } else {
            None
        };
        let ev = FilesystemEvent {
            name: rel.to_string_lossy().into_owned(),
            event_type: kind,
            entry,
        };
        self.sink.deliver(ev).await
    }

    /// Watches a directory that appeared below the root, with everything already inside it.
    /// Returns what was found inside: it may have been created before the watch existed, so it
    /// is reported as created (a duplicate CREATE is possible, a missed one is not).
    async fn watch_new_dir(&mut self, rel: &Path) -> Vec<PathBuf> {
        let root = self.spec.root.clone();
        let rel = rel.to_path_buf();
        let mut watches = self.watches.clone();
        let res = run_as(self.creds.clone(), move || {
            let mut dirs = Vec::new();
            let mut found = Vec::new();
            add_subtree(&mut watches, &root, &rel, &mut dirs, &mut found);
            Ok((dirs, found))
        })
        .await;
        match res {
            Ok((dirs, found)) => {
                for (wd, rel) in dirs {
                    self.dir_of.insert(wd.get_watch_descriptor_id(), (wd, rel));
                }
                found
            }
            Err(e) => {
                tracing::debug!("watching new directory: {}", e.message);
                Vec::new()
            }
        }
    }

    /// Stops watching a directory moved out of (or within) the tree; a move within the tree
    /// re-adds it under its new name on MOVED_TO.
    fn unwatch_subtree(&mut self, rel: &Path) {
        let gone: Vec<c_int> = self
            .dir_of
            .iter()
            .filter(|(_, (_, p))| p.starts_with(rel))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some((wd, _)) = self.dir_of.remove(&id) {
                let _ = self.watches.remove(wd);
            }
        }
    }
}

/// Adds watches for `root/rel` (when `rel` is not empty) and every directory below it, without
/// following symlinks. Collects the added watches and every entry found below `rel`.
fn add_subtree(
    watches: &mut Watches,
    root: &Path,
    rel: &Path,
    dirs: &mut Vec<(WatchDescriptor, PathBuf)>,
    found: &mut Vec<PathBuf>,
) {
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let full = root.join(&dir);
        if !dir.as_os_str().is_empty() {
            match watches.add(&full, watch_mask(false)) {
                Ok(wd) => dirs.push((wd, dir.clone())),
                Err(e) => {
                    tracing::debug!("watching {}: {e}", full.display());
                    continue;
                }
            }
        }
        let Ok(rd) = std::fs::read_dir(&full) else {
            continue;
        };
        for child in rd.flatten() {
            let child_rel = dir.join(child.file_name());
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child_rel.clone());
            }
            found.push(child_rel);
        }
    }
}

fn watch_mask(root: bool) -> WatchMask {
    let mut m = WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::EXCL_UNLINK
        | WatchMask::ONLYDIR;
    if !root {
        // The root may be given through a symlink; directories below are never followed.
        m |= WatchMask::DONT_FOLLOW;
    }
    m
}

/// envd's mapping (via fsnotify): created or moved in → CREATE, written → WRITE, deleted →
/// REMOVE, moved away → RENAME, attributes changed → CHMOD.
fn event_types(mask: EventMask) -> Vec<EventType> {
    let mut out = Vec::new();
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        out.push(EventType::Create);
    }
    if mask.contains(EventMask::MOVED_FROM) {
        out.push(EventType::Rename);
    }
    if mask.contains(EventMask::ATTRIB) {
        out.push(EventType::Chmod);
    }
    if mask.contains(EventMask::MODIFY) {
        out.push(EventType::Write);
    }
    if mask.contains(EventMask::DELETE) {
        out.push(EventType::Remove);
    }
    out
}

/// NFS, CIFS/SMB and FUSE mounts, which envd refuses to watch unless asked.
fn is_network_mount(path: &Path) -> bool {
    const NETWORK_MAGICS: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];
    rustix::fs::statfs(path).is_ok_and(|s| NETWORK_MAGICS.contains(&{ s.f_type }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_mapping() {
        assert_eq!(event_types(EventMask::CREATE), vec![EventType::Create]);
        assert_eq!(event_types(EventMask::MOVED_TO), vec![EventType::Create]);
        assert_eq!(event_types(EventMask::MOVED_FROM), vec![EventType::Rename]);
        assert_eq!(event_types(EventMask::MODIFY), vec![EventType::Write]);
        assert_eq!(
            event_types(EventMask::DELETE | EventMask::ISDIR),
            vec![EventType::Remove]
        );
        assert_eq!(event_types(EventMask::ATTRIB), vec![EventType::Chmod]);
    }

    #[tokio::test]
    async fn recursive_stream_sees_new_subdirectories() {
        let dir = std::env::temp_dir().join(format!("coppice-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let creds = FsCreds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: vec![],
        };
        let spec = WatchSpec {
            root: dir.clone(),
            recursive: true,
            include_entry: true,
            allow_network_mounts: false,
        };
        let mut rx = stream(spec, creds).await.unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.name.as_str(), first.event_type),
            ("sub", EventType::Create)
        );
        std::fs::write(dir.join("sub/f.txt"), b"x").unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if ev.name == "sub/f.txt" {
                assert!(ev.entry.is_some());
                seen.push(ev.event_type);
            }
        }
        assert!(seen.contains(&EventType::Create));
        assert!(seen.contains(&EventType::Write));
        drop(rx);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
