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

mod harness;
use harness::*;

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

// ---------------------------------------------------------------------------------------------
// Isolation.

#[test]
fn isolation_from_the_host() {
    let Some(_g) = shared() else { return };
    let d = daemon();
    let sb = create(&[]);

    let cmdline = sb.sh_ok("cat /proc/1/cmdline");
    assert_eq!(cmdline.split('\0').next(), Some("coppice-agent"));

    // Only the sandbox's own processes are visible.
    let ps = sb.sh_ok("ps -eo pid=,args=");
    assert!(
        ps.lines()
            .next()
            .unwrap()
            .trim()
            .starts_with("1 coppice-agent"),
        "{ps}"
    );
    assert!(ps.lines().count() <= 4, "unexpected processes inside: {ps}");
    for host_thing in ["coppice serve", "cargo", "sandbox-"] {
        assert!(
            !ps.contains(host_thing),
            "host process visible inside: {ps}"
        );
    }
    let me = std::process::id();
    assert_ne!(
        sb.sh(&format!("cat /proc/{me}/cmdline")).code,
        0,
        "the test process is visible inside"
    );

    // Host files outside the template are not there, not even for root inside.
    let state = path_str(&d.state);
    let probe = format!(
        "test -e /work || test -e /root/.rustup || test -e /root/.cargo || test -e {state}"
    );
    assert_ne!(
        sb.exec(&["--user", "root", "--", "sh", "-c", &probe]).code,
        0,
        "host files visible"
    );
    assert!(
        Path::new("/root/.rustup").exists(),
        "the probe above must look for something real"
    );
    let home = sb.root_ok("ls -A /root");
    assert!(
        !home.contains(".rustup") && !home.contains(".cargo"),
        "host /root visible: {home}"
    );
}

#[test]
fn sandboxes_are_isolated_from_each_other() {
    let Some(_g) = shared() else { return };
    let (a, b) = (create(&[]), create(&[]));

    a.sh_ok("echo secret > /home/user/a-only && echo tmp > /tmp/a-tmp");
    assert_eq!(a.sh_ok("cat /home/user/a-only"), "secret\n");
    assert_ne!(b.sh("cat /home/user/a-only").code, 0, "B sees A's home");
    assert_ne!(b.sh("cat /tmp/a-tmp").code, 0, "B sees A's /tmp");

    // A long-running process in A is visible in A only.
    a.sh_ok("setsid sleep 987 </dev/null >/dev/null 2>&1 &");
    assert!(
        a.sh_ok("ps -eo args=").contains("sleep 987"),
        "A's own process is missing"
    );
    assert!(
        !b.sh_ok("ps -eo args=").contains("sleep 987"),
        "B sees A's process"
    );

    let (ha, hb) = (a.sh_ok("hostname"), b.sh_ok("hostname"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(ha, hb);
    assert_ne!(ha.trim(), host.trim());
    assert_eq!(ha.trim(), a.info()["hostname"].as_str().unwrap());
}

#[test]
fn root_inside_is_unprivileged_outside() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    assert_eq!(sb.exec(&["--user", "root", "--", "id", "-u"]).stdout, "0\n");
    assert_eq!(sb.sh_ok("id -u"), "1000\n");
    assert_eq!(sb.sh_ok("echo $HOME"), "/home/user\n");

    let status = std::fs::read_to_string(format!("/proc/{}/status", sb.pid())).unwrap();
    let host_uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(
        host_uid >= 100_000,
        "root inside is uid {host_uid} on the host"
    );

    // Root inside owns the sandbox's root filesystem; changes stay in the sandbox.
    let name = format!("coppice-e2e-{}", sb.id);
    sb.root_ok(&format!(
        "echo '#!/bin/sh\necho hi' > /usr/local/bin/{name} && chmod +x /usr/local/bin/{name}"
    ));
    assert_eq!(sb.sh_ok(&name), "hi\n");
    assert!(
        !Path::new("/usr/local/bin").join(&name).exists(),
        "a sandbox wrote to the host's /usr"
    );
    assert!(
        sb.sh_ok("dpkg -l bash")
            .lines()
            .any(|l| l.starts_with("ii  bash "))
    );
    if sb.sh("command -v pip").code == 0 {
        assert!(sb.sh_ok("pip --version").starts_with("pip "));
    }
    // The default user cannot.
    assert_ne!(sb.sh("touch /usr/local/bin/nope").code, 0);
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn memory_limit_kills_the_hog_not_the_sandbox() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--memory", "64M"]);
    let out = sb.exec(&[
        "--",
        "python3",
        "-c",
        "b = bytearray(200 << 20); print('survived')",
    ]);
    assert_eq!(
        out.code, 137,
        "a 200 MB allocation under a 64 MB limit was not OOM-killed: {out:?}"
    );
    assert!(!out.stdout.contains("survived"));
    assert_eq!(
        sb.exec(&["--", "true"]).code,
        0,
        "the sandbox died with the hog"
    );
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/coppice/{}/memory.limit_in_bytes",
        sb.id
    ));
    assert_eq!(limit.unwrap().trim(), (64u64 << 20).to_string());
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--pids", "64"]);
    let out = sb.sh("bash -c 'for i in $(seq 200); do sleep 2 & done; wait' 2>&1");
    assert!(
        out.stdout.contains("Resource temporarily unavailable") || out.stdout.contains("fork"),
        "200 processes under a limit of 64: {out:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || sb.exec(&["--", "true"]).code
            == 0),
        "sandbox unusable"
    );
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/coppice/{}/pids.max", sb.id));
    assert_eq!(max.unwrap().trim(), "64");
}

#[test]
fn cpu_quota_throttles_a_busy_loop() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--cpus", "0.2"]);
    let usage = || -> u64 {
        let path = format!("/sys/fs/cgroup/cpuacct/coppice/{}/cpuacct.usage", sb.id);
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (cpu0, t0) = (usage(), Instant::now());
    let out = sb.exec(&["--", "timeout", "1.5", "sh", "-c", "while :; do :; done"]);
    let (cpu, wall) = (usage() - cpu0, t0.elapsed());
    assert_eq!(out.code, 124, "{out:?}");
    let share = cpu as f64 / wall.as_nanos() as f64;
    assert!(
        share < 0.4,
        "0.2 CPU used {share:.2} of a core over {wall:?}"
    );
    assert!(share > 0.05, "the loop hardly ran ({share:.2})");
}

// ---------------------------------------------------------------------------------------------
// Commands and the agent API through the daemon.

#[test]
fn exec_streams_output_as_it_happens() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let req = json!({ "cmd": ["bash", "-c", "echo first; sleep 2; echo second"] });
    let (status, mut body) = http(
        "POST",
        &format!("/api/v1/sandboxes/{}/exec", sb.id),
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let (mut buf, mut stdout, mut first_at, mut exit) = (Vec::new(), String::new(), None, None);
    while let Some(chunk) = body.chunk() {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line).unwrap();
            match ev["type"].as_str().unwrap() {
                "stdout" => {
                    stdout.push_str(&String::from_utf8(unb64(&ev["data"])).unwrap());
                    if stdout.contains("first") && first_at.is_none() {
                        first_at = Some(Instant::now());
                    }
                }
                "exit" => exit = Some(ev),
                _ => {}
            }
        }
    }
    let gap = first_at.expect("no 'first' line").elapsed();
    assert_eq!(stdout, "first\nsecond\n");
    assert!(
        gap > Duration::from_secs(1),
        "output was not streamed: first line only {gap:?} before the end"
    );
    assert_eq!(exit.expect("exit event")["exit_code"], 0);
}

#[test]
fn exec_env_cwd_and_exit_codes() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--env", "SANDBOX_WIDE=yes", "--meta", "owner=e2e"]);
    assert_eq!(sb.info()["metadata"]["owner"], "e2e");
    assert_eq!(
        sb.sh_ok("echo $SANDBOX_WIDE; sh -c 'echo nested:$SANDBOX_WIDE'"),
        "yes\nnested:yes\n"
    );
    assert_eq!(
        sb.exec(&["--user", "root", "--", "sh", "-c", "echo $SANDBOX_WIDE"])
            .stdout,
        "yes\n"
    );
    let out = sb.exec(&[
        "--env",
        "ONE_EXEC=1",
        "--",
        "sh",
        "-c",
        "echo $ONE_EXEC-$SANDBOX_WIDE",
    ]);
    assert_eq!(out.stdout, "1-yes\n");
    assert_eq!(
        sb.sh_ok("echo ${ONE_EXEC:-unset}"),
        "unset\n",
        "per-exec env leaked into the next command"
    );

    assert_eq!(sb.exec(&["--cwd", "/tmp", "--", "pwd"]).stdout, "/tmp\n");
    assert_eq!(sb.exec(&["--", "pwd"]).stdout, "/home/user\n");

    assert_eq!(sb.sh("exit 42").code, 42);
    assert_eq!(sb.sh("exit 0").code, 0);
    let out = sb.sh("echo out; echo err >&2; exit 3");
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(sb.sh("kill -9 $$").code, 137);
    let t0 = Instant::now();
    assert_ne!(sb.exec(&["--timeout", "1s", "--", "sleep", "30"]).code, 0);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "--timeout did not stop the command"
    );
}

#[test]
fn stdin_signals_and_pty_through_the_envd_proxy() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let id = sb.id.as_str();

    // stdin: cat echoes what is sent, then exits when stdin closes.
    let mut cat = connect_stream(
        id,
        "process.Process/Start",
        json!({ "process": { "cmd": "cat" }, "stdin": true }),
    );
    let pid = cat.started();
    let input = json!({ "process": { "pid": pid }, "input": { "stdin": b64(b"hello stdin\n") } });
    assert_eq!(unary(id, "process.Process/SendInput", input).0, 200);
    assert_eq!(
        unary(
            id,
            "process.Process/CloseStdin",
            json!({ "process": { "pid": pid } })
        )
        .0,
        200
    );
    let (out, _, end) = cat.until_end();
    assert_eq!(String::from_utf8(out).unwrap(), "hello stdin\n");
    assert_eq!(end["exited"], true);
    assert!(end.get("exitCode").is_none(), "cat failed: {end}");

    // Signals, by tag: the process ends by that signal.
    let start = json!({ "process": { "cmd": "sleep", "args": ["60"] }, "tag": "sleeper" });
    let mut sleeper = connect_stream(id, "process.Process/Start", start);
    sleeper.started();
    let (_, list) = unary(id, "process.Process/List", json!({}));
    assert!(
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tag"] == "sleeper"),
        "{list}"
    );
    let signal = json!({ "process": { "tag": "sleeper" }, "signal": "SIGNAL_SIGTERM" });
    assert_eq!(unary(id, "process.Process/SendSignal", signal).0, 200);
    let (_, _, end) = sleeper.until_end();
    assert_eq!(end["status"], "signal: terminated", "{end}");

    // A PTY of the requested size, driven by pty input.
    let start = json!({ "process": { "cmd": "bash", "args": ["-i"] }, "pty": { "size": { "cols": 100, "rows": 30 } } });
    let mut shell = connect_stream(id, "process.Process/Start", start);
    let pid = shell.started();
    let input =
        json!({ "process": { "pid": pid }, "input": { "pty": b64(b"stty size; tty; exit 3\n") } });
    assert_eq!(unary(id, "process.Process/SendInput", input).0, 200);
    let (out, _, end) = shell.until_end();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("30 100"), "pty size not applied: {out:?}");
    assert!(out.contains("/dev/pts/"), "not a terminal: {out:?}");
    assert_eq!(end["exitCode"], 3, "{end}");
}

#[test]
fn large_file_round_trip_and_listing() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (dir.path().join("up.bin"), dir.path().join("down.bin"));
    let mut data = Vec::with_capacity(50 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 50 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&up, &data).unwrap();

    cli_ok(&[
        "files",
        "put",
        &sb.id,
        path_str(&up),
        "/home/user/data/big.bin",
    ]);
    assert_eq!(
        sb.sh_ok("stat -c '%s %U' /home/user/data/big.bin"),
        format!("{} user\n", 50 << 20)
    );
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "/home/user/data/big.bin",
        path_str(&down),
    ]);
    let back = std::fs::read(&down).unwrap();
    assert!(
        back == data,
        "the downloaded bytes differ ({} vs {} bytes)",
        back.len(),
        data.len()
    );

    let ls: Value = serde_json::from_str(&cli_ok(&[
        "files",
        "ls",
        &sb.id,
        "/home/user/data",
        "--json",
    ]))
    .unwrap();
    let entries = ls.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls}");
    assert_eq!(entries[0]["name"], "big.bin");
    assert_eq!(entries[0]["path"], "/home/user/data/big.bin");
    sb.sh_ok("mkdir -p /home/user/data/sub/deeper && touch /home/user/data/sub/deeper/f");
    let deep = cli_ok(&["files", "ls", &sb.id, "/home/user/data", "--depth", "3"]);
    assert!(deep.contains("/home/user/data/sub/deeper/f"), "{deep}");
    let shallow = cli_ok(&["files", "ls", &sb.id, "/home/user/data"]);
    assert!(
        shallow.contains("/home/user/data/sub") && !shallow.contains("deeper"),
        "{shallow}"
    );
}

#[test]
fn filesystem_watchers_through_the_envd_proxy() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let id = sb.id.as_str();
    sb.sh_ok("mkdir -p /home/user/watched");

    // Polling watcher.
    let (status, created) = unary(
        id,
        "filesystem.Filesystem/CreateWatcher",
        json!({ "path": "/home/user/watched" }),
    );
    assert_eq!(status, 200, "{created}");
    let watcher = created["watcherId"].as_str().unwrap().to_string();
    sb.sh_ok("echo x > /home/user/watched/polled.txt");
    let mut names = Vec::new();
    let seen = eventually(Duration::from_secs(5), || {
        let (_, evs) = unary(
            id,
            "filesystem.Filesystem/GetWatcherEvents",
            json!({ "watcherId": watcher }),
        );
        for ev in evs["events"].as_array().into_iter().flatten() {
            names.push((
                ev["name"].as_str().unwrap_or("").to_string(),
                ev["type"].as_str().unwrap_or("").to_string(),
            ));
        }
        names
            .iter()
            .any(|(n, t)| n == "polled.txt" && t == "EVENT_TYPE_CREATE")
    });
    assert!(seen, "no create event for polled.txt: {names:?}");
    let (status, _) = unary(
        id,
        "filesystem.Filesystem/RemoveWatcher",
        json!({ "watcherId": watcher }),
    );
    assert_eq!(status, 200);

    // Streaming WatchDir.
    let mut watch = connect_stream(
        id,
        "filesystem.Filesystem/WatchDir",
        json!({ "path": "/home/user/watched" }),
    );
    let first = watch.next().expect("start message");
    assert!(first.get("start").is_some(), "{first}");
    sb.sh_ok("echo y > /home/user/watched/streamed.txt");
    loop {
        let msg = watch.next().expect("the watch ended before the event came");
        if msg["filesystem"]["name"] == "streamed.txt" {
            assert_eq!(msg["filesystem"]["type"], "EVENT_TYPE_CREATE", "{msg}");
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lifetimes and recovery.

#[test]
fn ttl_reaping_and_set_timeout() {
    let Some(_g) = shared() else { return };
    let (short, extended) = (create(&["--timeout", "2s"]), create(&["--timeout", "2s"]));
    let t0 = Instant::now();
    let before: Value = extended.info();
    let after: Value = serde_json::from_str(&cli_ok(&[
        "sandbox",
        "set-timeout",
        &extended.id,
        "10m",
        "--json",
    ]))
    .unwrap();
    assert!(
        after["expires_at"].as_str() > before["expires_at"].as_str(),
        "{before} -> {after}"
    );

    assert!(
        eventually(Duration::from_secs(6), || !listed_ids().contains(&short.id)),
        "not reaped"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "reaped only after {:?}",
        t0.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(3), || cgroup_dirs(&short.id).is_empty()),
        "cgroups left"
    );
    assert_eq!(cli(&["sandbox", "info", &short.id]).code, 2);

    // Past the original expiry (set before t0) and a reaper tick: it must still be there.
    std::thread::sleep((t0 + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    assert!(
        listed_ids().contains(&extended.id),
        "set-timeout did not extend"
    );
    assert_eq!(extended.sh_ok("echo alive"), "alive\n");
}

#[test]
fn recovery_after_the_daemon_is_killed() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let (kept, lost) = (create(&[]), create(&[]));
    kept.sh_ok("echo persisted > /home/user/marker");
    let lost_pid = lost.pid();

    let old_servers = spawn_servers();
    d.kill9();
    assert!(
        eventually(Duration::from_secs(5), || spawn_servers()
            .iter()
            .all(|pid| !old_servers.contains(pid))),
        "the spawn server outlived its daemon: {old_servers:?}"
    );
    // SAFETY: kill(2) of the lost sandbox's init; its namespace dies with it.
    assert_eq!(unsafe { libc::kill(lost_pid, libc::SIGKILL) }, 0);
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{lost_pid}"
    ))
    .exists()));
    d.start();

    let ids = listed_ids();
    assert!(
        ids.contains(&kept.id),
        "the live sandbox was not recovered: {ids:?}"
    );
    assert!(
        !ids.contains(&lost.id),
        "the dead sandbox is still listed: {ids:?}"
    );
    assert_eq!(kept.sh_ok("cat /home/user/marker"), "persisted\n");
    assert_eq!(kept.info()["state"], "running");
    assert!(
        cgroup_dirs(&lost.id).is_empty(),
        "cgroups of the dead sandbox: {:?}",
        cgroup_dirs(&lost.id)
    );
    let dir = d.state.join("sandboxes").join(&lost.id);
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()),
        "{} left behind",
        dir.display()
    );
    // A new sandbox still works after the restart.
    assert_eq!(create(&[]).sh_ok("echo new"), "new\n");
}

/// Pids of running `coppice-spawn --serve` processes (one per daemon, one daemon per host).
fn spawn_servers() -> Vec<i32> {
    processes(|argv| {
        argv[0].ends_with("coppice-spawn") && argv.get(1).is_some_and(|a| a == "--serve")
    })
    .into_iter()
    .map(|(pid, _)| pid)
    .collect()
}

#[test]
fn a_killed_spawn_server_is_replaced() {
    let Some(_g) = exclusive() else { return };
    daemon();
    let servers = spawn_servers();
    assert_eq!(servers.len(), 1, "one spawn server per daemon: {servers:?}");
    // SAFETY: kill(2) of the daemon's spawn server, the failure this test is about.
    assert_eq!(unsafe { libc::kill(servers[0], libc::SIGKILL) }, 0);
    assert!(
        eventually(Duration::from_secs(5), || !spawn_servers()
            .contains(&servers[0])),
        "the killed server is still running"
    );
    // The pool holds at most one sandbox started before the kill: the second is new.
    for _ in 0..2 {
        assert_eq!(create(&[]).sh_ok("echo up"), "up\n");
    }
    let now = spawn_servers();
    assert!(
        now.len() == 1 && now[0] != servers[0],
        "a new server: {servers:?} -> {now:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[test]
fn unknown_sandbox_and_template() {
    let Some(_g) = shared() else { return };
    for args in [
        &["sandbox", "info", "nosuchsandbox"][..],
        &["sandbox", "kill", "nosuchsandbox"],
        &["sandbox", "set-timeout", "nosuchsandbox", "1m"],
        &["exec", "nosuchsandbox", "--", "true"],
        &["files", "ls", "nosuchsandbox", "/"],
    ] {
        let out = cli(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("not found"), "{args:?}: {out:?}");
    }
    let out = cli(&["sandbox", "create", "--template", "no-such-template"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("template 'no-such-template' not found"),
        "{out:?}"
    );
}

#[test]
fn malformed_create_creates_nothing() {
    let Some(_g) = shared() else { return };
    for (flag, value, says) in [
        ("--memory", "12Q", "unknown size unit"),
        ("--memory", "1M", "at least"),
        ("--pids", "0", "pids"),
        ("--cpus", "0", "cpus"),
        ("--cpus", "-1", ""),
        ("--timeout", "soon", ""),
    ] {
        let out = cli(&["sandbox", "create", "--meta", "e2e=malformed", flag, value]);
        assert_ne!(out.code, 0, "{flag} {value} was accepted: {out:?}");
        assert!(out.stderr.contains(says), "{flag} {value}: {out:?}");
    }
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["e2e"] == "malformed"),
        "{list}"
    );
}

#[test]
fn exec_errors() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let out = sb.exec(&["--", "no-such-binary"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("no-such-binary"), "{out:?}");
    let out = sb.exec(&["--cwd", "/no/such/dir", "--", "pwd"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("/no/such/dir"), "{out:?}");
    let out = sb.exec(&["--user", "nosuchuser", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(sb.exec(&["--", "true"]).code, 0);
}

#[test]
fn file_access_stays_inside_the_sandbox() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let dir = tempfile::tempdir().unwrap();
    let local = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // Permissions are the default user's.
    let out = cli(&["files", "get", &sb.id, "/etc/shadow", &local("shadow")]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(!Path::new(&local("shadow")).exists());

    // `..` never climbs out of the sandbox's root.
    let marker = format!("inside-{}", sb.id);
    sb.root_ok(&format!("echo {marker} > /etc/hostname"));
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "../../../../etc/hostname",
        &local("hostname"),
    ]);
    assert_eq!(
        std::fs::read_to_string(local("hostname")).unwrap(),
        format!("{marker}\n")
    );
    assert_ne!(
        std::fs::read_to_string("/etc/hostname").unwrap(),
        format!("{marker}\n")
    );

    // A symlink to / resolves to the sandbox's root.
    sb.sh_ok("ln -s / /home/user/root-link");
    let out = cli(&["files", "ls", &sb.id, "/home/user/root-link/work"]);
    assert!(
        out.code != 0 || out.stdout.trim().is_empty(),
        "host /work listed: {out:?}"
    );
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "/home/user/root-link/etc/hostname",
        &local("via-link"),
    ]);
    assert_eq!(
        std::fs::read_to_string(local("via-link")).unwrap(),
        format!("{marker}\n")
    );
    let root = cli_ok(&["files", "ls", &sb.id, "/home/user/root-link/"]);
    assert!(!root.contains("/work"), "{root}");
    let out = cli(&[
        "files",
        "ls",
        &sb.id,
        &format!("/home/user/root-link{}", path_str(&daemon().state)),
    ]);
    assert!(
        out.code != 0 || out.stdout.trim().is_empty(),
        "state dir listed: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Network.

#[test]
fn network_blocks_host_and_neighbours_but_not_the_host_to_sandbox() {
    let Some(_g) = shared() else { return };
    let (a, b) = (create(&[]), create(&[]));
    let b_ip = b.info()["ip"]
        .as_str()
        .expect("sandbox has an IP")
        .to_string();
    assert!(a.info()["ip"].is_string());

    // A host service on every address: not reachable from a sandbox.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let mut host_ips = vec!["10.88.0.1".to_string(), "127.0.0.1".to_string()];
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&addrs.stdout).lines() {
        let cidr = line
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or("");
        let ip = cidr.split('/').next().unwrap_or("").to_string();
        if !ip.is_empty() && !host_ips.contains(&ip) {
            host_ips.push(ip);
        }
    }
    for ip in &host_ips {
        let out = a.sh(&format!(
            "timeout 3 bash -c 'echo hi > /dev/tcp/{ip}/{port}'"
        ));
        assert_ne!(out.code, 0, "sandbox reached the host's {ip}:{port}");
    }
    assert!(
        host.accept().is_err(),
        "the host listener got a connection from a sandbox"
    );

    // A server in B: B itself and the host reach it, A does not.
    b.sh_ok("setsid python3 -m http.server 8123 --bind 0.0.0.0 </dev/null >/dev/null 2>&1 &");
    let up = eventually(Duration::from_secs(10), || {
        b.sh("curl -sf -o /dev/null http://127.0.0.1:8123/").code == 0
    });
    assert!(up, "the server in B did not start");
    let addr = format!("{b_ip}:8123").parse().unwrap();
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("host -> sandbox");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply:?}");
    let out = a.sh(&format!("curl -s -m 3 -o /dev/null http://{b_ip}:8123/"));
    assert_ne!(out.code, 0, "sandbox A reached sandbox B's server");
    let out = a.sh(&format!(
        "timeout 3 bash -c 'echo hi > /dev/tcp/{b_ip}/8123'"
    ));
    assert_ne!(out.code, 0, "sandbox A reached sandbox B's port");
}
