//! End-to-end tests: the real daemon (`coppice serve`) and the real CLI against real sandboxes.
//!
//! One daemon serves the whole test binary: started lazily by the first test, with a temporary
//! state directory, its own socket and a free loopback port. Tests run in parallel against it
//! holding `RESTART` in read mode; the recovery test, which kills and restarts the daemon,
//! holds it in write mode. The daemon dies with the test process (PR_SET_PDEATHSIG from a
//! thread that lives as long as the process), and an `atexit` hook kills every sandbox, the
//! daemon, and removes the state directory.
//!
//! Needs root (namespaces, cgroups, the bridge); without root every test says so and passes.
//! Only one daemon may run per host (each sweeps the shared `coppice` cgroups): the harness
//! waits up to 5 minutes for any other `coppice serve` to stop before it starts its own.
//! When a test fails, the daemon's log is copied to $TMPDIR/coppice-e2e-daemon.log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

#[path = "../harness/mod.rs"]
mod harness;
use harness::*;

mod bad_input;
mod commands;
mod isolation;
mod lifetimes;
mod network;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client for the daemon's TCP listener (streams chunked bodies as they come).

struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    remaining: Option<usize>,
    done: bool,
}

impl Body {
    /// The next piece of the body as it arrives; `None` at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .expect("chunk size");
            if size == 0 {
                self.done = true;
                return None;
            }
            let mut buf = vec![0; size + 2];
            self.reader.read_exact(&mut buf).unwrap();
            buf.truncate(size);
            return Some(buf);
        }
        let mut buf = vec![0; 64 * 1024];
        let want = self.remaining.map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.reader.read(&mut buf[..want]).unwrap();
        if let Some(r) = &mut self.remaining {
            *r -= n;
            self.done = *r == 0;
        }
        if n == 0 {
            self.done = true;
            return None;
        }
        buf.truncate(n);
        Some(buf)
    }

    fn all(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk() {
            out.extend_from_slice(&c);
        }
        out
    }
}

/// Sends one request (`Connection: close`); returns the status and the body to read.
fn http(method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Body) {
    let d = DAEMON.get().expect("daemon started");
    let mut stream = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        d.api_token(),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let (mut chunked, mut remaining) = (false, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            "content-length" => remaining = value.trim().parse().ok(),
            _ => {}
        }
    }
    let done = remaining == Some(0);
    (
        status,
        Body {
            reader,
            chunked,
            remaining,
            done,
        },
    )
}

/// A unary Connect call through the daemon's envd proxy.
fn unary(id: &str, method: &str, req: Value) -> (u16, Value) {
    let path = format!("/api/v1/sandboxes/{id}/envd/{method}");
    let (status, body) = http(
        "POST",
        &path,
        "application/json",
        req.to_string().as_bytes(),
    );
    let body = body.all();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A server-streaming Connect call (`application/connect+json` envelopes) through the proxy.
struct ConnectStream {
    body: Body,
    buf: Vec<u8>,
}

fn connect_stream(id: &str, method: &str, req: Value) -> ConnectStream {
    let payload = req.to_string();
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    envelope.extend_from_slice(payload.as_bytes());
    let path = format!("/api/v1/sandboxes/{id}/envd/{method}");
    let (status, body) = http("POST", &path, "application/connect+json", &envelope);
    assert_eq!(
        status,
        200,
        "{method}: {}",
        String::from_utf8_lossy(&body.all())
    );
    ConnectStream {
        body,
        buf: Vec::new(),
    }
}

impl ConnectStream {
    /// The next message; `None` after the end-of-stream envelope (whose error, if any, panics).
    fn next(&mut self) -> Option<Value> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let msg: Value = serde_json::from_slice(&self.buf[5..5 + len]).unwrap();
                    self.buf.drain(..5 + len);
                    if flags & 2 != 0 {
                        assert!(
                            msg.get("error").is_none(),
                            "stream ended with an error: {msg}"
                        );
                        return None;
                    }
                    return Some(msg);
                }
            }
            self.buf.extend_from_slice(&self.body.chunk()?);
        }
    }

    /// Reads a process stream to its end: (stdout+pty bytes, stderr bytes, the end event).
    fn until_end(&mut self) -> (Vec<u8>, Vec<u8>, Value) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(msg) = self.next() {
            let ev = &msg["event"];
            if let Some(data) = ev.get("data") {
                for (k, v) in data.as_object().unwrap() {
                    match k.as_str() {
                        "stderr" => err.extend(unb64(v)),
                        _ => out.extend(unb64(v)),
                    }
                }
            } else if let Some(end) = ev.get("end") {
                return (out, err, end.clone());
            }
        }
        panic!("the process stream ended without an end event");
    }

    /// Waits for the start event; returns the process's pid.
    fn started(&mut self) -> u64 {
        let msg = self.next().expect("start event");
        msg["event"]["start"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a start event: {msg}"))
    }
}
