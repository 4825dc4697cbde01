//! One terminal: a PTY process the sandbox's agent owns, and what the daemon keeps beside it
//! (ARCHITECTURE decision 9): the replay ring, the screen model, the attached clients and the
//! size rule. One pump task reads the agent's output stream and feeds the ring and the screen;
//! clients read the ring at their own pace, so a slow one never stalls the PTY or the others.

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

use coppice_envd::AgentClient;
use coppice_envd::client::MessageStream;
use coppice_envd::process::{DataEvent, ProcessEvent, ProcessEventMessage};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use super::input::{Input, write_inputs};
use super::ring::{Ring, Slice};
pub use super::size::Size;
use crate::{Error, Result};

/// Rows of scrollback the screen model keeps (history lives in the byte ring; each model row
/// costs ~2.5 KiB at 80 columns).
const SCREEN_SCROLLBACK: usize = 100;
/// Queued input chunks per terminal before writers wait.
const INPUT_QUEUE: usize = 256;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Types and resizes.
    Writer,
    /// Only watches: its input and resizes are refused.
    Viewer,
}

/// An attached client as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClientView {
    /// Client number, unique within the terminal.
    pub id: u64,
    /// The name it gave (or "anonymous").
    pub name: String,
    /// Writer or viewer.
    pub role: Role,
    /// The size of its window, when it said (writers' sizes set the terminal's).
    pub size: Option<Size>,
}

/// How the terminal's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TerminalExit {
    /// Exit code (-1 for a signal death or a lost process).
    pub exit_code: i32,
    /// How it ended, e.g. "exit status 0" or "signal: killed".
    pub status: String,
}

/// Events every attached client hears besides output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The terminal's size changed.
    Resize {
        /// Width in columns.
        cols: u16,
        /// Height in rows.
        rows: u16,
    },
    /// A client attached.
    Joined {
        /// Who.
        client: ClientView,
    },
    /// A client detached.
    Left {
        /// Who.
        client: ClientView,
    },
    /// The process ended; no more output follows.
    Exit {
        /// Exit code (-1 for a signal death).
        exit_code: i32,
        /// How it ended.
        status: String,
    },
}

/// The screen as text, with the cursor: what a person attached sees.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScreenText {
    /// The visible rows, trailing blanks trimmed, joined by newlines.
    pub text: String,
    /// Cursor row, 0-based from the top.
    pub cursor_row: u16,
    /// Cursor column, 0-based.
    pub cursor_col: u16,
    /// Screen width.
    pub cols: u16,
    /// Screen height.
    pub rows: u16,
    /// True while a full-screen program (vim, less, top) uses the alternate screen.
    pub alternate_screen: bool,
    /// The window title the program set, if any.
    pub title: String,
    /// Output offset the screen reflects (pass it to a raw read to continue from here).
    pub offset: u64,
}

/// vt100 callbacks: only the window title is kept.
#[derive(Default)]
struct Title(String);

impl vt100::Callbacks for Title {
    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        self.0 = String::from_utf8_lossy(title).into_owned();
    }
}

struct State {
    ring: Ring,
    screen: vt100::Parser<Title>,
    /// The size set by open and resize calls; used while no writer with a size is attached.
    base_size: Size,
    /// The PTY's size now.
    size: Size,
    clients: BTreeMap<u64, ClientView>,
    next_client: u64,
    exit: Option<TerminalExit>,
    ended_at: Option<Instant>,
}

/// A live (or recently ended) terminal.
pub struct Terminal {
    /// Terminal id, unique within its sandbox.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox: String,
    /// The PTY process's pid inside the sandbox.
    pub pid: u32,
    /// The command line it runs.
    pub cmd: String,
    /// Unix milliseconds when it was opened (or adopted after a daemon restart).
    pub created_at_ms: i64,
    state: Mutex<State>,
    /// The output end offset; clients wait on it for new output.
    output: watch::Sender<u64>,
    control: broadcast::Sender<Control>,
    input: mpsc::Sender<Input>,
}

fn nz(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
}

impl Terminal {
    /// Brokers the PTY process `pid`, whose event stream (after its start event) is `events`.
    /// Spawns the pump and the input task; both end with the process.
    pub(super) fn start(
        meta: (String, String, u32, String),
        size: Size,
        ring_bytes: usize,
        agent: AgentClient,
        events: MessageStream<ProcessEventMessage>,
    ) -> Arc<Self> {
        let (id, sandbox, pid, cmd) = meta;
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let term = Arc::new(Self {
            id,
            sandbox,
            pid,
            cmd,
            created_at_ms: coppice_runtime::clock::now_ms(),
            state: Mutex::new(State {
                ring: Ring::new(ring_bytes),
                screen: vt100::Parser::new_with_callbacks(
                    nz(size.rows),
                    nz(size.cols),
                    SCREEN_SCROLLBACK,
                    Title::default(),
                ),
                base_size: size,
                size,
                clients: BTreeMap::new(),
                next_client: 1,
                exit: None,
                ended_at: None,
            }),
            output: watch::channel(0).0,
            control: broadcast::channel(256).0,
            input: input_tx,
        });
        tokio::spawn(pump(term.clone(), events));
        tokio::spawn(write_inputs(pid, agent, input_rx));
        term
    }

    /// The screen as text with the cursor.
    pub fn screen(&self) -> ScreenText {
        let st = self.state.lock();
        let screen = st.screen.screen();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        let (cursor_row, cursor_col) = screen.cursor_position();
        let lines: Vec<String> = screen
            .rows(0, cols)
            .map(|r| r.trim_end().to_string())
            .collect();
        ScreenText {
            text: lines.join("\n").trim_end_matches('\n').to_string(),
            cursor_row,
            cursor_col,
            cols,
            rows,
            alternate_screen: screen.alternate_screen(),
            title: st.screen.callbacks().0.clone(),
            offset: st.ring.end(),
        }
    }

    /// Escapes that rebuild the current screen on a fresh terminal (to seed a client): on the
    /// alternate screen they switch to it first, so the program's exit returns the client to
    /// its normal screen as it does the PTY.
    pub fn screen_formatted(&self) -> (u64, Vec<u8>) {
        let st = self.state.lock();
        let screen = st.screen.screen();
        let mut seed = Vec::new();
        if screen.alternate_screen() {
            seed.extend_from_slice(b"\x1b[?1049h");
        }
        seed.extend(screen.state_formatted().into_bytes());
        (st.ring.end(), seed)
    }

    /// Whether the program asked for application cursor keys (arrows as `ESC O x`).
    pub fn application_cursor(&self) -> bool {
        self.state.lock().screen.screen().application_cursor()
    }

    /// Up to `max` bytes of output from `offset`.
    pub fn read(&self, offset: u64, max: usize) -> Slice {
        self.state.lock().ring.read(offset, max)
    }

    /// The newest output from `offset` (clamped to what the ring holds), at most `max` bytes.
    pub fn tail(&self, offset: u64, max: usize) -> (u64, Vec<u8>) {
        self.state.lock().ring.tail_from(offset, max)
    }

    /// `(oldest offset held, end offset)`.
    pub fn offsets(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.ring.start(), st.ring.end())
    }

    /// Wakes on every new output (and once more when the process ends).
    pub fn watch_output(&self) -> watch::Receiver<u64> {
        self.output.subscribe()
    }

    /// Control events from now on.
    pub fn watch_control(&self) -> broadcast::Receiver<Control> {
        self.control.subscribe()
    }

    /// The PTY's size now.
    pub fn size(&self) -> Size {
        self.state.lock().size
    }

    /// How the process ended, once it has.
    pub fn exit(&self) -> Option<TerminalExit> {
        self.state.lock().exit.clone()
    }

    /// When the process ended, once it has.
    pub fn ended_at(&self) -> Option<Instant> {
        self.state.lock().ended_at
    }

    /// Clients attached now.
    pub fn clients(&self) -> Vec<ClientView> {
        self.state.lock().clients.values().cloned().collect()
    }

    /// Bytes the ring holds now.
    pub fn ring_len(&self) -> usize {
        self.state.lock().ring.len()
    }

    /// Queues input for the PTY (kept in order with other writers').
    pub async fn write(&self, bytes: Vec<u8>) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.exit().is_some() {
            return Err(self.ended_error());
        }
        self.input
            .send(Input::Bytes(bytes))
            .await
            .map_err(|_| self.ended_error())
    }

    fn ended_error(&self) -> Error {
        Error::FailedPrecondition(format!(
            "terminal '{}' has ended ({}); open a new one",
            self.id,
            self.exit().map(|e| e.status).unwrap_or_default()
        ))
    }

    /// Sets the size used while no writer with a size is attached, and returns the size now.
    pub fn set_base_size(&self, size: Size) -> Size {
        let mut st = self.state.lock();
        st.base_size = size;
        self.apply_size(&mut st)
    }

    /// Registers a client; the size rule is recomputed and the others hear it joined.
    pub fn attach(self: &Arc<Self>, name: &str, role: Role, size: Option<Size>) -> Attachment {
        let mut st = self.state.lock();
        let id = st.next_client;
        st.next_client += 1;
        let view = ClientView {
            id,
            name: if name.trim().is_empty() {
                "anonymous".into()
            } else {
                name.chars().take(64).collect()
            },
            role,
            size,
        };
        st.clients.insert(id, view.clone());
        self.apply_size(&mut st);
        drop(st);
        let _ = self.control.send(Control::Joined { client: view });
        Attachment {
            terminal: self.clone(),
            client: id,
        }
    }

    /// The size rule: the smallest attached writer's size (columns and rows each, as tmux's
    /// `window-size smallest` over writers); with no writer that gave a size, the base size.
    /// Viewers never resize. Tells the agent and the clients when it changes.
    fn apply_size(&self, st: &mut State) -> Size {
        let writers = st
            .clients
            .values()
            .filter(|c| c.role == Role::Writer)
            .filter_map(|c| c.size);
        let size = writers
            .reduce(|a, b| Size {
                cols: a.cols.min(b.cols),
                rows: a.rows.min(b.rows),
            })
            .unwrap_or(st.base_size);
        if size != st.size && st.exit.is_none() {
            st.size = size;
            st.screen.set_size(nz(size.rows), nz(size.cols));
            // A full input queue (a paste in flight) must not lose the resize: queue it behind.
            if let Err(mpsc::error::TrySendError::Full(resize)) =
                self.input.try_send(Input::Resize(size))
            {
                let input = self.input.clone();
                tokio::spawn(async move {
                    let _ = input.send(resize).await;
                });
            }
            let _ = self.control.send(Control::Resize {
                cols: size.cols,
                rows: size.rows,
            });
        }
        st.size
    }
}

/// A client's hold on a terminal; dropping it detaches the client.
pub struct Attachment {
    terminal: Arc<Terminal>,
    client: u64,
}

impl Attachment {
    /// This client's number.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// This client's window size changed (a writer's resizes the terminal per the size rule).
    pub fn resize(&self, size: Size) -> Size {
        let t = &self.terminal;
        let mut st = t.state.lock();
        if let Some(c) = st.clients.get_mut(&self.client) {
            c.size = Some(size);
        }
        t.apply_size(&mut st)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let t = &self.terminal;
        let mut st = t.state.lock();
        let gone = st.clients.remove(&self.client);
        t.apply_size(&mut st);
        drop(st);
        if let Some(client) = gone {
            let _ = t.control.send(Control::Left { client });
        }
    }
}

/// Reads the agent's event stream into the ring and the screen until the process ends.
async fn pump(term: Arc<Terminal>, mut events: MessageStream<ProcessEventMessage>) {
    let mut exit = None;
    while let Some(msg) = events.next().await {
        match msg {
            Ok(ProcessEventMessage {
                event: ProcessEvent::Data(DataEvent::Pty(d) | DataEvent::Stdout(d)),
            }) => {
                let mut st = term.state.lock();
                st.ring.push(&d);
                st.screen.process(&d);
                let end = st.ring.end();
                drop(st);
                term.output.send_replace(end);
            }
            Ok(ProcessEventMessage {
                event: ProcessEvent::End(e),
            }) => {
                exit = Some(TerminalExit {
                    exit_code: crate::commands::exit_code_of(&e),
                    status: e.status,
                });
            }
            Ok(_) => {}
            Err(e) if exit.is_some() => tracing::debug!(pid = term.pid, "terminal stream: {e}"),
            Err(e) => {
                exit = Some(TerminalExit {
                    exit_code: -1,
                    status: format!("lost the terminal's process: {e}"),
                })
            }
        }
    }
    let exit = exit.unwrap_or(TerminalExit {
        exit_code: -1,
        status: "the terminal's output stream ended".into(),
    });
    let mut st = term.state.lock();
    st.exit = Some(exit.clone());
    st.ended_at = Some(Instant::now());
    let end = st.ring.end();
    drop(st);
    let _ = term.control.send(Control::Exit {
        exit_code: exit.exit_code,
        status: exit.status,
    });
    term.output.send_replace(end);
    tracing::debug!(sandbox = %term.sandbox, terminal = %term.id, "terminal ended");
}
