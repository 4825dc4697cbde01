//! The security suite (docs/security.md lists what each test protects): the control plane
//! around the sandbox walls, tried as an attacker on the host or inside a sandbox would,
//! against the real daemon and real sandboxes (harness: one daemon for this binary).
//!
//! Needs root; without it every test says so and passes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod harness;
use harness::*;

/// `base` (owned values) with `extra` added or replacing headers of the same name.
fn with<'a>(
    base: &'a [(&'static str, String)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    with_pairs(auth_pairs(base), extra)
}

fn run(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().expect("running a host command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A local user who is not root gets nothing from the loopback listener: no token file, and
/// every route but /health answers 401 without the token.
#[test]
fn a_local_user_is_refused_on_the_loopback_api() {
    let Some(_g) = shared() else { return };
    let d = daemon();
    let sb = create(&[]);
    let url = format!("http://127.0.0.1:{}", d.port);
    let as_nobody = |args: &[&str]| {
        run(std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args))
    };
    // curl's status code for a request made as nobody.
    let status_as_nobody = |args: &[&str]| {
        let mut all = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        as_nobody(&all)
    };
    let token_file = d.state.join("api-token");
    let (code, out) = as_nobody(&["cat", token_file.to_str().unwrap()]);
    assert_ne!(code, 0, "nobody read the API token: {out}");
    let exec_body = json!({"cmd": ["id", "-u"], "user": "root"}).to_string();
    for (method, path, body) in [
        ("GET", "/api/v1/sandboxes".to_string(), ""),
        (
            "POST",
            format!("/api/v1/sandboxes/{}/exec", sb.id),
            exec_body.as_str(),
        ),
        (
            "GET",
            format!("/api/v1/sandboxes/{}/envd/health", sb.id),
            "",
        ),
        ("POST", "/mcp".to_string(), "{}"),
    ] {
        let (code, status) = status_as_nobody(&[
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("{url}{path}"),
        ]);
        assert_eq!(
            (code, status.as_str()),
            (0, "401"),
            "{method} {path} as nobody"
        );
    }
    let (_, status) = status_as_nobody(&[&format!("{url}/health")]);
    assert_eq!(status, "204", "liveness stays open");
    // The unix socket is root's: nobody cannot connect to it.
    let (code, _) = as_nobody(&[
        "curl",
        "-s",
        "--unix-socket",
        d.socket.to_str().unwrap(),
        "http://coppice/api/v1/sandboxes",
    ]);
    assert_ne!(code, 0, "nobody reached the unix socket");
    // With the token, the same request works.
    let auth = authorized();
    let (status, body) = tcp_request(
        "POST",
        &format!("/api/v1/sandboxes/{}/exec", sb.id),
        &with(&auth, &[("Content-Type", "application/json")]),
        &exec_body,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"exit\""), "{body}");
}

/// A page on another name (DNS rebinding) is refused on every route, whatever it sends.
#[test]
fn a_foreign_host_or_origin_is_refused_on_every_route() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let auth = authorized();
    let exec = format!("/api/v1/sandboxes/{}/exec", sb.id);
    let routes: Vec<(&str, &str, Vec<(&str, &str)>)> = vec![
        ("GET", "/api/v1/sandboxes", vec![]),
        (
            "POST",
            exec.as_str(),
            vec![("Content-Type", "application/json")],
        ),
        ("GET", "/api/v1/templates", vec![]),
        ("POST", "/mcp", vec![("Content-Type", "application/json")]),
        ("GET", "/health", vec![]),
        ("GET", "/sandboxes", vec![("X-API-Key", E2B_KEY)]),
        (
            "GET",
            "/health",
            vec![
                ("E2b-Sandbox-Id", sb.id.as_str()),
                ("E2b-Sandbox-Port", "49983"),
            ],
        ),
    ];
    for (method, path, extra) in &routes {
        for bad in [
            vec![("Host", "attacker.example")],
            vec![("Host", "attacker.example:7070")],
            vec![("Origin", "http://attacker.example")],
            vec![("Origin", "null")],
        ] {
            let mut h = with(&auth, extra);
            h = with_pairs(h, &bad);
            let (status, body) = tcp_request(method, path, &h, "{}");
            assert_eq!(status, 403, "{method} {path} with {bad:?}: {body}");
        }
    }
    // Loopback names and a loopback page's Origin pass.
    let ok = with(&auth, &[("Origin", "http://localhost:3000")]);
    assert_eq!(tcp_request("GET", "/api/v1/sandboxes", &ok, "").0, 200);
}

fn with_pairs<'a>(
    mut h: Vec<(&'a str, &'a str)>,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    for (k, v) in extra {
        h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        h.push((k, v));
    }
    h
}

/// A `secure` E2B sandbox's access token holds on the native routes too; a sandbox made by
/// the native API cannot be reached through E2B sandbox traffic without a token at all.
#[test]
fn sandbox_traffic_needs_the_sandbox_token_on_every_route() {
    let Some(_g) = shared() else { return };
    let auth = authorized();
    let e2b = with(
        &auth,
        &[("X-API-Key", E2B_KEY), ("Content-Type", "application/json")],
    );
    let (status, body) = tcp_request(
        "POST",
        "/sandboxes",
        &e2b,
        r#"{"templateID":"base","secure":true}"#,
    );
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let sb = Sandbox {
        id: created["sandboxID"].as_str().unwrap().to_string(),
    };
    let token = created["envdAccessToken"]
        .as_str()
        .expect("a secure sandbox has a token")
        .to_string();

    let exec = format!("/api/v1/sandboxes/{}/exec", sb.id);
    let files = format!("/api/v1/sandboxes/{}/envd/files?path=/etc/hostname", sb.id);
    let body = json!({"cmd": ["true"]}).to_string();
    let json_ct = with(&auth, &[("Content-Type", "application/json")]);
    assert_eq!(
        tcp_request("POST", &exec, &json_ct, &body).0,
        401,
        "exec without the token"
    );
    assert_eq!(
        tcp_request("GET", &files, &auth_pairs(&auth), "").0,
        401,
        "envd without the token"
    );
    let wrong = with(
        &auth,
        &[
            ("X-Access-Token", "wrong"),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(
        tcp_request("POST", &exec, &wrong, &body).0,
        401,
        "exec with a wrong token"
    );
    let right = with(
        &auth,
        &[
            ("X-Access-Token", token.as_str()),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(tcp_request("POST", &exec, &right, &body).0, 200);
    assert_eq!(
        tcp_request(
            "GET",
            &files,
            &with(&auth, &[("X-Access-Token", token.as_str())]),
            ""
        )
        .0,
        200
    );

    // A native sandbox has no token: E2B traffic to it is refused, not served.
    let native = create(&[]);
    let traffic = with(
        &auth,
        &[
            ("E2b-Sandbox-Id", native.id.as_str()),
            ("E2b-Sandbox-Port", "49983"),
        ],
    );
    let (status, body) = tcp_request("GET", "/health", &traffic, "");
    assert_eq!(status, 403, "{body}");
    // Connecting through the E2B API gives it one.
    let (status, body) = tcp_request(
        "POST",
        &format!("/sandboxes/{}/connect", native.id),
        &e2b,
        "{}",
    );
    assert!(status == 200 || status == 201, "{status} {body}");
    let connected: Value = serde_json::from_str(&body).unwrap();
    let minted = connected["envdAccessToken"]
        .as_str()
        .expect("connect mints a token");
    let traffic = with_pairs(traffic, &[("X-Access-Token", minted)]);
    assert_eq!(tcp_request("GET", "/health", &traffic, "").0, 204);
}

fn auth_pairs<'a>(auth: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    auth.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The state directory, its database (access tokens, environments) and the API token are
/// root's alone.
#[test]
fn the_state_is_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let Some(_g) = shared() else { return };
    let d = daemon();
    let _sb = create(&["--env", "SECRET=s3cr3t"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.state), 0o700);
    for f in ["state.db", "state.db-wal", "api-token"] {
        assert_eq!(mode(&d.state.join(f)), 0o600, "{f}");
    }
}

/// One sandbox opening 2000 connections to the resolver leaves the daemon's descriptors
/// bounded and a second sandbox's DNS working.
#[test]
fn one_sandbox_cannot_take_the_daemons_descriptors() {
    let Some(_g) = shared() else { return };
    let d = daemon();
    let pid = d.child.lock().unwrap().as_ref().unwrap().id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let (a, b) = (create(&[]), create(&[]));
    let before = fds();
    // Holds its connections open for 20 s.
    let flood = r#"
import socket, time
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
held = []
for _ in range(2000):
    try:
        held.append(socket.create_connection((ns, 53), timeout=2))
    except OSError:
        pass
print("held", len(held), flush=True)
time.sleep(20)
"#;
    let id = a.id.clone();
    let flooder = std::thread::spawn(move || cli(&["exec", &id, "--", "python3", "-c", flood]));
    std::thread::sleep(Duration::from_secs(8));
    let during = fds();
    assert!(during < before + 300, "daemon fds {before} -> {during}");
    // A DNS query over TCP from B gets an answer from the resolver (any rcode: the upstream
    // may be unreachable here; the point is that the resolver serves B).
    let query = r#"
import socket, struct
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
s = socket.create_connection((ns, 53), timeout=10)
s.sendall(struct.pack(">H", len(q)) + q)
s.settimeout(15)
n = struct.unpack(">H", s.recv(2))[0]
r = s.recv(n)
print("answer id", hex(struct.unpack(">H", r[:2])[0]))
"#;
    let out = b.exec(&["--", "python3", "-c", query]);
    assert!(out.stdout.contains("answer id 0x1234"), "{out:?}");
    let flooded = flooder.join().unwrap();
    assert_eq!(flooded.code, 0, "{flooded:?}");
}

/// Filling /dev/shm and /tmp as `user` in a 256M sandbox kills no agent: they share one
/// tmpfs of half the memory limit.
#[test]
fn filling_shm_and_tmp_kills_no_agent() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--memory", "256M"]);
    let pid = sb.pid();
    let df = sb.sh_ok("df -k --output=size /tmp /dev/shm | tail -2");
    for size in df.split_whitespace() {
        let kib: u64 = size.parse().unwrap();
        assert!(kib <= 128 * 1024, "tmpfs of {kib} KiB in a 256M sandbox");
    }
    sb.sh("dd if=/dev/zero of=/dev/shm/fill bs=1M count=300; dd if=/dev/zero of=/tmp/fill bs=1M count=300; true");
    assert_eq!(sb.sh_ok("echo alive").trim(), "alive");
    assert_eq!(sb.pid(), pid, "the agent is the one it was");
    assert_eq!(sb.info()["state"], "running");
}

/// A stopped agent makes calls fail fast with 504 and the sandbox show `unhealthy` with the
/// reason; when it goes on, so does the sandbox.
#[test]
fn a_stopped_agent_gives_504_and_shows_unhealthy() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let pid = sb.pid();
    // SAFETY: signalling the sandbox's agent, a child of no one in this process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let auth = authorized();
    let h = with(&auth, &[("Content-Type", "application/json")]);
    let t0 = Instant::now();
    let (status, body) = tcp_request(
        "POST",
        &format!("/api/v1/sandboxes/{}/exec", sb.id),
        &h,
        &json!({"cmd": ["true"], "timeout_secs": 3}).to_string(),
    );
    let took = t0.elapsed();
    let healthy_later = || {
        unsafe { libc::kill(pid, libc::SIGCONT) };
    };
    if status != 504 || took > Duration::from_secs(10) {
        healthy_later();
        panic!("exec to a stopped agent: {status} after {took:?}: {body}");
    }
    let unhealthy = eventually(Duration::from_secs(15), || {
        sb.info()["state"] == "unhealthy"
    });
    let info = sb.info();
    healthy_later();
    assert!(unhealthy, "{info}");
    assert!(
        info["unhealthy_reason"]
            .as_str()
            .unwrap_or("")
            .contains("stopped"),
        "{info}"
    );
    assert!(eventually(Duration::from_secs(15), || sb.info()["state"] == "running"));
    assert_eq!(sb.sh_ok("echo back").trim(), "back");
}

/// Root inside cannot ptrace the agent, read or write its memory, or open vsock sockets.
#[test]
fn root_inside_cannot_reach_the_agent() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let script = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
print("attach", libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))
print("seize", libc.ptrace(0x4206, 1, 0, 0), os.strerror(ctypes.get_errno()))
for mode in ("rb", "r+b"):
    try:
        open("/proc/1/mem", mode); print("mem", mode, "opened")
    except OSError as e:
        print("mem", mode, "refused")
try:
    socket.socket(40, socket.SOCK_STREAM); print("vsock opened")
except OSError:
    print("vsock refused")
print("capbnd", [l for l in open("/proc/self/status") if l.startswith("CapBnd")][0].split()[1])
"#;
    let out = sb.exec(&["--user", "root", "--", "python3", "-c", script]);
    assert_eq!(out.code, 0, "{out:?}");
    let o = &out.stdout;
    assert!(o.contains("attach -1 Operation not permitted"), "{o}");
    assert!(o.contains("seize -1 Operation not permitted"), "{o}");
    assert!(
        o.contains("mem rb refused") && o.contains("mem r+b refused"),
        "{o}"
    );
    assert!(o.contains("vsock refused"), "{o}");
    let capbnd = u64::from_str_radix(o.split("capbnd ").nth(1).unwrap().trim(), 16).unwrap();
    assert_eq!(
        capbnd & (1 << 19),
        0,
        "CAP_SYS_PTRACE in the bounding set: {o}"
    );
    // Debuggers still work on the sandbox's own processes.
    let traced = sb.exec(&[
        "--",
        "python3",
        "-c",
        r#"
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    signal.pause()
print("attach child", libc.ptrace(16, pid, 0, 0))
os.kill(pid, 9)
"#,
    ]);
    assert!(traced.stdout.contains("attach child 0"), "{traced:?}");
}

/// Requests above the maxima get a 400 naming the maximum, and no host paths.
#[test]
fn oversize_limits_are_refused() {
    let Some(_g) = shared() else { return };
    let auth = authorized();
    let h = with(&auth, &[("Content-Type", "application/json")]);
    for (body, names) in [
        (json!({"memory": "1T"}), "max_limits.memory_bytes"),
        (json!({"cpus": 1000}), "max_limits.cpus"),
        (json!({"pids": 1_000_000}), "max_limits.pids"),
        (
            json!({"memory": "1T", "cpus": 1000, "pids": 1_000_000}),
            "maximum",
        ),
    ] {
        let (status, text) = tcp_request("POST", "/api/v1/sandboxes", &h, &body.to_string());
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(names), "{body}: {text}");
        assert!(
            !text.contains("/sys/") && !text.contains("/var/"),
            "a host path: {text}"
        );
    }
}

/// no_new_privs is off by default (sudo works, decision 0006) and on where a sandbox asks.
#[test]
fn no_new_privs_by_choice() {
    let Some(_g) = shared() else { return };
    // NoNewPrivs of a process in the sandbox, and whether sudo elevates there.
    let probe = |sb: &Sandbox| {
        let flag = sb.sh_ok("grep NoNewPrivs /proc/self/status | cut -f2");
        (
            flag.trim().to_string(),
            sb.sh("sudo -n id -u").stdout.trim() == "0",
        )
    };
    assert_eq!(probe(&create(&[])), ("0".to_string(), true), "the default");
    assert_eq!(
        probe(&create(&["--no-new-privs"])),
        ("1".to_string(), false),
        "asked for"
    );
}

/// A sandbox's /sys shows its own network interfaces and none of the host's hardware.
#[test]
fn sysfs_hides_the_hosts_devices() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    assert_eq!(
        sb.sh_ok("ls /sys/devices")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["system", "virtual"]
    );
    let nets = sb.sh_ok("ls /sys/class/net");
    assert!(
        !nets.contains("coppice"),
        "the host's bridge is visible: {nets}"
    );
    assert!(nets.contains("lo"), "{nets}");
    assert_ne!(sb.sh_ok("nproc").trim(), "0");
    assert_ne!(sb.root_ok("touch /sys/devices/x 2>&1; echo $?").trim(), "0");
}

/// A sandbox that is gone says how it ended.
#[test]
fn a_gone_sandbox_has_a_tombstone() {
    let Some(_g) = shared() else { return };
    let killed = create(&[]);
    cli_ok(&["sandbox", "kill", &killed.id]);
    let out = cli(&["sandbox", "info", &killed.id]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("not found: it is gone, it was killed"),
        "{out:?}"
    );

    let died = create(&[]);
    // SAFETY: killing the sandbox's agent from the host.
    unsafe { libc::kill(died.pid(), libc::SIGKILL) };
    let ended = eventually(Duration::from_secs(15), || {
        cli(&["sandbox", "info", &died.id])
            .stderr
            .contains("its agent exited")
    });
    assert!(ended, "{:?}", cli(&["sandbox", "info", &died.id]));
}

/// A sandbox's writable layer holds at most its disk limit; another sandbox still writes.
#[test]
fn a_sandbox_cannot_write_past_its_disk_limit() {
    let Some(_g) = shared() else { return };
    let small = create(&["--disk", "64M"]);
    assert_eq!(small.info()["limits"]["disk_bytes"], 64 << 20);
    let out = small.sh("dd if=/dev/zero of=big bs=1M count=200 conv=fsync 2>&1; echo rc=$?");
    assert!(out.stdout.contains("Disk quota exceeded"), "{out:?}");
    let size: u64 = small.sh_ok("stat -c %s big").trim().parse().unwrap();
    assert!(size <= 64 << 20, "wrote {size} bytes past a 64M limit");
    let other = create(&[]);
    other.sh_ok("dd if=/dev/zero of=f bs=1M count=100 conv=fsync 2>/dev/null");
    // What is removed is free again.
    small.sh_ok(
        "rm big; sync; sleep 1; dd if=/dev/zero of=again bs=1M count=16 conv=fsync 2>/dev/null",
    );
    let auth = authorized();
    let h = with(&auth, &[("Content-Type", "application/json")]);
    let (status, text) = tcp_request("POST", "/api/v1/sandboxes", &h, r#"{"disk":"1M"}"#);
    assert_eq!(status, 400, "{text}");
}

/// Past the host's ceilings a create is refused with 429 and the reason, on the native and
/// the E2B surfaces, and nothing is started.
#[test]
fn admission_refuses_past_the_host_ceilings() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let live = listed_ids().len();
    d.restart_with(&format!("max_sandboxes = {}\n", live + 1));
    let result = std::panic::catch_unwind(|| {
        let first = create(&[]);
        let out = cli(&["sandbox", "create"]);
        assert_ne!(out.code, 0, "{out:?}");
        assert!(
            out.stderr.contains("max_sandboxes") && out.stderr.contains("429"),
            "{out:?}"
        );
        let auth = authorized();
        let e2b = with(
            &auth,
            &[("X-API-Key", E2B_KEY), ("Content-Type", "application/json")],
        );
        let (status, body) = tcp_request("POST", "/sandboxes", &e2b, r#"{"templateID":"base"}"#);
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("\"code\":429"), "{body}");
        assert_eq!(listed_ids().len(), live + 1, "nothing more was started");
        drop(first);
        assert!(!create(&[]).id.is_empty(), "room again once one is gone");
    });
    d.restart_with("");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
