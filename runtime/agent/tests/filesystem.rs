//! The real agent binary over its unix socket: `filesystem.Filesystem` and `/files` against the
//! real filesystem and real inotify. Needs root (the agent switches to other users' identities).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use coppice_envd::client::{BoxBody, full_body};
use coppice_envd::connect::{EnvelopeDecoder, encode_envelope};
use coppice_envd::filesystem::{
    CreateWatcherResponse, EntryInfo, EntryResponse, EventType, FileType, GetWatcherEventsResponse,
    ListDirResponse, WatchDirResponse, WriteInfo,
};
use coppice_envd::{Code, ConnectError};
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

mod common;
use common::Agent;

const FS: &str = "filesystem.Filesystem";
const MB50: usize = 50 * 1024 * 1024;

impl Agent {
    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        req: Value,
    ) -> Result<T, ConnectError> {
        self.client.unary(&format!("{FS}/{method}"), &req).await
    }

    /// A unary call as a named user (`Authorization: Basic base64("name:")`).
    async fn call_as(&self, user: &str, method: &str, req: Value) -> Result<Value, ConnectError> {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        let req = Request::post(format!("/{FS}/{method}"))
            .header("host", "agent")
            .header("content-type", "application/json")
            .header("authorization", format!("Basic {auth}"))
            .body(full_body(serde_json::to_vec(&req).unwrap()))
            .unwrap();
        let resp = self.client.send(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if status != StatusCode::OK {
            return Err(coppice_envd::client::error_from_body(status, &bytes));
        }
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo, ConnectError> {
        self.call::<EntryResponse>("Stat", json!({ "path": path }))
            .await
            .map(|r| r.entry)
    }

    /// `POST /files` with any body; returns status and parsed JSON.
    async fn post_files(
        &self,
        query: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        body: BoxBody,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(format!("/files?{query}"))
            .header("host", "agent")
            .header("content-type", content_type);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = self.client.send(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get_files(&self, query: &str) -> http::Response<hyper::body::Incoming> {
        let req = Request::get(format!("/files?{query}"))
            .header("host", "agent")
            .body(full_body(Bytes::new()))
            .unwrap();
        self.client.send(req).await.unwrap()
    }

    /// Peak resident memory of the agent (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// inotify instances the agent holds open.
    fn inotify_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify"))
            })
            .count()
    }
}

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `user` account (uid, home), created once if the system lacks it.
fn ensure_user() -> (u32, PathBuf) {
    static USER: OnceLock<(u32, PathBuf)> = OnceLock::new();
    USER.get_or_init(|| {
        if nix::unistd::User::from_name("user").unwrap().is_none() {
            let st = Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", "user"])
                .status()
                .expect("running useradd");
            assert!(st.success(), "useradd -m user failed");
        }
        let u = nix::unistd::User::from_name("user").unwrap().unwrap();
        std::fs::create_dir_all(&u.dir).unwrap();
        (u.uid.as_raw(), u.dir)
    })
    .clone()
}

/// Deterministic test data: byte `i` of the pattern.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i as u32).wrapping_mul(0x9E37_79B1) >> 24) as u8 ^ (i >> 20) as u8)
        .collect()
}

/// A streamed body of `total` pattern bytes, optionally framed by `prefix`/`suffix`; never
/// holds more than one 256 KiB chunk.
fn pattern_body(total: usize, prefix: Vec<u8>, suffix: Vec<u8>) -> BoxBody {
    const CHUNK: usize = 256 * 1024;
    let chunks = futures::stream::iter((0..total).step_by(CHUNK))
        .map(move |off| Bytes::from(pattern(off, CHUNK.min(total - off))));
    let all = futures::stream::once(async move { Bytes::from(prefix) })
        .chain(chunks)
        .chain(futures::stream::once(async move { Bytes::from(suffix) }))
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    BodyExt::boxed_unsync(StreamBody::new(all))
}

/// Downloads `path` and checks it is exactly `total` pattern bytes, streaming.
async fn assert_download_matches(agent: &Agent, path: &str, total: usize) {
    let resp = agent
        .get_files(&format!("path={}", query_escape(path)))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let base = Path::new(path).file_name().unwrap().to_str().unwrap();
    assert_eq!(
        resp.headers()["content-disposition"],
        format!("inline; filename={base}").as_str()
    );
    let mut body = resp.into_body();
    let mut off = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert_eq!(
                &data[..],
                &pattern(off, data.len())[..],
                "mismatch at {off}"
            );
            off += data.len();
        }
    }
    assert_eq!(off, total);
}

fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (filename, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn stat_make_dir_move_list_remove() {
    let agent = Agent::launch("root", "warn").await;

    // MakeDir creates parents; a second time is already_exists.
    let d = agent.path("a/b/c");
    let made: EntryResponse = agent.call("MakeDir", json!({ "path": d })).await.unwrap();
    assert_eq!(made.entry.file_type, FileType::Directory);
    assert_eq!(made.entry.path, d);
    assert_eq!(made.entry.name, "c");
    assert_eq!(made.entry.permissions, "drwxr-xr-x");
    let err = agent
        .call::<EntryResponse>("MakeDir", json!({ "path": d }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists);

    // Stat of a file: every EntryInfo field.
    let f = agent.path("a/file.txt");
    std::fs::write(&f, b"hello world!").unwrap();
    let raw: Value = agent.call("Stat", json!({ "path": f })).await.unwrap();
    let e = &raw["entry"];
    assert_eq!(e["name"], "file.txt");
    assert_eq!(e["type"], "FILE_TYPE_FILE");
    assert_eq!(e["path"], f.as_str());
    assert_eq!(e["size"], "12");
    assert_eq!(e["mode"], 0o644);
    assert_eq!(e["permissions"], "-rw-r--r--");
    assert_eq!(e["owner"], "root");
    assert_eq!(e["group"], "root");
    let mtime = e["modifiedTime"].as_str().unwrap();
    assert!(mtime.ends_with('Z') && mtime.len() >= 20, "{mtime}");
    assert!(e.get("isSymlink").is_none());

    // Not found, empty and NUL paths.
    let err = agent.stat(&agent.path("nope")).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(
        agent.stat("").await.unwrap_err().code,
        Code::InvalidArgument
    );
    assert_eq!(
        agent.stat("/tmp/a\0b").await.unwrap_err().code,
        Code::InvalidArgument
    );

    // Stat on a symlink reports the link.
    let link = agent.path("a/link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    let l = agent.stat(&link).await.unwrap();
    assert!(l.is_symlink);
    assert_eq!(l.symlink_target.as_deref(), Some(f.as_str()));
    assert_eq!(l.file_type, FileType::File);
    assert_eq!(l.path, link);

    // Move renames, creating the destination's parents.
    let moved = agent.path("m/n/moved.txt");
    let r: EntryResponse = agent
        .call("Move", json!({ "source": f, "destination": moved }))
        .await
        .unwrap();
    assert_eq!(r.entry.path, moved);
    assert_eq!(r.entry.size, 12);
    assert_eq!(
        agent.stat(&f).await.unwrap_err().code,
        Code::NotFound,
        "source is gone"
    );
    let err = agent
        .call::<EntryResponse>("Move", json!({ "source": f, "destination": moved }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    // ListDir with depth; 0 means 1.
    let names = |r: &ListDirResponse| {
        let mut v: Vec<String> = r
            .entries
            .iter()
            .map(|e| e.path.strip_prefix(&agent.path("")).unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let root = agent.path("");
    let d1: ListDirResponse = agent
        .call("ListDir", json!({ "path": root, "depth": 1 }))
        .await
        .unwrap();
    assert_eq!(names(&d1), ["a", "m"]);
    let d0: ListDirResponse = agent
        .call("ListDir", json!({ "path": root }))
        .await
        .unwrap();
    assert_eq!(names(&d0), names(&d1));
    let d3: ListDirResponse = agent
        .call("ListDir", json!({ "path": root, "depth": 3 }))
        .await
        .unwrap();
    assert_eq!(
        names(&d3),
        ["a", "a/b", "a/b/c", "a/link", "m", "m/n", "m/n/moved.txt"]
    );
    let link_entry = d3.entries.iter().find(|e| e.name == "link").unwrap();
    assert!(link_entry.is_symlink);
    let err = agent
        .call::<ListDirResponse>("ListDir", json!({ "path": moved }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = agent
        .call::<ListDirResponse>("ListDir", json!({ "path": agent.path("nope") }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    // Remove a file, a symlink (not its target) and a tree; removing nothing is fine (envd).
    let _: Value = agent.call("Remove", json!({ "path": link })).await.unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err());
    let _: Value = agent
        .call("Remove", json!({ "path": moved }))
        .await
        .unwrap();
    assert_eq!(agent.stat(&moved).await.unwrap_err().code, Code::NotFound);
    let _: Value = agent
        .call("Remove", json!({ "path": agent.path("a") }))
        .await
        .unwrap();
    assert_eq!(
        agent.stat(&agent.path("a")).await.unwrap_err().code,
        Code::NotFound
    );
    let _: Value = agent
        .call("Remove", json!({ "path": agent.path("a") }))
        .await
        .unwrap();
}

#[tokio::test]
async fn files_50mb_round_trips_stream_without_buffering() {
    let agent = Agent::launch("root", "warn").await;
    let baseline = agent.peak_rss_kib();

    // application/octet-stream, streamed from a generator.
    let raw = agent.path("big/raw.bin");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(&raw)),
            "application/octet-stream",
            &[],
            pattern_body(MB50, Vec::new(), Vec::new()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let info: Vec<WriteInfo> = serde_json::from_value(body).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].path, raw);
    assert_eq!(info[0].name, "raw.bin");
    assert_eq!(info[0].kind, "file");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), MB50 as u64);
    assert_download_matches(&agent, &raw, MB50).await;

    // multipart/form-data with `?path=`, the part streamed between its headers and trailer.
    let mp = agent.path("big/multipart.bin");
    let boundary = "coppice-boundary-7d1f";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{mp}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(&mp)),
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            pattern_body(MB50, head.into_bytes(), tail.into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["path"], mp.as_str());
    assert_download_matches(&agent, &mp, MB50).await;

    // Two 50 MB uploads and downloads later the agent never held a file in memory.
    let peak = agent.peak_rss_kib();
    assert!(
        peak < 25 * 1024,
        "agent peak RSS {peak} KiB (baseline {baseline} KiB)"
    );
}

#[tokio::test]
async fn files_details_multi_part_gzip_metadata_and_errors() {
    let agent = Agent::launch("root", "warn").await;

    // Several parts without `?path=`: each filename is its target.
    let a = agent.path("multi/a.txt");
    let b = agent.path("multi/deep/b.txt");
    let boundary = "xyzzy";
    let body = multipart(
        boundary,
        &[(a.as_str(), &b"alpha"[..]), (b.as_str(), &b"beta"[..])],
    );
    let (status, resp) = agent
        .post_files(
            "",
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let paths: Vec<&str> = resp
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [a.as_str(), b.as_str()]);
    assert_eq!(std::fs::read(&a).unwrap(), b"alpha");
    assert_eq!(std::fs::read(&b).unwrap(), b"beta");

    // Overwrite truncates.
    let body = multipart(boundary, &[(a.as_str(), &b"A"[..])]);
    let (status, _) = agent
        .post_files(
            &format!("path={}", query_escape(&a)),
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read(&a).unwrap(), b"A");

    // gzip octet-stream, with metadata headers stored as user xattrs (tmpfs may lack them).
    let gz = agent.path("gz.txt");
    let mut enc = async_compression::tokio::bufread::GzipEncoder::new(&b"compressed hello"[..]);
    let mut compressed = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut enc, &mut compressed)
        .await
        .unwrap();
    let (status, resp) = agent
        .post_files(
            &format!("path={}", query_escape(&gz)),
            "application/octet-stream",
            &[("content-encoding", "gzip"), ("x-metadata-origin", "test")],
            full_body(compressed),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(std::fs::read(&gz).unwrap(), b"compressed hello");
    assert_eq!(resp[0]["metadata"]["origin"], "test");
    let xattrs_work = xattr_supported(&gz);
    if xattrs_work {
        let e = agent.stat(&gz).await.unwrap();
        assert_eq!(e.metadata.get("origin").map(String::as_str), Some("test"));
    }

    // Errors: JSON with an integer code.
    let resp = agent
        .get_files(&format!("path={}", query_escape(&agent.path("none"))))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], 404);
    assert!(body["message"].is_string());
    let resp = agent
        .get_files(&format!("path={}", query_escape(&agent.path("multi"))))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, resp) = agent
        .post_files("", "application/octet-stream", &[], full_body(&b"x"[..]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["code"], 400);
    // Writing over a directory.
    let (status, _) = agent
        .post_files(
            &format!("path={}", query_escape(&agent.path("multi"))),
            "application/octet-stream",
            &[],
            full_body(&b"x"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn xattr_supported(path: &str) -> bool {
    rustix::fs::setxattr(path, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok()
}

#[tokio::test]
async fn default_user_owns_writes_and_relative_paths_use_home() {
    let (uid, home) = ensure_user();
    let agent = Agent::launch("user", "warn").await;
    let home_s = home.to_string_lossy().into_owned();
    let tag = format!("coppice-it-{}", std::process::id());

    // Relative upload lands in the home directory, owned by the user with new parents.
    let rel = format!("{tag}/sub/r.txt");
    let (status, resp) = agent
        .post_files(
            &format!("path={}", query_escape(&rel)),
            "application/octet-stream",
            &[],
            full_body(&b"relative"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let abs = home.join(&rel);
    assert_eq!(resp[0]["path"], abs.to_str().unwrap());
    assert_eq!(std::fs::read(&abs).unwrap(), b"relative");
    assert_eq!(std::fs::metadata(&abs).unwrap().uid(), uid);
    assert_eq!(std::fs::metadata(home.join(&tag)).unwrap().uid(), uid);

    // Multipart relative filename, and Stat/MakeDir/ListDir with relative paths.
    let boundary = "b0undary";
    let body = multipart(boundary, &[(format!("{tag}/m.txt").as_str(), &b"mp"[..])]);
    let (status, _) = agent
        .post_files(
            "",
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::fs::metadata(home.join(&tag).join("m.txt"))
            .unwrap()
            .uid(),
        uid
    );
    let e = agent.stat(&format!("{tag}/m.txt")).await.unwrap();
    assert_eq!(e.path, format!("{home_s}/{tag}/m.txt"));
    assert_eq!(e.owner, "user");
    let made: EntryResponse = agent
        .call("MakeDir", json!({ "path": format!("{tag}/dir") }))
        .await
        .unwrap();
    assert_eq!(made.entry.owner, "user");
    assert_eq!(
        std::fs::metadata(home.join(&tag).join("dir"))
            .unwrap()
            .uid(),
        uid
    );
    let listed: ListDirResponse = agent
        .call("ListDir", json!({ "path": "~/".to_string() + &tag }))
        .await
        .unwrap();
    assert_eq!(listed.entries.len(), 3);

    // The user cannot write into or read from root's private places; root (asked for) can.
    let secret = agent.path("secret.txt");
    std::fs::write(&secret, b"top").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let resp = agent
        .get_files(&format!("path={}", query_escape(&secret)))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = agent
        .get_files(&format!("path={}&username=root", query_escape(&secret)))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = agent
        .post_files(
            "path=/root/coppice-denied.txt",
            "application/octet-stream",
            &[],
            full_body(&b"x"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!Path::new("/root/coppice-denied.txt").exists());
    let err = agent
        .call::<EntryResponse>("MakeDir", json!({ "path": "/root/coppice-denied" }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied);
    // As root (Basic auth), the same directory is created and owned by root.
    let made = agent
        .call_as("root", "MakeDir", json!({ "path": agent.path("rootdir") }))
        .await
        .unwrap();
    assert_eq!(made["entry"]["owner"], "root");
    assert_eq!(std::fs::metadata(agent.path("rootdir")).unwrap().uid(), 0);

    std::fs::remove_dir_all(home.join(&tag)).unwrap();
}

/// Reads `WatchDir` messages until `want` returns true for one, failing after 10 s.
async fn wait_for<S>(stream: &mut S, mut want: impl FnMut(&WatchDirResponse) -> bool)
where
    S: futures::Stream<Item = Result<WatchDirResponse, ConnectError>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = stream.next().await.expect("stream ended").unwrap();
            if want(&msg) {
                return;
            }
        }
    })
    .await
    .expect("event did not arrive");
}

fn is_event(msg: &WatchDirResponse, name: &str, kind: EventType) -> bool {
    matches!(msg, WatchDirResponse::Filesystem(ev) if ev.name == name && ev.event_type == kind)
}

#[tokio::test]
async fn watch_dir_streams_events_recursively_until_disconnect() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    let idle_fds = agent.inotify_fds();
    let mut stream = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": root, "recursive": true, "includeEntry": true }),
            None,
        )
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, WatchDirResponse::Start {});
    assert_eq!(agent.inotify_fds(), idle_fds + 1);

    std::fs::write(agent.path("a.txt"), b"1").unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Create)).await;
    wait_for(&mut stream, |m| {
        matches!(m, WatchDirResponse::Filesystem(ev)
            if ev.name == "a.txt" && ev.event_type == EventType::Write
                && ev.entry.as_ref().is_some_and(|e| e.size == 1))
    })
    .await;
    std::fs::set_permissions(
        agent.path("a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Chmod)).await;
    std::fs::rename(agent.path("a.txt"), agent.path("b.txt")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Rename)).await;
    wait_for(&mut stream, |m| is_event(m, "b.txt", EventType::Create)).await;
    std::fs::remove_file(agent.path("b.txt")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "b.txt", EventType::Remove)).await;

    // Recursive: a new subdirectory is watched, and `mkdir -p` contents are reported.
    std::fs::create_dir_all(agent.path("s1/s2")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "s1/s2", EventType::Create)).await;
    std::fs::write(agent.path("s1/s2/deep.txt"), b"x").unwrap();
    wait_for(&mut stream, |m| {
        is_event(m, "s1/s2/deep.txt", EventType::Create)
    })
    .await;
    wait_for(&mut stream, |m| {
        is_event(m, "s1/s2/deep.txt", EventType::Write)
    })
    .await;
    // A directory moved within the tree is watched under its new name.
    std::fs::rename(agent.path("s1"), agent.path("t1")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "t1", EventType::Create)).await;
    std::fs::write(agent.path("t1/s2/after.txt"), b"x").unwrap();
    wait_for(&mut stream, |m| {
        is_event(m, "t1/s2/after.txt", EventType::Create)
    })
    .await;

    // The client going away stops the watcher and closes its inotify instance.
    drop(stream);
    for _ in 0..100 {
        if agent.inotify_fds() == idle_fds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent.inotify_fds(), idle_fds);
}

#[tokio::test]
async fn watch_dir_wire_format_keepalive_and_errors() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    // Raw request to set keepalive-ping-interval and read the exact content type.
    let req = Request::post(format!("/{FS}/WatchDir"))
        .header("host", "agent")
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("keepalive-ping-interval", "1")
        .body(full_body(encode_envelope(
            0,
            json!({ "path": root }).to_string().as_bytes(),
        )))
        .unwrap();
    let resp = agent.client.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    let mut body = resp.into_body();
    let mut dec = EnvelopeDecoder::default();
    let mut msgs: Vec<Value> = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while msgs.len() < 2 {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                dec.push(&data);
            }
            while let Some(env) = dec.next_envelope().unwrap() {
                assert_eq!(env.flags, 0);
                msgs.push(serde_json::from_slice(&env.data).unwrap());
            }
        }
    })
    .await
    .expect("start and keepalive");
    assert_eq!(msgs[0], json!({ "start": {} }));
    assert_eq!(msgs[1], json!({ "keepalive": {} }));
    drop(body);

    // `connect-timeout-ms` bounds the stream: it ends with deadline_exceeded.
    let mut stream = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": root }),
            Some(500),
        )
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        WatchDirResponse::Start {}
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends at its deadline");
    assert_eq!(end.unwrap().unwrap_err().code, Code::DeadlineExceeded);
    assert!(stream.next().await.is_none());

    // Not a directory / missing → unary-style errors before the stream starts.
    std::fs::write(agent.path("f"), b"").unwrap();
    let err = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": agent.path("f") }),
            None,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": agent.path("missing") }),
            None,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn polled_watcher_reports_events_since_last_call() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    let w: CreateWatcherResponse = agent
        .call("CreateWatcher", json!({ "path": root, "recursive": true }))
        .await
        .unwrap();
    assert!(!w.watcher_id.is_empty());
    let id = json!({ "watcherId": w.watcher_id });

    let mut seen = Vec::new();
    let poll = async |seen: &mut Vec<(String, EventType)>| {
        let r: GetWatcherEventsResponse = agent.call("GetWatcherEvents", id.clone()).await.unwrap();
        seen.extend(r.events.into_iter().map(|e| (e.name, e.event_type)));
    };
    // inotify can only watch a new directory once it has seen it: wait for that before
    // creating inside it (a file created and deleted before would go unseen, as with envd).
    std::fs::create_dir(agent.path("d")).unwrap();
    for _ in 0..100 {
        poll(&mut seen).await;
        if seen.contains(&("d".to_string(), EventType::Create)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(agent.path("d/x.txt"), b"hi").unwrap();
    std::fs::remove_file(agent.path("d/x.txt")).unwrap();
    for _ in 0..100 {
        poll(&mut seen).await;
        if seen.contains(&("d/x.txt".to_string(), EventType::Remove)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.contains(&("d".to_string(), EventType::Create)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("d/x.txt".to_string(), EventType::Create)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("d/x.txt".to_string(), EventType::Remove)),
        "{seen:?}"
    );

    // Drained: nothing new until something happens.
    let r: GetWatcherEventsResponse = agent.call("GetWatcherEvents", id.clone()).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);

    let _: Value = agent.call("RemoveWatcher", id.clone()).await.unwrap();
    let err = agent
        .call::<GetWatcherEventsResponse>("GetWatcherEvents", id.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let err = agent.call::<Value>("RemoveWatcher", id).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

/// Unmounts (lazily) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn disk_full_is_507() {
    let agent = Agent::launch("root", "warn").await;
    let small = PathBuf::from(agent.path("small"));
    std::fs::create_dir(&small).unwrap();
    // A 1 MiB tmpfs; skipped where mounting is not allowed.
    if nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .is_err()
    {
        return;
    }
    let _mount = Mount(small.clone());
    let target = small.join("too-big.bin");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(target.to_str().unwrap())),
            "application/octet-stream",
            &[],
            pattern_body(4 * 1024 * 1024, Vec::new(), Vec::new()),
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["code"], 507);
}
