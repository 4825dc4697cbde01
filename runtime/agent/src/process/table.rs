//! The process table: running (and recently finished) processes, their watchers, and the task
//! that pumps each process's output to every watcher.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use coppice_envd::ConnectError;
use coppice_envd::process::{
    DataEvent, EndEvent, ProcessConfig, ProcessInfo, ProcessInput, ProcessSelector, PtySize,
};
use futures::future::join_all;
use nix::sys::wait::WaitStatus;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use super::spawn::{ChildIo, Spawned};
use super::status::end_event;

/// How long a finished process stays visible to `Connect` (envd retains exits for a while).
const RETAIN_FINISHED: Duration = Duration::from_secs(60);
/// Read size for pipes and the PTY (envd uses 32 KiB and 16 KiB).
const CHUNK: usize = 32 << 10;
/// Events buffered per watcher; a watcher that falls further behind slows the process down
/// (back-pressure, as in envd) instead of losing output.
const WATCHER_BUFFER: usize = 64;
/// After the process exits, output still open (held by a background grandchild) is read until
/// it goes quiet this long, and never for longer than `LINGER_MAX`, as envd does not wait for it.
const LINGER_IDLE: Duration = Duration::from_millis(100);
const LINGER_MAX: Duration = Duration::from_secs(2);

/// What a watcher receives after the start event.
#[derive(Debug, Clone)]
pub enum Msg {
    Data(DataEvent),
    /// The last message. `timed_out`: killed because `connect-timeout-ms` passed.
    End {
        end: EndEvent,
        timed_out: bool,
    },
}

#[derive(Default)]
pub struct Processes {
    /// Shared with each process's pump, which forgets its process a while after it ended.
    table: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
}

pub struct Proc {
    pub pid: u32,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    /// The stdin pipe; None without one (`stdin: false`, closed, PTY, or process gone).
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// The PTY master for input and resizes; None for pipe processes and once finished.
    pty: tokio::sync::Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    is_pty: bool,
    watch: Mutex<Watch>,
    timed_out: AtomicBool,
}

#[derive(Default)]
struct Watch {
    watchers: Vec<mpsc::Sender<Msg>>,
    /// Set once the process has ended; late watchers get just this.
    end: Option<Msg>,
}

impl Processes {
    /// Registers a freshly spawned process and starts pumping its output. Returns it with a
    /// watcher that sees all of its output (for the `Start` stream).
    pub fn launch(
        &self,
        config: ProcessConfig,
        tag: Option<String>,
        spawned: Spawned,
        timeout: Option<Duration>,
    ) -> (Arc<Proc>, mpsc::Receiver<Msg>) {
        let Spawned { pid, exit, io } = spawned;
        let (stdin, pty, outputs) = match io {
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                stdin,
                None,
                [Some(Output::Stdout(stdout)), Some(Output::Stderr(stderr))],
            ),
            ChildIo::Pty(master) => {
                let master = Arc::new(master);
                (
                    None,
                    Some(master.clone()),
                    [Some(Output::Pty(master)), None],
                )
            }
        };
        let proc = Arc::new(Proc {
            pid,
            config,
            tag,
            stdin: tokio::sync::Mutex::new(stdin),
            is_pty: pty.is_some(),
            pty: tokio::sync::Mutex::new(pty),
            watch: Mutex::new(Watch::default()),
            timed_out: AtomicBool::new(false),
        });
        // Subscribed before the pump starts, so the Start stream misses nothing.
        let watcher = proc.subscribe();
        self.table.lock().insert(pid, proc.clone());
        tokio::spawn(pump(self.table.clone(), proc.clone(), outputs, exit));
        if let Some(timeout) = timeout {
            let weak = Arc::downgrade(&proc);
            tokio::spawn(async move {
                sleep(timeout).await;
                if let Some(proc) = weak.upgrade()
                    && crate::reaper::signal_group(proc.pid, nix::sys::signal::Signal::SIGKILL)
                {
                    proc.timed_out.store(true, Ordering::SeqCst);
                    tracing::info!(pid = proc.pid, "process killed: connect-timeout-ms passed");
                }
            });
        }
        (proc, watcher)
    }

    /// The process a selector names. Finished processes count only with `include_finished`
    /// (for `Connect`); everything else treats them as gone, like envd.
    pub fn find(
        &self,
        selector: &ProcessSelector,
        include_finished: bool,
    ) -> Result<Arc<Proc>, ConnectError> {
        let table = self.table.lock();
        let visible = |p: &&Arc<Proc>| include_finished || !p.is_finished();
        let found = match selector {
            ProcessSelector::Pid(pid) => table.get(pid).filter(visible).cloned(),
            ProcessSelector::Tag(tag) => {
                let mut tagged: Vec<&Arc<Proc>> = table
                    .values()
                    .filter(|p| p.tag.as_deref() == Some(tag.as_str()))
                    .filter(visible)
                    .collect();
                // Prefer a running process when a tag was reused.
                tagged.sort_by_key(|p| p.is_finished());
                tagged.first().map(|p| (*p).clone())
            }
        };
        found.ok_or_else(|| match selector {
            ProcessSelector::Pid(pid) => {
                ConnectError::not_found(format!("process with pid {pid} not found"))
            }
            ProcessSelector::Tag(tag) => {
                ConnectError::not_found(format!("process with tag {tag} not found"))
            }
        })
    }

    /// Running processes, for `List`.
    /// Running processes by pid; with `pty_sizes`, each PTY's size now.
    pub fn list(&self, pty_sizes: bool) -> Vec<ProcessInfo> {
        let table = self.table.lock();
        let mut list: Vec<ProcessInfo> = table
            .values()
            .filter(|p| !p.is_finished())
            .map(|p| ProcessInfo {
                config: p.config.clone(),
                pid: p.pid,
                tag: p.tag.clone(),
                pty_size: pty_sizes.then(|| p.pty_size()).flatten(),
            })
            .collect();
        list.sort_by_key(|p| p.pid);
        list
    }
}

impl Proc {
    /// The PTY's window size (TIOCGWINSZ on the master); None for pipe processes. A PTY busy
    /// with a write or resize this instant reads as 0x0 (unknown).
    fn pty_size(&self) -> Option<PtySize> {
        if !self.is_pty {
            return None;
        }
        let master = self.pty.try_lock().ok().and_then(|g| g.clone());
        let ws = master.and_then(|m| rustix::termios::tcgetwinsize(m.get_ref()).ok());
        Some(ws.map_or(PtySize::default(), |ws| PtySize {
            cols: ws.ws_col.into(),
            rows: ws.ws_row.into(),
        }))
    }

    pub fn is_finished(&self) -> bool {
        self.watch.lock().end.is_some()
    }

    /// A new watcher of this process's output from now on (or of its end, if it has ended).
    pub fn subscribe(&self) -> mpsc::Receiver<Msg> {
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let mut watch = self.watch.lock();
        match &watch.end {
            Some(end) => {
                let _ = tx.try_send(end.clone());
            }
            None => watch.watchers.push(tx),
        }
        rx
    }

    /// Writes input to the stdin pipe or the PTY, as `SendInput` and `StreamInput` ask.
    pub async fn write_input(&self, input: &ProcessInput) -> Result<(), ConnectError> {
        match input {
            ProcessInput::Stdin(data) => {
                let fail =
                    |e: String| ConnectError::internal(format!("error writing to stdin: {e}"));
                if self.is_pty {
                    return Err(fail(
                        "tty assigned to process — input should be written to the pty, not the stdin"
                            .into(),
                    ));
                }
                let mut stdin = self.stdin.lock().await;
                let pipe = stdin
                    .as_mut()
                    .ok_or_else(|| fail("stdin not enabled or closed".into()))?;
                pipe.write_all(data).await.map_err(|e| {
                    fail(format!(
                        "error writing to stdin of process '{}': {e}",
                        self.pid
                    ))
                })
            }
            ProcessInput::Pty(data) => {
                let fail = |e: String| ConnectError::internal(format!("error writing to tty: {e}"));
                let pty = self.pty.lock().await;
                let master = pty.as_ref().ok_or_else(|| {
                    fail(
                        "tty not assigned to process — input should be written to the stdin, not the tty"
                            .into(),
                    )
                })?;
                write_fd(master, data).await.map_err(|e| {
                    fail(format!(
                        "error writing to tty of process '{}': {e}",
                        self.pid
                    ))
                })
            }
        }
    }

    /// Closes stdin so the process reads EOF.
    pub async fn close_stdin(&self) -> Result<(), ConnectError> {
        if self.is_pty {
            return Err(ConnectError::new(
                coppice_envd::Code::Unknown,
                "error closing stdin: cannot close stdin for PTY process — send Ctrl+D (0x04) instead",
            ));
        }
        *self.stdin.lock().await = None;
        Ok(())
    }

    pub async fn resize(&self, size: PtySize) -> Result<(), ConnectError> {
        let pty = self.pty.lock().await;
        let master = pty.as_ref().ok_or_else(|| {
            ConnectError::internal("error resizing tty: tty not assigned to process")
        })?;
        super::spawn::resize(master.get_ref(), size)
            .map_err(|e| ConnectError::internal(format!("error resizing tty: {e}")))
    }

    async fn broadcast(&self, msg: Msg) {
        let watchers = self.watch.lock().watchers.clone();
        let sent = join_all(watchers.iter().map(|w| w.send(msg.clone()))).await;
        if sent.iter().any(Result::is_err) {
            // Some client went away; it stops watching (the process keeps running).
            self.watch.lock().watchers.retain(|w| !w.is_closed());
        }
    }

    async fn finish(&self, end: Msg) {
        let watchers = {
            let mut watch = self.watch.lock();
            watch.end = Some(end.clone());
            std::mem::take(&mut watch.watchers)
        };
        join_all(watchers.iter().map(|w| w.send(end.clone()))).await;
    }
}

/// One output of a process.
enum Output {
    Stdout(pipe::Receiver),
    Stderr(pipe::Receiver),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

/// The next chunk of `out`; None at EOF or on an error (the output is then done). Pends forever
/// when `out` is already done, so it can sit in a `select!`.
async fn read_output(out: &mut Option<Output>, buf: &mut [u8]) -> Option<DataEvent> {
    let result = match out {
        None => std::future::pending().await,
        Some(Output::Stdout(r)) | Some(Output::Stderr(r)) => r.read(buf).await,
        Some(Output::Pty(master)) => read_fd(master, buf).await,
    };
    let n = match result {
        Ok(n) => n,
        // The PTY master reads EIO once every slave fd is closed: that is its EOF.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
        Err(e) => {
            tracing::warn!("reading process output: {e}");
            0
        }
    };
    if n == 0 {
        return None;
    }
    let data = buf[..n].to_vec();
    Some(match out.as_ref()? {
        Output::Stdout(_) => DataEvent::Stdout(data),
        Output::Stderr(_) => DataEvent::Stderr(data),
        Output::Pty(_) => DataEvent::Pty(data),
    })
}

async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
            Ok(result) => data = &data[result?..],
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Forwards a process's output to its watchers until the process has exited and its output is
/// drained, then sends the end event and, after a while, forgets the process.
async fn pump(
    table: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
    proc: Arc<Proc>,
    outputs: [Option<Output>; 2],
    mut exit: oneshot::Receiver<WaitStatus>,
) {
    let [mut first, mut second] = outputs;
    let (mut buf1, mut buf2) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut end: Option<EndEvent> = None;
    let mut linger_until = Instant::now();
    loop {
        if end.is_some() && first.is_none() && second.is_none() {
            break;
        }
        let exited = end.is_some();
        let linger = async move {
            if exited {
                sleep_until(linger_until.min(Instant::now() + LINGER_IDLE)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            data = read_output(&mut first, &mut buf1) => match data {
                Some(data) => proc.broadcast(Msg::Data(data)).await,
                None => first = None,
            },
            data = read_output(&mut second, &mut buf2) => match data {
                Some(data) => proc.broadcast(Msg::Data(data)).await,
                None => second = None,
            },
            status = &mut exit, if end.is_none() => {
                end = Some(match status {
                    Ok(status) => end_event(status),
                    // Only if the reaper is gone; never expected.
                    Err(_) => EndEvent {
                        exit_code: -1,
                        status: "unknown".into(),
                        error: Some("exit status lost".into()),
                        ..Default::default()
                    },
                });
                linger_until = Instant::now() + LINGER_MAX;
            },
            _ = linger => break,
        }
    }
    drop((first, second));
    // Close our ends: EOF/hangup for anything still attached. try_lock: a writer stuck on a
    // pipe held by a grandchild must not hold up the end event.
    if let Ok(mut stdin) = proc.stdin.try_lock() {
        *stdin = None;
    }
    if let Ok(mut pty) = proc.pty.try_lock() {
        *pty = None;
    }
    let end = end.expect("loop ends only after exit");
    tracing::debug!(pid = proc.pid, status = %end.status, "process ended");
    let timed_out = proc.timed_out.load(Ordering::SeqCst);
    let forget = {
        let proc = proc.clone();
        async move {
            sleep(RETAIN_FINISHED).await;
            let mut table = table.lock();
            // The pid may already belong to a newer process.
            if table.get(&proc.pid).is_some_and(|p| Arc::ptr_eq(p, &proc)) {
                table.remove(&proc.pid);
            }
        }
    };
    tokio::spawn(forget);
    proc.finish(Msg::End { end, timed_out }).await;
}
