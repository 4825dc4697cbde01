//! One running Jupyter kernel: its process, its shell/control/iopub channels, and executions
//! turned into E2B output lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, InterruptRequest, JupyterKernelspec,
    JupyterMessage, JupyterMessageContent, KernelInfoRequest, Stdio, Transport,
};
use jupyter_zmq_client::{
    ClientControlConnection, ClientIoPubConnection, ClientShellConnection,
    create_client_control_connection, create_client_iopub_connection,
    create_client_shell_connection_with_identity, peer_identity_for_session,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::Error;
use crate::wire::{OutputLine, ResultData, errors};

/// How long a kernel may take to answer its first `kernel_info_request`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// After an interrupt, how long the kernel gets to come back to idle before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// Options added to ipykernel's command line (traitlets), each for the cost of a warm
/// execution:
/// - `HistoryManager.enabled=False`: IPython otherwise commits every cell to a SQLite file in
///   the user's home (`~/.ipython/profile_default/history.sqlite`) from a thread that takes
///   the GIL and syncs to the sandbox's overlay while the next reply is being sent; with it off
///   the history lives in memory only (`In`, `Out`, `_`, `%history` of this kernel still work,
///   only history across kernel restarts is lost, which a sandbox does not keep anyway).
/// - `Kernel._execute_sleep=0`: ipykernel sleeps 0.5 ms (plus timer slack) after every
///   execution before it sends the reply, a workaround for clients that take the reply as
///   the end of output. This client takes the iopub `idle` status as the end, which ipykernel
///   publishes after every output of the request, so the sleep only adds latency.
const IPYKERNEL_FLAGS: &[&str] = &[
    "--HistoryManager.enabled=False",
    "--Kernel._execute_sleep=0",
];

/// Display formatters and hooks that give IPython kernels E2B's rich results (charts, data,
/// saved PIL images), run once at each kernel's start.
const E2B_DISPLAY: &str = include_str!("display/e2b_display.py");

/// How long output may trail the end of an execution. Deno's kernel (2.9) publishes some cells'
/// `execute_result` just after its `idle` status (a fraction of a millisecond later, in about
/// one cell in five), so its executions wait that long for stragglers; kernels that order their
/// messages as the protocol says end at `idle` and the reply.
fn settle_time(argv: &[String]) -> Duration {
    let program = argv
        .first()
        .map(|a| Path::new(a).file_name().unwrap_or_default());
    match program.and_then(|p| p.to_str()) {
        Some("deno") => Duration::from_millis(20),
        _ => Duration::ZERO,
    }
}

/// Whether a kernelspec's argv starts IPython's kernel (`-m ipykernel_launcher`/`ipykernel`).
fn is_ipykernel(argv: &[String]) -> bool {
    argv.iter()
        .any(|a| a == "ipykernel_launcher" || a == "ipykernel")
}

/// What it takes to start a kernel process; the launcher decides how (user, reaping).
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Command line from the kernelspec, with `{connection_file}` and `{resource_dir}` filled in.
    pub argv: Vec<String>,
    /// Full environment: the sandbox-wide env plus the kernelspec's own.
    pub env: BTreeMap<String, String>,
    /// Working directory, the context's cwd.
    pub cwd: PathBuf,
    /// The kernel's own stdout and stderr go here (start failures are read from it).
    pub log: PathBuf,
}

/// A started kernel process. `exited` resolves with a description of how it ended.
pub struct Launched {
    /// Pid of the kernel process.
    pub pid: u32,
    /// Resolves with a description of how the process ended.
    pub exited: oneshot::Receiver<String>,
}

/// Starts and signals kernel processes. In the sandbox this is the agent, which must reap every
/// child itself (PID 1) and runs kernels as the sandbox user.
pub trait Launcher: Send + Sync + 'static {
    /// Starts the kernel process as `spec` says.
    fn launch(&self, spec: &LaunchSpec) -> std::io::Result<Launched>;
    /// Sends `signal` to the kernel's process group; false when it is gone.
    fn signal(&self, pid: u32, signal: i32) -> bool;
    /// Makes a file the launcher created readable by the kernel (same owner).
    fn hand_over(&self, path: &Path) -> std::io::Result<()>;
    /// The sandbox-wide environment every process gets (may change after start, see /init).
    fn sandbox_env(&self) -> BTreeMap<String, String>;
}

/// A kernelspec found on disk.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Directory name of the kernelspec, e.g. `python3`.
    pub name: String,
    /// Directory holding its `kernel.json`, the kernel's `{resource_dir}`.
    pub dir: PathBuf,
    /// The parsed `kernel.json`.
    pub spec: JupyterKernelspec,
}

/// One running Jupyter kernel process and its ZeroMQ connections.
pub struct Kernel {
    /// Pid of the kernel process.
    pub pid: u32,
    shell: ClientShellConnection,
    control: ClientControlConnection,
    iopub: ClientIoPubConnection,
    /// Some(description) once the process has exited.
    exited: watch::Receiver<Option<String>>,
    message_interrupt: bool,
    /// How long to keep reading output after `idle` and the reply (see [`settle_time`]).
    settle: Duration,
    /// Sandbox env the kernel has (started with, or updated to).
    env: BTreeMap<String, String>,
    session: String,
    conn_file: PathBuf,
    /// Where the kernel listens, for `reconnect`.
    info: ConnectionInfo,
}

impl Kernel {
    /// Launches the kernel and waits until it answers on shell and publishes on iopub.
    pub async fn start(
        launcher: &dyn Launcher,
        spec: &KernelSpec,
        cwd: &Path,
        run_dir: &Path,
        id: &str,
    ) -> Result<Kernel, Error> {
        let start_err = |m: String| Error::Start(format!("kernel '{}': {m}", spec.name));
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        // The listeners hold the ports until the kernel is spawned (narrows the reuse race).
        let (ports, listeners) = jupyter_zmq_client::peek_ports_with_listeners(ip, 5)
            .await
            .map_err(|e| start_err(format!("finding free ports: {e}")))?;
        let info = ConnectionInfo {
            ip: ip.to_string(),
            transport: Transport::TCP,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: uuid::Uuid::new_v4().simple().to_string(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: Some(spec.name.clone()),
        };
        let conn_file = run_dir.join(format!("{id}.json"));
        let log = run_dir.join(format!("{id}.log"));
        write_private(
            &conn_file,
            &serde_json::to_vec(&info).map_err(|e| start_err(e.to_string()))?,
        )
        .map_err(|e| start_err(format!("writing {}: {e}", conn_file.display())))?;
        launcher
            .hand_over(&conn_file)
            .map_err(|e| start_err(format!("handing over the connection file: {e}")))?;
        let _ = std::fs::remove_file(&log);

        let argv: Vec<String> = spec
            .spec
            .argv
            .iter()
            .map(|a| {
                a.replace("{connection_file}", &conn_file.to_string_lossy())
                    .replace("{resource_dir}", &spec.dir.to_string_lossy())
            })
            .collect();
        if argv.is_empty() {
            return Err(start_err("its kernelspec has an empty argv".into()));
        }
        let mut argv = argv;
        if is_ipykernel(&argv) {
            argv.extend(IPYKERNEL_FLAGS.iter().map(|f| f.to_string()));
            let display = run_dir.join(format!("{id}.display.py"));
            write_private(&display, E2B_DISPLAY.as_bytes())
                .and_then(|()| launcher.hand_over(&display))
                .map_err(|e| start_err(format!("writing {}: {e}", display.display())))?;
            argv.push(run_at_start(&display));
        }
        let env_base = launcher.sandbox_env();
        let mut env = env_base.clone();
        env.extend(spec.spec.env.clone().unwrap_or_default());
        // Rich output: no terminal, let ipykernel pick the inline matplotlib backend.
        env.remove("MPLBACKEND");
        let launched = launcher
            .launch(&LaunchSpec {
                argv,
                env,
                cwd: cwd.to_path_buf(),
                log: log.clone(),
            })
            .map_err(|e| start_err(format!("starting the process: {e}")))?;
        drop(listeners);
        let pid = launched.pid;
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let how = launched
                .exited
                .await
                .unwrap_or_else(|_| "lost track of the process".into());
            let _ = exit_tx.send(Some(how));
        });

        let session = uuid::Uuid::new_v4().to_string();
        let (shell, control, iopub) = connect(&info, &session)
            .await
            .map_err(|e| start_err(format!("connecting: {e}")))?;
        let mut kernel = Kernel {
            pid,
            shell,
            control,
            iopub,
            exited,
            message_interrupt: spec.spec.interrupt_mode.as_deref() == Some("message"),
            settle: settle_time(&spec.spec.argv),
            env: env_base,
            session,
            conn_file,
            info,
        };
        if let Err(e) = kernel.handshake().await {
            launcher.signal(pid, libc::SIGKILL);
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(start_err(if tail.is_empty() {
                e
            } else {
                format!("{e}; its output:\n{tail}")
            }));
        }
        Ok(kernel)
    }

    /// Connects afresh to the still-running kernel (its variables intact): after the sandbox
    /// resumed from a memory snapshot, its old connections came back closed.
    pub async fn reconnect(&mut self) -> Result<(), String> {
        let (shell, control, iopub) = connect(&self.info, &self.session)
            .await
            .map_err(|e| format!("reconnecting: {e}"))?;
        (self.shell, self.control, self.iopub) = (shell, control, iopub);
        self.handshake().await
    }

    /// Sends `kernel_info_request` until the kernel answers on shell and something arrives on
    /// iopub: a SUB socket misses what is published before its subscription lands, so only
    /// then is it safe to execute.
    async fn handshake(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut replied, mut published) = (false, false);
        let mut resend = Instant::now();
        while !(replied && published) {
            if Instant::now() >= resend {
                let msg = JupyterMessage::new(KernelInfoRequest {}, None);
                self.shell
                    .send(msg)
                    .await
                    .map_err(|e| format!("sending kernel_info_request: {e}"))?;
                resend = Instant::now() + Duration::from_millis(250);
            }
            tokio::select! {
                m = self.shell.read() => match m {
                    Ok(m) => replied |= matches!(m.content, JupyterMessageContent::KernelInfoReply(_)),
                    // A reply whose content does not parse (kernels differ in what they fill
                    // in) still shows the kernel is up.
                    Err(e) => {
                        tracing::warn!("unreadable kernel_info_reply: {e}");
                        replied = true;
                    }
                },
                m = self.iopub.read() => {
                    if let Err(e) = &m {
                        tracing::warn!("unreadable iopub message: {e}");
                    }
                    published = true;
                }
                _ = self.exited.changed() => {
                    let how = self.exited.borrow().clone().unwrap_or_default();
                    return Err(format!("the kernel process exited during start ({how})"));
                }
                _ = tokio::time::sleep_until(resend) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("no answer within {}s", START_TIMEOUT.as_secs()));
                }
            }
        }
        Ok(())
    }

    /// Why the process ended, once it has.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Interrupts the running execution (SIGINT to the process group, or an
    /// `interrupt_request` for kernels that ask for messages).
    async fn interrupt(&mut self, launcher: &dyn Launcher) {
        if self.message_interrupt {
            let msg = JupyterMessage::new(InterruptRequest {}, None);
            if let Err(e) = self.control.send(msg).await {
                tracing::warn!(pid = self.pid, "interrupt_request failed: {e}");
            }
        } else {
            launcher.signal(self.pid, libc::SIGINT);
        }
    }

    /// Kills the kernel's process group and removes its connection and display files.
    pub fn kill(&self, launcher: &dyn Launcher) {
        launcher.signal(self.pid, libc::SIGKILL);
        let _ = std::fs::remove_file(&self.conn_file);
        let _ = std::fs::remove_file(self.conn_file.with_extension("display.py"));
    }

    /// Sends on the shell channel, giving up when the process dies (a send to a peer that is
    /// gone may wait for it to come back).
    async fn send_shell(&mut self, msg: JupyterMessage) -> Result<(), String> {
        let mut exited = self.exited.clone();
        if let Some(how) = exited.borrow_and_update().clone() {
            return Err(how);
        }
        tokio::select! {
            r = self.shell.send(msg) => r.map_err(|e| format!("sending to the kernel: {e}")),
            _ = exited.changed() => Err(exited.borrow().clone().unwrap_or_default()),
        }
    }

    /// Runs code that produces no output the caller sees (env setup), waiting for its reply.
    async fn run_silent(&mut self, code: String) -> Result<(), String> {
        let req = ExecuteRequest {
            code,
            silent: true,
            store_history: false,
            user_expressions: None,
            allow_stdin: false,
            stop_on_error: false,
        };
        let msg = JupyterMessage::new(req, None);
        let id = msg.header.msg_id.clone();
        self.send_shell(msg).await?;
        loop {
            tokio::select! {
                m = self.shell.read() => if let Ok(m) = m
                    && is_reply_to(&m, &id) {
                        return Ok(());
                    },
                _ = self.exited.changed() => return Err("the kernel process exited".into()),
            }
        }
    }

    /// Executes `code`, sending output lines to `out` as they arrive. Returns when the kernel
    /// is idle again (or dead). A closed `out` (the caller went away) interrupts the kernel;
    /// so does `timeout`. The caller writes `end_of_execution`.
    pub async fn execute(
        &mut self,
        launcher: &dyn Launcher,
        language: &str,
        code: &str,
        env_vars: &BTreeMap<String, String>,
        timeout: Option<Duration>,
        out: &mpsc::Sender<OutputLine>,
    ) -> Result<(), Error> {
        if let Some(how) = self.exit_status() {
            return Err(Error::Died(how));
        }
        // Sandbox-wide env set after the kernel started (the host's /init) persists; per-call
        // env vars are set for this call only: after it each is back to its sandbox-wide value
        // (or unset when it has none), as E2B's interpreter does.
        let current = launcher.sandbox_env();
        let changed: BTreeMap<String, String> = current
            .iter()
            .filter(|(k, v)| self.env.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !changed.is_empty() {
            if let Some(setup) = env_code(language, &changed, false) {
                self.run_silent(setup).await.map_err(Error::Died)?;
            }
            self.env = current;
        }
        let undo = if env_vars.is_empty() {
            None
        } else {
            let setup = env_code(language, env_vars, false).ok_or_else(|| {
                Error::BadRequest(format!(
                    "env_vars are supported in python and bash contexts, not in {language}"
                ))
            })?;
            self.run_silent(setup).await.map_err(Error::Died)?;
            let (back, gone): (BTreeMap<String, String>, BTreeMap<String, String>) = env_vars
                .iter()
                .map(|(k, v)| match self.env.get(k) {
                    Some(wide) => (k.clone(), wide.clone()),
                    None => (k.clone(), v.clone()),
                })
                .partition(|(k, _)| self.env.contains_key(k));
            Some(
                [
                    env_code(language, &back, false),
                    env_code(language, &gone, true),
                ]
                .into_iter()
                .flatten()
                .collect::<String>(),
            )
        };

        let result = self.execute_inner(launcher, code, timeout, out).await;
        if let Some(undo) = undo
            && result.is_ok()
        {
            let _ = self.run_silent(undo).await;
        }
        result
    }

    async fn execute_inner(
        &mut self,
        launcher: &dyn Launcher,
        code: &str,
        timeout: Option<Duration>,
        out: &mpsc::Sender<OutputLine>,
    ) -> Result<(), Error> {
        let msg = JupyterMessage::new(
            ExecuteRequest {
                code: code.to_string(),
                silent: false,
                store_history: true,
                user_expressions: None,
                allow_stdin: false,
                // Executions never queue up here (one at a time per context), and with
                // stop_on_error ipykernel aborts requests that arrive just after an error: the
                // call after an interrupted one would be dropped unrun.
                stop_on_error: false,
            },
            None,
        );
        let id = msg.header.msg_id.clone();
        self.send_shell(msg).await.map_err(Error::Died)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut interrupted_at: Option<Instant> = None;
        let mut timed_out = false;
        let (mut idle, mut replied) = (false, false);
        let mut idle_at = far;
        let mut settled_at = far;
        loop {
            if idle && replied {
                if self.settle.is_zero() {
                    break;
                }
                settled_at = settled_at.min(Instant::now() + self.settle);
            }
            let grace = interrupted_at.map_or(far, |t| t + INTERRUPT_GRACE);
            tokio::select! {
                m = self.iopub.read() => {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => { tracing::warn!("unreadable iopub message: {e}"); continue }
                    };
                    if !is_reply_to(&m, &id) {
                        continue; // another execution's (e.g. a silent env setup's) output
                    }
                    if let JupyterMessageContent::Status(s) = &m.content {
                        if s.execution_state == ExecutionState::Idle {
                            idle = true;
                            idle_at = Instant::now();
                        }
                        continue;
                    }
                    if timed_out && matches!(m.content, JupyterMessageContent::ErrorOutput(_)) {
                        continue; // the KeyboardInterrupt we caused; the timeout error replaces it
                    }
                    if let Some(line) = to_line(&m) {
                        // A gone receiver is noticed below (out.closed()).
                        let _ = out.send(line).await;
                    }
                }
                m = self.shell.read() => if let Ok(m) = m
                    && is_reply_to(&m, &id) {
                        replied = true;
                    },
                _ = self.exited.changed() => {
                    let how = self.exited.borrow().clone().unwrap_or_default();
                    return Err(Error::Died(how));
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if !timed_out && interrupted_at.is_none() => {
                    timed_out = true;
                    let secs = timeout.unwrap_or_default().as_secs_f64();
                    let _ = out.send(OutputLine::Error {
                        name: errors::TIMEOUT.into(),
                        value: format!("execution exceeded the {secs}s timeout; the kernel was interrupted and the context keeps its state"),
                        traceback: String::new(),
                    }).await;
                    interrupted_at = Some(Instant::now());
                    self.interrupt(launcher).await;
                }
                _ = out.closed(), if interrupted_at.is_none() => {
                    tracing::info!(pid = self.pid, "caller went away: interrupting the kernel");
                    interrupted_at = Some(Instant::now());
                    self.interrupt(launcher).await;
                }
                _ = tokio::time::sleep_until(grace) => {
                    tracing::warn!(pid = self.pid, "kernel ignored the interrupt: killing it");
                    self.kill(launcher);
                    return Err(Error::Died(format!(
                        "the kernel did not stop within {}s of an interrupt and was killed",
                        INTERRUPT_GRACE.as_secs()
                    )));
                }
                // Idle arrived but the shell reply got lost: do not hang on it.
                _ = tokio::time::sleep_until(idle_at + Duration::from_secs(2)), if idle => break,
                _ = tokio::time::sleep_until(settled_at), if idle && replied => break,
            }
        }
        Ok(())
    }

    /// The Jupyter session id this client uses in its message headers.
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// The shell, control and iopub connections to the kernel listening as `info` says.
async fn connect(
    info: &ConnectionInfo,
    session: &str,
) -> Result<
    (
        ClientShellConnection,
        ClientControlConnection,
        ClientIoPubConnection,
    ),
    jupyter_zmq_client::RuntimeError,
> {
    let identity = peer_identity_for_session(session)?;
    let shell = create_client_shell_connection_with_identity(info, session, identity).await?;
    let control = create_client_control_connection(info, session).await?;
    let iopub = create_client_iopub_connection(info, "", session).await?;
    Ok((shell, control, iopub))
}

fn is_reply_to(m: &JupyterMessage, id: &str) -> bool {
    m.parent_header.as_ref().is_some_and(|p| p.msg_id == id)
}

/// The E2B line for an iopub message, if it maps to one.
fn to_line(m: &JupyterMessage) -> Option<OutputLine> {
    let timestamp = m
        .header
        .date
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let bundle = |data: &jupyter_protocol::Media| match serde_json::to_value(data) {
        Ok(Value::Object(map)) => map,
        _ => Default::default(),
    };
    Some(match &m.content {
        JupyterMessageContent::StreamContent(s) => match s.name {
            Stdio::Stdout => OutputLine::Stdout {
                text: s.text.clone(),
                timestamp,
            },
            Stdio::Stderr => OutputLine::Stderr {
                text: s.text.clone(),
                timestamp,
            },
        },
        JupyterMessageContent::ExecuteInput(i) => OutputLine::NumberOfExecutions {
            execution_count: i.execution_count.0 as i64,
        },
        JupyterMessageContent::ExecuteResult(r) => OutputLine::Result(Box::new(
            ResultData::from_mime_bundle(&bundle(&r.data), true),
        )),
        JupyterMessageContent::DisplayData(d) => OutputLine::Result(Box::new(
            ResultData::from_mime_bundle(&bundle(&d.data), false),
        )),
        JupyterMessageContent::UpdateDisplayData(d) => OutputLine::Result(Box::new(
            ResultData::from_mime_bundle(&bundle(&d.data), false),
        )),
        JupyterMessageContent::ErrorOutput(e) => OutputLine::Error {
            name: e.ename.clone(),
            value: e.evalue.clone(),
            traceback: e.traceback.join("\n"),
        },
        _ => return None,
    })
}

/// Code that sets (or with `undo`, removes) environment variables in a kernel's process, for
/// the languages whose kernels Coppice knows.
fn env_code(language: &str, vars: &BTreeMap<String, String>, undo: bool) -> Option<String> {
    match language {
        "python" => {
            let json = serde_json::to_string(vars).ok()?;
            Some(if undo {
                format!(
                    "import os as __coppice_os\nfor __k in {json}: __coppice_os.environ.pop(__k, None)\ndel __coppice_os, __k\n"
                )
            } else {
                format!(
                    "import os as __coppice_os\n__coppice_os.environ.update({json})\ndel __coppice_os\n"
                )
            })
        }
        "bash" => {
            let mut s = String::new();
            for (k, v) in vars {
                if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                if undo {
                    s.push_str(&format!("unset {k}\n"));
                } else {
                    s.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
                }
            }
            Some(s)
        }
        _ => None,
    }
}

/// ipykernel's option that runs a Python file at start through `runpy`, in a namespace of its
/// own (`exec_files` would leave the file's names in the user's).
fn run_at_start(file: &Path) -> String {
    // A JSON string is a Python string literal for any path.
    let path = serde_json::Value::String(file.to_string_lossy().into_owned());
    format!("--IPKernelApp.exec_lines=__import__('runpy').run_path({path})")
}

/// Writes a file only its owner can read (the connection file holds the signing key).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_code_quotes_values() {
        let vars = BTreeMap::from([("A".to_string(), "it's".to_string())]);
        assert_eq!(
            env_code("bash", &vars, false).unwrap(),
            "export A='it'\\''s'\n"
        );
        assert_eq!(env_code("bash", &vars, true).unwrap(), "unset A\n");
        assert!(
            env_code("python", &vars, false)
                .unwrap()
                .contains(r#"environ.update({"A":"it's"})"#)
        );
        assert!(env_code("r", &vars, false).is_none());
    }
}
