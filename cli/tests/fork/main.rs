//! End-to-end tests of snapshots, forks, restore and lineage: the real daemon and
//! CLI against real sandboxes, with the same harness as `sandbox.rs` (one daemon per test
//! binary, temporary state dir, killed with the process; needs root, skips without it).
//! Tests that count host objects (cgroups, interfaces, mounts) or restart the daemon hold the
//! harness lock in write mode, so nothing else runs beside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "../harness/mod.rs"]
mod harness;
use harness::*;

mod forks;
mod snapshots;

// ---------------------------------------------------------------------------------------------
// Snapshot helpers.

/// One request to the daemon's native API over its unix socket; returns the status and the
/// JSON body (Null when empty).
fn api(method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let socket = &DAEMON.get().expect("daemon started").socket;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: coppice\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if line
            .to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
    }
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).unwrap();
    if chunked {
        let mut out = Vec::new();
        let mut rest = &raw[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 4 + size..];
        }
        raw = out;
    }
    let value = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}: {raw:?}"))
    };
    (code, value)
}

/// `coppice snapshot create SANDBOX ARGS... --json`.
fn snapshot(sandbox: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["snapshot", "create", &sandbox.id, "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&cli_ok(&all)).unwrap()
}

/// `coppice sandbox fork ARGS... --json`: the forks (owned by the test) and the raw result.
fn fork(args: &[&str]) -> (Vec<Sandbox>, Value) {
    let mut all = vec!["sandbox", "fork", "--json"];
    all.extend_from_slice(args);
    let out = cli(&all);
    let result: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("coppice {all:?}: {e}: {out:?}"));
    let forks = sandboxes_of(&result);
    (forks, result)
}

fn sandboxes_of(result: &Value) -> Vec<Sandbox> {
    result["forks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["sandbox"]["id"].as_str())
        .map(|id| Sandbox { id: id.to_string() })
        .collect()
}

fn snapshot_ids() -> Vec<String> {
    let list: Value = serde_json::from_str(&cli_ok(&["snapshot", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect()
}

/// Host network interfaces of sandboxes (`cps<slot>`).
fn host_ifs() -> usize {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cps"))
        .count()
}

/// Coppice's cgroups in the memory hierarchy (one per sandbox, pool included).
fn memory_cgroups() -> usize {
    std::fs::read_dir("/sys/fs/cgroup/memory/coppice")
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// Host mounts under this daemon's state dir: only its btrfs image at `<state>/btrfs` and the
/// tmpfs at `<state>/sandboxes`, which do not change as sandboxes come and go (sandbox mounts
/// live in sandbox namespaces).
fn state_mounts() -> usize {
    let state = DAEMON.get().unwrap().state.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&state))
        .count()
}

/// Mounts of the daemon's btrfs image (`<state>/btrfs`).
fn storage_mounts(state: &std::path::Path) -> usize {
    let target = state.join("btrfs");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(path_str(&target)))
        .count()
}

/// A btrfs subvolume root (inode 256) that refuses writes (a read-only snapshot).
fn is_readonly_subvolume(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    let probe = path.join(".coppice-write-probe");
    let refused =
        std::fs::write(&probe, b"x").is_err_and(|e| e.raw_os_error() == Some(libc::EROFS));
    let _ = std::fs::remove_file(&probe);
    let fs_type = nix_statfs_type(path);
    md.ino() == 256 && refused && fs_type == Some(0x9123_683E)
}

/// f_type of statfs(2) (0x9123683E: btrfs).
fn nix_statfs_type(path: &std::path::Path) -> Option<i64> {
    let c = std::ffi::CString::new(path_str(path)).ok()?;
    // SAFETY: statfs(2) into a zeroed struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `buf` a statfs struct we own.
    (unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0).then_some(buf.f_type as i64)
}
