//! The end-to-end harness shared by the test binaries in cli/tests: one real daemon per test
//! binary (temporary state dir, its own socket and port, killed with the process), the real CLI,
//! and helpers to create sandboxes and inspect the host. See `sandbox.rs` for how tests use it.
// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_coppice");
/// The E2B API key the test daemon accepts.
pub const E2B_KEY: &str = "e2b_coppice_test_key";

// ---------------------------------------------------------------------------------------------
// Harness: one daemon per test binary.

pub struct Daemon {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub child: Mutex<Option<Child>>,
}

pub static DAEMON: OnceLock<Daemon> = OnceLock::new();
/// Read: a test using the daemon. Write: a test that restarts it.
pub static RESTART: RwLock<()> = RwLock::new(());
/// Set when a test failed with a sandbox in hand: the daemon's log is then kept.
pub static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The shared daemon, started on first use; `None` (after saying why) when not root.
pub fn shared() -> Option<RwLockReadGuard<'static, ()>> {
    if !is_root() {
        eprintln!("SKIPPED: the end-to-end tests need root");
        return None;
    }
    let guard = RESTART.read().unwrap_or_else(|e| e.into_inner());
    daemon();
    Some(guard)
}

/// The daemon for a test that kills and restarts it.
pub fn exclusive() -> Option<RwLockWriteGuard<'static, ()>> {
    if !is_root() {
        eprintln!("SKIPPED: the end-to-end tests need root");
        return None;
    }
    let guard = RESTART.write().unwrap_or_else(|e| e.into_inner());
    daemon();
    Some(guard)
}

pub fn daemon() -> &'static Daemon {
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
    pub fn start(&self) {
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
            "--e2b-api-key",
            E2B_KEY,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let extra = self.dir.join("extra.toml");
        if extra.exists() {
            cmd.arg("--config").arg(&extra);
        }
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
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` and a start with `config` (TOML) as its config file; "" for none. For a test
    /// holding [`exclusive`].
    pub fn restart_with(&self, config: &str) {
        self.kill9();
        let extra = self.dir.join("extra.toml");
        if config.is_empty() {
            let _ = std::fs::remove_file(&extra);
        } else {
            std::fs::write(&extra, config).unwrap();
        }
        self.start();
    }

    /// The bearer token of the TCP listener (made by the daemon at its first start).
    pub fn api_token(&self) -> String {
        std::fs::read_to_string(self.state.join("api-token"))
            .expect("the daemon's api-token")
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

/// Another `coppice serve` on this host would sweep our sandboxes' cgroups (and we its):
/// wait for it to go away, or fail saying which it is.
pub fn wait_for_other_daemons(within: Duration) {
    let others = || -> Vec<String> {
        processes(|argv| argv[0].ends_with("coppice") && argv.iter().any(|a| a == "serve"))
            .into_iter()
            .map(|(_, argv)| argv.join(" "))
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

/// Live processes (pid, argv) whose argv matches; zombies have no argv and never match.
pub fn processes(matches: impl Fn(&[String]) -> bool) -> Vec<(i32, Vec<String>)> {
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    procs
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv: Vec<String> = String::from_utf8_lossy(&raw)
                .split_terminator('\0')
                .map(str::to_string)
                .collect();
            (!argv.is_empty() && matches(&argv)).then_some((pid, argv))
        })
        .collect()
}

/// Spawns from a thread that lives as long as the process, so that PR_SET_PDEATHSIG (which
/// follows the spawning *thread*) kills the daemon exactly when the test process ends.
pub fn spawn_bound_to_process(mut cmd: Command) -> Child {
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
        // The daemon's loop-mounted btrfs image (sandbox uppers) and its tmpfs of sandbox
        // directories stay mounted when it stops (live sandboxes use them); detach them
        // before removing the state dir.
        unmount_storage(&d.state);
        let _ = std::fs::remove_dir_all(&d.dir);
    });
}

/// Lazily unmounts `<state>/btrfs` (the loop device goes with it) and `<state>/sandboxes`
/// when they are mounts.
pub fn unmount_storage(state: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in [state.join("btrfs"), state.join("sandboxes")] {
        if mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(path_str(&target)))
        {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP to the daemon's TCP listener.

/// One request (`Connection: close`) with exactly `headers` (plus Content-Length); returns
/// the status and the body (de-chunked).
pub fn tcp_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let port = DAEMON.get().expect("daemon started").port;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out += &rest[..n];
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The headers a proper local client sends: Host and the daemon's bearer token.
pub fn authorized() -> Vec<(&'static str, String)> {
    let d = DAEMON.get().expect("daemon started");
    vec![
        ("Host", format!("127.0.0.1:{}", d.port)),
        ("Authorization", format!("Bearer {}", d.api_token())),
    ]
}

// ---------------------------------------------------------------------------------------------
// CLI helpers.

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the CLI against the test daemon.
pub fn cli(args: &[&str]) -> Out {
    cli_at(&DAEMON.get().expect("daemon started").socket, args)
}

pub fn cli_at(socket: &Path, args: &[&str]) -> Out {
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
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert_eq!(out.code, 0, "coppice {args:?} failed: {out:?}");
    out.stdout
}

/// A sandbox this test owns: killed when the test ends, even on failure.
pub struct Sandbox {
    pub id: String,
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
    pub fn info(&self) -> Value {
        serde_json::from_str(&cli_ok(&["sandbox", "info", &self.id, "--json"])).unwrap()
    }

    /// Host pid of the sandbox's init (the agent).
    pub fn pid(&self) -> i32 {
        self.info()["pid"].as_i64().expect("pid in info") as i32
    }

    /// `coppice exec ID ARGS...`; `args` holds exec's options, `--` and the command.
    pub fn exec(&self, args: &[&str]) -> Out {
        let mut all = vec!["exec", &self.id];
        all.extend_from_slice(args);
        cli(&all)
    }

    /// Runs a shell line as the default user.
    pub fn sh(&self, script: &str) -> Out {
        self.exec(&["--", "sh", "-c", script])
    }

    /// Runs a shell line as root (inside) and asserts success; returns stdout.
    pub fn root_ok(&self, script: &str) -> String {
        let out = self.exec(&["--user", "root", "--", "sh", "-c", script]);
        assert_eq!(out.code, 0, "as root: {script}: {out:?}");
        out.stdout
    }

    /// Runs a shell line as the default user and asserts success; returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(out.code, 0, "{script}: {out:?}");
        out.stdout
    }
}

/// `coppice sandbox create ARGS... --json`.
pub fn create(args: &[&str]) -> Sandbox {
    let mut all = vec!["sandbox", "create", "--json"];
    all.extend_from_slice(args);
    let info: Value = serde_json::from_str(&cli_ok(&all)).unwrap();
    Sandbox {
        id: info["id"].as_str().expect("id").to_string(),
    }
}

pub fn listed_ids() -> Vec<String> {
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The sandbox's cgroup directories that exist on the host, in every hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("coppice").join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Polls `f` until it is true or `within` has passed; returns whether it became true.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
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
