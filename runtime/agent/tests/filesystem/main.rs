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

#[path = "../common/mod.rs"]
mod common;
use common::Agent;

mod disk;
mod files;
mod watch;

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
