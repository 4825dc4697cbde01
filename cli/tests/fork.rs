//! End-to-end tests of snapshots, forks, restore and lineage (issue 6): the real daemon and
//! CLI against real sandboxes, with the same harness as `sandbox.rs` (one daemon per test
//! binary, temporary state dir, killed with the process; needs root, skips without it).
//! Tests that count host objects (cgroups, interfaces, mounts) or restart the daemon hold the
//! harness lock in write mode, so nothing else runs beside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_coppice");

// ---------------------------------------------------------------------------------------------
// Harness: one daemon per test binary.

struct Daemon {
    dir: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
}

static DAEMON: OnceLock<Daemon> = OnceLock::new();
/// Read: a test using the daemon. Write: a test that restarts it.
static RESTART: RwLock<()> = RwLock::new(());
/// Set when a test failed with a sandbox in hand: the daemon's log is then kept.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The shared daemon, started on first use; `None` (after saying why) when not root.
fn shared() -> Option<RwLockReadGuard<'static, ()>> {
    if !is_root() {
        eprintln!("SKIPPED: the end-to-end tests need root");
        return None;
    }
    let guard = RESTART.read().unwrap_or_else(|e| e.into_inner());
    daemon();
    Some(guard)
}

/// The daemon for a test that kills and restarts it.
fn exclusive() -> Option<RwLockWriteGuard<'static, ()>> {
    if !is_root() {
        eprintln!("SKIPPED: the end-to-end tests need root");
        return None;
    }
    let guard = RESTART.write().unwrap_or_else(|e| e.into_inner());
    daemon();
    Some(guard)
}

fn daemon() -> &'static Daemon {
    DAEMON.get_or_init(|| {
        wait_for_other_daemons(Duration::from_secs(300));
        let dir = tempfile::Builder::new()
            .prefix("coppice-e2e-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = Daemon {
            state: dir.join("state"),
            socket: dir.join("coppice.sock"),
            dir,
            port,
            child: Mutex::new(None),
        };
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(cleanup_at_exit) };
        d.start();
        d
    })
}

impl Daemon {
    /// Starts `coppice serve` and waits until the CLI gets an answer.
    fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--socket",
            path_str(&self.socket),
            "serve",
            "--state-dir",
            path_str(&self.state),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--pool-size",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(spawn_bound_to_process(cmd));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if cli_at(&self.socket, &["sandbox", "list"]).code == 0 {
                return;
            }
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().unwrap());
            if exited.is_some() || Instant::now() > deadline {
                self.kill9();
                panic!(
                    "the daemon did not come up ({exited:?}); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` of the daemon (its sandboxes keep running).
    fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

/// Another `coppice serve` on this host would sweep our sandboxes' cgroups (and we its):
/// wait for it to go away, or fail saying which it is.
fn wait_for_other_daemons(within: Duration) {
    let others = || -> Vec<String> {
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        procs
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|raw| {
                String::from_utf8_lossy(&raw)
                    .split('\0')
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|argv| argv[0].ends_with("coppice") && argv.iter().any(|a| a == "serve"))
            .map(|argv| argv.join(" "))
            .collect()
    };
    let mut announced = false;
    let gone = eventually(within, || {
        let now = others();
        if !now.is_empty() && !announced {
            eprintln!("waiting up to {within:?} for another coppice daemon to stop: {now:?}");
            announced = true;
        }
        now.is_empty()
    });
    assert!(
        gone,
        "another coppice daemon is running (one per host): {:?}",
        others()
    );
}

/// Spawns from a thread that lives as long as the process, so that PR_SET_PDEATHSIG (which
/// follows the spawning *thread*) kills the daemon exactly when the test process ends.
fn spawn_bound_to_process(mut cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<Child>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    })
                };
                let _ = reply.send(cmd.spawn().expect("spawning the daemon"));
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    cmd.env("COPPICE_LOG", "info");
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .unwrap();
    rx.recv().expect("the spawner thread died")
}

/// At exit: kill the sandboxes through the daemon, then the daemon, then whatever it could not
/// kill (the warm pool's sandbox), and remove the state directory.
extern "C" fn cleanup_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(d) = DAEMON.get() else { return };
        let list = cli(&["sandbox", "list", "--json"]);
        if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&list.stdout) {
            for s in list {
                cli(&["sandbox", "kill", s["id"].as_str().unwrap_or_default()]);
            }
        }
        d.kill9();
        let ids: Vec<String> = std::fs::read_dir(d.state.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for id in &ids {
            let procs =
                std::fs::read_to_string(format!("/sys/fs/cgroup/pids/coppice/{id}/cgroup.procs"));
            for pid in procs
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a sandbox process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cgroup_dirs(id).is_empty() && Instant::now() < deadline {
                for dir in cgroup_dirs(id) {
                    let _ = std::fs::remove_dir(dir);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if FAILED.load(std::sync::atomic::Ordering::Relaxed) {
            let kept = std::env::temp_dir().join("coppice-e2e-daemon.log");
            if std::fs::copy(d.dir.join("daemon.log"), &kept).is_ok() {
                eprintln!("the daemon's log is in {}", kept.display());
            }
        }
        let _ = std::fs::remove_dir_all(&d.dir);
    });
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// CLI helpers.

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI against the test daemon.
fn cli(args: &[&str]) -> Out {
    cli_at(&DAEMON.get().expect("daemon started").socket, args)
}

fn cli_at(socket: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .env("COPPICE_SOCKET", socket)
        .args(args)
        .output()
        .expect("running the CLI");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI and asserts success; returns stdout.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert_eq!(out.code, 0, "coppice {args:?} failed: {out:?}");
    out.stdout
}

/// A sandbox this test owns: killed when the test ends, even on failure.
struct Sandbox {
    id: String,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        cli(&["sandbox", "kill", &self.id]);
    }
}

impl Sandbox {
    fn info(&self) -> Value {
        serde_json::from_str(&cli_ok(&["sandbox", "info", &self.id, "--json"])).unwrap()
    }

    /// Host pid of the sandbox's init (the agent).
    fn pid(&self) -> i32 {
        self.info()["pid"].as_i64().expect("pid in info") as i32
    }

    /// `coppice exec ID ARGS...`; `args` holds exec's options, `--` and the command.
    fn exec(&self, args: &[&str]) -> Out {
        let mut all = vec!["exec", &self.id];
        all.extend_from_slice(args);
        cli(&all)
    }

    /// Runs a shell line as the default user.
    fn sh(&self, script: &str) -> Out {
        self.exec(&["--", "sh", "-c", script])
    }

    /// Runs a shell line as root (inside) and asserts success; returns stdout.
    fn root_ok(&self, script: &str) -> String {
        let out = self.exec(&["--user", "root", "--", "sh", "-c", script]);
        assert_eq!(out.code, 0, "as root: {script}: {out:?}");
        out.stdout
    }

    /// Runs a shell line as the default user and asserts success; returns stdout.
    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(out.code, 0, "{script}: {out:?}");
        out.stdout
    }
}

/// `coppice sandbox create ARGS... --json`.
fn create(args: &[&str]) -> Sandbox {
    let mut all = vec!["sandbox", "create", "--json"];
    all.extend_from_slice(args);
    let info: Value = serde_json::from_str(&cli_ok(&all)).unwrap();
    Sandbox {
        id: info["id"].as_str().expect("id").to_string(),
    }
}

fn listed_ids() -> Vec<String> {
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The sandbox's cgroup directories that exist on the host, in every hierarchy.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("coppice").join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Polls `f` until it is true or `within` has passed; returns whether it became true.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

/// Host mounts under this daemon's state dir (the design leaves none: sandbox mounts live in
/// sandbox namespaces).
fn state_mounts() -> usize {
    let state = DAEMON.get().unwrap().state.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&state))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn forks_see_the_snapshot_but_not_each_others_writes() {
    let Some(_g) = shared() else { return };
    let parent = create(&["--env", "FROM_PARENT=1"]);
    parent.sh_ok("echo prepared > /home/user/state; mkdir -p /home/user/proj");
    // Overlay specifics must survive the copy: a whiteout (a deleted template file) and an
    // opaque directory (a template directory removed and made again).
    parent
        .root_ok("rm /etc/issue && rm -rf /etc/apt && mkdir /etc/apt && echo mine > /etc/apt/only");
    // A process that keeps counting: the parent must run on through snapshot and fork.
    parent.sh_ok("nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done' >/dev/null 2>&1 &");
    let pid = parent.pid();
    let snap = snapshot(&parent, &["--name", &format!("prep-{}", parent.id)]);
    assert_eq!(snap["kind"], "filesystem");
    assert_eq!(snap["sandbox_id"], parent.id.as_str());
    assert!(snap["size_bytes"].as_u64().unwrap() > 0, "{snap}");

    // Per-fork settings through the API: fork 0 gets its own env, fork 1 its own memory.
    let (code, result) = api(
        "POST",
        "/api/v1/forks",
        Some(json!({
            "snapshot_id": snap["name"], "count": 3, "env": {"COMMON": "c"},
            "forks": [{"env": {"ONLY0": "zero"}}, {"memory": "256M", "timeout_secs": 120}],
        })),
    );
    assert_eq!(code, 200, "{result}");
    let forks = sandboxes_of(&result);
    assert_eq!(forks.len(), 3, "{result}");
    assert_eq!(result["created"], 3);
    assert_eq!(result["implicit_snapshot"], false);

    let mut identities = std::collections::HashSet::new();
    for (i, f) in forks.iter().enumerate() {
        assert_eq!(f.sh_ok("cat /home/user/state"), "prepared\n");
        assert!(
            f.sh("test -e /etc/issue").code != 0,
            "whiteout lost in fork {i}"
        );
        assert_eq!(
            f.sh_ok("ls /etc/apt"),
            "only\n",
            "opaque directory lost in fork {i}"
        );
        f.sh_ok(&format!("echo fork{i} > /home/user/proj/mine-{i}"));
        let id = f.sh_ok("echo $(hostname) $(cat /etc/machine-id)");
        let info = f.info();
        identities.insert((id, info["ip"].as_str().unwrap_or_default().to_string()));
        assert_ne!(info["ip"], parent.info()["ip"]);
        assert_eq!(
            f.sh_ok("echo $FROM_PARENT $COMMON"),
            "1 c\n",
            "env inherited + common"
        );
        // Processes restart in a fork: the parent's counter loop is not running there.
        assert_eq!(
            f.sh("pgrep -f 'echo \\$i'").code,
            1,
            "fork {i} runs the parent's processes"
        );
    }
    assert_eq!(
        identities.len(),
        3,
        "forks share an identity: {identities:?}"
    );
    assert_eq!(forks[0].sh_ok("echo ${ONLY0:-none}"), "zero\n");
    assert_eq!(forks[1].sh_ok("echo ${ONLY0:-none}"), "none\n");
    assert_eq!(forks[1].info()["limits"]["memory_bytes"], 256u64 << 20);
    for (i, f) in forks.iter().enumerate() {
        let listing = f.sh_ok("ls /home/user/proj");
        assert_eq!(
            listing,
            format!("mine-{i}\n"),
            "fork {i} sees a sibling's write"
        );
    }
    assert_eq!(
        parent.sh_ok("ls /home/user/proj"),
        "",
        "the parent sees a fork's write"
    );
    assert!(parent.sh("test -e /etc/issue").code != 0);

    // The parent kept running: same init, its counter still moving.
    assert_eq!(parent.pid(), pid);
    let before: u64 = parent.sh_ok("cat /tmp/count").trim().parse().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        parent
            .sh_ok("cat /tmp/count")
            .trim()
            .parse::<u64>()
            .unwrap()
            > before
    }));
    // A fork's lineage leads back to the parent.
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &forks[2].id, "--json"])).unwrap();
    assert_eq!(lineage["ancestors"][0]["id"], snap["snapshot_id"]);
    assert_eq!(lineage["ancestors"][1]["id"], parent.id.as_str());
    let snap_id = snap["snapshot_id"].as_str().unwrap();
    let info: Value =
        serde_json::from_str(&cli_ok(&["snapshot", "info", snap_id, "--json"])).unwrap();
    assert_eq!(info["dependant_sandboxes"].as_array().unwrap().len(), 3);
    drop(forks);
    cli_ok(&["snapshot", "delete", snap_id]);
}

#[test]
fn a_snapshot_during_concurrent_writes_is_consistent() {
    let Some(_g) = shared() else { return };
    let parent = create(&[]);
    // Writes file N into d/ and only then records N in `last` (atomic rename). In any
    // point-in-time copy, d/ holds exactly 1..=M with M == last or last + 1. Copying a live
    // tree without freezing it would read `last` well after d/ and see last > M.
    let writer = r#"
import os
os.makedirs("/home/user/d", exist_ok=True)
i = 0
while True:
    i += 1
    with open(f"/home/user/d/{i}", "w") as f:
        f.write(str(i))
    with open("/home/user/last.tmp", "w") as f:
        f.write(str(i))
    os.replace("/home/user/last.tmp", "/home/user/last")
"#;
    parent.sh_ok(&format!(
        "cat > /home/user/writer.py <<'EOF'\n{writer}\nEOF\nnohup python3 /home/user/writer.py >/dev/null 2>&1 &"
    ));
    assert!(eventually(Duration::from_secs(10), || {
        parent.sh("test $(ls /home/user/d | wc -l) -gt 2000").code == 0
    }));
    let check = r#"python3 - <<'EOF'
import os
names = sorted(int(n) for n in os.listdir("/home/user/d"))
last = int(open("/home/user/last").read())
m = names[-1]
assert names == list(range(1, m + 1)), "holes in d/"
assert m in (last, last + 1), f"d/ ends at {m} but last says {last}"
print(m)
EOF"#;
    for round in 0..3 {
        let (forks, result) = fork(&[&parent.id]);
        assert_eq!(result["implicit_snapshot"], true);
        let out = forks[0].sh(check);
        assert_eq!(out.code, 0, "round {round}: inconsistent snapshot: {out:?}");
    }
    // The writer was frozen, not killed.
    let n1 = parent.sh_ok("cat /home/user/last");
    assert!(eventually(Duration::from_secs(5), || parent
        .sh_ok("cat /home/user/last")
        != n1));
}

#[test]
fn restore_rolls_a_sandbox_back_in_place() {
    let Some(_g) = shared() else { return };
    let sbx = create(&["--env", "KEEP=yes"]);
    sbx.sh_ok("echo v1 > /home/user/file");
    let before = sbx.info();
    let machine_id = sbx.sh_ok("cat /etc/machine-id");
    let snap = snapshot(&sbx, &[]);
    let snap_id = snap["snapshot_id"].as_str().unwrap();
    sbx.sh_ok("echo v2 > /home/user/file; echo new > /home/user/added");
    sbx.root_ok("rm /etc/hostname.bak 2>/dev/null; rm -f /etc/issue.net");

    let out = cli_ok(&["sandbox", "restore", &sbx.id, snap_id, "--json"]);
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["ip"], before["ip"]);
    assert_eq!(after["hostname"], before["hostname"]);
    assert_ne!(after["pid"], before["pid"], "processes restart on restore");
    assert_eq!(sbx.sh_ok("cat /home/user/file"), "v1\n");
    assert!(sbx.sh("test -e /home/user/added").code != 0);
    assert_eq!(sbx.sh_ok("test -e /etc/issue.net && echo back"), "back\n");
    assert_eq!(sbx.sh_ok("cat /etc/machine-id"), machine_id);
    assert_eq!(sbx.sh_ok("echo $KEEP"), "yes\n", "env survives a restore");
    assert_eq!(
        sbx.sh_ok("hostname"),
        format!("{}\n", before["hostname"].as_str().unwrap())
    );
    // Restore again after more changes, and a second snapshot stacked on the restored state.
    sbx.sh_ok("echo v3 > /home/user/file");
    let snap2 = snapshot(&sbx, &[]);
    assert_eq!(snap2["parent_snapshot_id"], snap["snapshot_id"]);
    assert_eq!(
        snap2["depth"].as_u64(),
        snap["depth"].as_u64().map(|d| d + 1)
    );
    sbx.sh_ok("echo v4 > /home/user/file");
    cli_ok(&[
        "sandbox",
        "restore",
        &sbx.id,
        snap2["snapshot_id"].as_str().unwrap(),
    ]);
    assert_eq!(sbx.sh_ok("cat /home/user/file"), "v3\n");

    // Only its own snapshots: another sandbox's is refused, and that sandbox is untouched.
    let other = create(&[]);
    let out = cli(&["sandbox", "restore", &other.id, snap_id]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("restores only its own snapshots"),
        "{out:?}"
    );
    assert_eq!(other.sh_ok("echo alive"), "alive\n");
}

#[test]
fn a_hundred_forks_fan_out_and_tear_down_leaving_nothing() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let parent = create(&[]);
    parent.sh_ok("echo base > /home/user/base");
    // Baselines once the warm pool (one sandbox) has refilled after the parent's create.
    assert!(eventually(Duration::from_secs(20), || {
        host_ifs() == listed_ids().len() + 1 && memory_cgroups() == listed_ids().len() + 1
    }));
    let (ifs0, cgroups0, mounts0) = (host_ifs(), memory_cgroups(), state_mounts());

    let (forks, result) = fork(&[&parent.id, "--count", "100", "--timeout", "10m"]);
    assert_eq!(result["created"], 100, "{result}");
    assert_eq!(forks.len(), 100);
    let implicit = result["snapshot_id"].as_str().unwrap().to_string();
    // Every fork's agent answers, from several threads at once.
    let ids: Vec<String> = forks.iter().map(|f| f.id.clone()).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(10) {
            s.spawn(move || {
                for id in chunk {
                    let out = cli(&["exec", id, "--", "cat", "/home/user/base"]);
                    assert_eq!(out.stdout, "base\n", "fork {id}: {out:?}");
                }
            });
        }
    });
    assert_eq!(host_ifs(), ifs0 + 100);
    assert_eq!(memory_cgroups(), cgroups0 + 100);

    // Tear down from several threads; everything of theirs must go.
    std::thread::scope(|s| {
        for chunk in forks.chunks(10) {
            s.spawn(move || {
                for f in chunk {
                    cli_ok(&["sandbox", "kill", &f.id]);
                }
            });
        }
    });
    std::mem::forget(forks); // already killed
    for id in &ids {
        assert!(cgroup_dirs(id).is_empty(), "cgroups of {id} left");
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            host_ifs() == ifs0
                && memory_cgroups() == cgroups0
                && ids
                    .iter()
                    .all(|id| !d.state.join("sandboxes").join(id).exists())
        }),
        "leaked: {} interfaces (was {ifs0}), {} cgroups (was {cgroups0})",
        host_ifs(),
        memory_cgroups()
    );
    assert_eq!(state_mounts(), mounts0, "host mounts under the state dir");
    // The implicit snapshot goes with its last fork.
    let layer = d.state.join("snapshots").join(&implicit);
    assert!(
        // (Only this one: implicit snapshots of earlier tests may still be collected meanwhile.)
        eventually(Duration::from_secs(10), || !layer.exists()
            && !snapshot_ids().contains(&implicit)),
        "implicit snapshot {implicit} left behind"
    );
    assert_eq!(parent.sh_ok("cat /home/user/base"), "base\n");
}

#[test]
fn killing_a_parent_leaves_its_forks_running() {
    let Some(_g) = shared() else { return };
    let parent = create(&[]);
    parent.sh_ok("echo inherited > /home/user/f");
    let (forks, result) = fork(&[&parent.id, "--count", "2"]);
    assert_eq!(forks.len(), 2, "{result}");
    let parent_id = parent.id.clone();
    drop(parent); // kills it
    assert!(!listed_ids().contains(&parent_id));
    for f in &forks {
        assert_eq!(f.sh_ok("cat /home/user/f"), "inherited\n");
        f.sh_ok("echo more >> /home/user/f");
    }
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &forks[0].id, "--json"])).unwrap();
    let ancestors = lineage["ancestors"].as_array().unwrap();
    assert_eq!(ancestors[1]["id"], parent_id.as_str());
    assert_eq!(ancestors[1]["alive"], false);
    // The implicit snapshot stays while a fork stands on it, and is refused deletion.
    let snap = result["snapshot_id"].as_str().unwrap();
    let out = cli(&["snapshot", "delete", snap]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("in use"), "{out:?}");
    drop(forks);
    assert!(
        eventually(Duration::from_secs(10), || !snapshot_ids()
            .contains(&snap.to_string())),
        "implicit snapshot not removed after its forks"
    );
}

#[test]
fn lineage_survives_a_daemon_restart() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let root = create(&[]);
    root.sh_ok("echo gen0 > /home/user/g");
    let s1 = snapshot(&root, &[]);
    let (mut gen1, _) = fork(&["--snapshot", s1["snapshot_id"].as_str().unwrap()]);
    let gen1 = gen1.remove(0);
    gen1.sh_ok("echo gen1 >> /home/user/g");
    let s2 = snapshot(&gen1, &["--meta", "step=2"]);
    assert_eq!(s2["parent_snapshot_id"], s1["snapshot_id"]);
    let (mut gen2, _) = fork(&["--snapshot", s2["snapshot_id"].as_str().unwrap()]);
    let gen2 = gen2.remove(0);

    d.kill9();
    d.start();

    assert_eq!(gen2.sh_ok("cat /home/user/g"), "gen0\ngen1\n");
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &gen2.id, "--json"])).unwrap();
    let chain: Vec<&str> = lineage["ancestors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        [
            s2["snapshot_id"].as_str().unwrap(),
            gen1.id.as_str(),
            s1["snapshot_id"].as_str().unwrap(),
            root.id.as_str()
        ]
    );
    let down: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &root.id, "--json"])).unwrap();
    let descendants: Vec<&str> = down["descendants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(descendants.contains(&gen2.id.as_str()), "{down}");
    let info: Value = serde_json::from_str(&cli_ok(&[
        "snapshot",
        "info",
        s2["snapshot_id"].as_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(info["metadata"]["step"], "2");
    assert_eq!(info["dependant_sandboxes"], json!([gen2.id]));
    // Deletion rules still hold after the restart, and forking still works.
    assert_ne!(
        cli(&["snapshot", "delete", s1["snapshot_id"].as_str().unwrap()]).code,
        0
    );
    let (gen2b, _) = fork(&["--snapshot", s2["snapshot_id"].as_str().unwrap()]);
    assert_eq!(gen2b[0].sh_ok("cat /home/user/g"), "gen0\ngen1\n");
}

#[test]
fn bad_input_is_refused_and_creates_nothing() {
    let Some(_g) = shared() else { return };
    let marker = format!("bad-{}", std::process::id());
    let meta = format!("test={marker}");
    let sbx = create(&[]);
    let snaps_of = |id: &str| -> usize {
        let v: Value =
            serde_json::from_str(&cli_ok(&["snapshot", "list", "--sandbox", id, "--json"]))
                .unwrap();
        v.as_array().unwrap().len()
    };

    let out = cli(&[
        "sandbox",
        "fork",
        "--snapshot",
        "nosuchsnapshot",
        "--meta",
        &meta,
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("snapshot 'nosuchsnapshot' not found"),
        "{out:?}"
    );
    for count in ["0", "101"] {
        let out = cli(&[
            "sandbox", "fork", &sbx.id, "--count", count, "--meta", &meta,
        ]);
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains("count must be between 1 and 100"),
            "{out:?}"
        );
    }
    let out = cli(&[
        "sandbox", "fork", &sbx.id, "--memory", "1K", "--meta", &meta,
    ]);
    assert!(out.stderr.contains("memory limit"), "{out:?}");
    assert_eq!(
        snaps_of(&sbx.id),
        0,
        "a refused fork left an implicit snapshot"
    );

    // Memory state is unavailable here (no CRIU >= 4.1): a clear error, never a downgrade.
    let out = cli(&["snapshot", "create", &sbx.id, "--memory-state"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("memory snapshots are unavailable"),
        "{out:?}"
    );
    assert_eq!(snaps_of(&sbx.id), 0, "a memory snapshot was downgraded");
    let (code, support) = api(
        "POST",
        &format!("/api/v1/sandboxes/{}/snapshots", sbx.id),
        Some(json!({"kind": "memory"})),
    );
    assert_eq!(code, 400, "{support}");
    assert_eq!(support["code"], "failed_precondition");

    // Names are unique and checked.
    let name = format!("n{}", std::process::id());
    snapshot(&sbx, &["--name", &name]);
    let out = cli(&["snapshot", "create", &sbx.id, "--name", &name]);
    assert!(out.stderr.contains("already exists"), "{out:?}");
    let out = cli(&["snapshot", "create", &sbx.id, "--name", "bad/name"]);
    assert!(out.stderr.contains("must be 1-64 characters"), "{out:?}");
    assert_eq!(snaps_of(&sbx.id), 1);
    let out = cli(&["snapshot", "delete", "nosuchsnapshot"]);
    assert_eq!(out.code, 2, "{out:?}");

    // Forking or snapshotting a dead sandbox.
    let dead = sbx.id.clone();
    drop(sbx);
    let out = cli(&["sandbox", "fork", &dead, "--meta", &meta]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = cli(&["snapshot", "create", &dead]);
    assert_eq!(out.code, 2, "{out:?}");
    // Nothing was created by any of it.
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["metadata"]["test"] != marker.as_str()),
        "a refused fork created a sandbox"
    );
    // The named snapshot outlives its sandbox and can be deleted once nothing stands on it.
    cli_ok(&["snapshot", "delete", &name]);
}
