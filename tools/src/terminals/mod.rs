//! Collaborative terminals: PTY processes the sandbox's agent owns, brokered by the daemon to
//! many clients at once (WebSocket, MCP, CLI) with a replay ring, reconnect by output offset,
//! writer and viewer tokens, the smallest-writer size rule and a screen model an agent can read.
//! The wire protocol is in docs/terminals.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use coppice_envd::process::{ConnectRequest, ListRequest};
use coppice_envd::process::{
    ListResponse, ProcessConfig, ProcessEventMessage, ProcessSelector, Pty, PtySize, StartRequest,
};
use serde::{Deserialize, Serialize};

use crate::commands::first_pid;
use crate::{Error, Result, Tools};

mod input;
mod keys;
mod requests;
mod ring;
mod size;
mod terminal;
mod tokens;
mod wait;

pub use keys::key_bytes;
pub use requests::{OpenTerminal, ReadMode, ReadTerminal, SendToTerminal, WaitForTerminal};
pub use ring::Slice;
pub use terminal::{
    Attachment, ClientView, Control, Role, ScreenText, Size, Terminal, TerminalExit,
};
pub use wait::{OutputText, TerminalRead, WaitMatch};

/// Output a terminal's ring keeps for replay and reconnects by default.
pub const DEFAULT_RING_BYTES: usize = 1 << 20;
/// Size of a terminal opened without one.
pub const DEFAULT_SIZE: Size = Size { cols: 80, rows: 24 };
/// Agent process tag marking a PTY as a Coppice terminal (so a restarted daemon adopts it).
const TAG_PREFIX: &str = "coppice-terminal:";
/// Ended terminals stay readable this long.
const ENDED_TTL: Duration = Duration::from_secs(600);

/// A terminal as listed.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TerminalInfo {
    /// Terminal id (unique on this daemon).
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// The PTY process's pid inside the sandbox.
    pub pid: u32,
    /// What it runs ("login shell" by default).
    pub cmd: String,
    /// Its size now.
    pub cols: u16,
    /// Its size now.
    pub rows: u16,
    /// True until its process ends.
    pub running: bool,
    /// How it ended, once it has.
    pub exit: Option<TerminalExit>,
    /// Clients attached over WebSocket now.
    pub clients: Vec<ClientView>,
    /// Total output so far (the offset the next byte will have).
    pub output_offset: u64,
    /// Oldest output offset still in the replay ring.
    pub ring_start: u64,
    /// Unix milliseconds when it was opened (or adopted by a restarted daemon).
    pub created_at_ms: i64,
}

/// A link to a terminal for someone else.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TerminalShare {
    /// What the token allows.
    pub role: Role,
    /// The token (`?token=` on the page and the WebSocket).
    pub token: String,
    /// The web page on the daemon's TCP listener.
    pub url: String,
    /// The web page, relative to the daemon's HTTP address.
    pub page_path: String,
    /// The WebSocket, relative to the daemon's HTTP address.
    pub ws_path: String,
}

/// Terminals by id.
#[derive(Default)]
pub(crate) struct Registry {
    terminals: parking_lot::Mutex<HashMap<String, Arc<Terminal>>>,
    /// Held while adopting, so two listings at once never broker one PTY twice.
    adopting: tokio::sync::Mutex<()>,
}

impl Registry {
    fn prune(&self) {
        self.terminals
            .lock()
            .retain(|_, t| t.ended_at().is_none_or(|at| at.elapsed() < ENDED_TTL));
    }
}

fn info_of(t: &Terminal) -> TerminalInfo {
    let size = t.size();
    let (ring_start, output_offset) = t.offsets();
    let exit = t.exit();
    TerminalInfo {
        id: t.id.clone(),
        sandbox_id: t.sandbox.clone(),
        pid: t.pid,
        cmd: t.cmd.clone(),
        cols: size.cols,
        rows: size.rows,
        running: exit.is_none(),
        exit,
        clients: t.clients(),
        output_offset,
        ring_start,
        created_at_ms: t.created_at_ms,
    }
}

/// The default program: the user's login shell from the sandbox's passwd, as a login shell.
const LOGIN_SHELL: &str =
    r#"s=$(getent passwd "$(id -un)" | cut -d: -f7); exec "${s:-/bin/sh}" -l"#;

impl Tools {
    /// Opens a terminal: a PTY process in the sandbox (the user's login shell by default).
    pub async fn open_terminal(&self, id: &str, req: OpenTerminal) -> Result<TerminalInfo> {
        let size = Size::checked(
            req.cols.unwrap_or(DEFAULT_SIZE.cols),
            req.rows.unwrap_or(DEFAULT_SIZE.rows),
        )?;
        let agent = self.rt.agent(id)?;
        let tid = format!("term-{}", coppice_runtime::ids::random_alnum(12));
        let (cmd, shown) = match req.cmd.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => (c.to_string(), c.to_string()),
            _ => (LOGIN_SHELL.to_string(), "login shell".to_string()),
        };
        let mut envs = BTreeMap::from([
            ("TERM".to_string(), "xterm-256color".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("COLORTERM".to_string(), "truecolor".to_string()),
        ]);
        envs.extend(req.env);
        let start = StartRequest {
            process: ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), cmd],
                envs,
                cwd: req.cwd,
            },
            pty: Some(Pty {
                size: Some(PtySize {
                    cols: size.cols.into(),
                    rows: size.rows.into(),
                }),
            }),
            tag: Some(format!("{TAG_PREFIX}{tid}")),
            stdin: Some(true),
        };
        let mut events = agent
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &start,
                None,
                req.user.as_deref().unwrap_or_default(),
            )
            .await?;
        let pid = first_pid(&mut events).await?;
        let ring = self.terminal_ring_bytes;
        let term = Terminal::start(
            (tid.clone(), id.into(), pid, shown),
            size,
            ring,
            agent,
            events,
        );
        self.terminals.prune();
        self.terminals.terminals.lock().insert(tid, term.clone());
        Ok(info_of(&term))
    }

    /// Adopts the sandbox's PTY processes that no terminal brokers: Coppice terminals a
    /// restarted daemon finds still running (tagged, so their ids and tokens stay), and PTYs
    /// opened through E2B's `commands.pty` (id `pty-{sandbox}-{pid}`). Output they printed
    /// while none was brokered is not in the ring.
    pub async fn adopt_terminals(&self, id: &str) -> Result<usize> {
        let agent = self.rt.agent(id)?;
        let _one_at_a_time = self.terminals.adopting.lock().await;
        let listed: ListResponse = agent
            .unary("process.Process/List", &ListRequest { pty_sizes: true })
            .await?;
        let mut adopted = 0;
        for p in listed.processes {
            let Some(pty) = p.pty_size else { continue };
            let tid = match p.tag.as_deref().and_then(|t| t.strip_prefix(TAG_PREFIX)) {
                Some(tid) => tid.to_string(),
                None => format!("pty-{id}-{}", p.pid),
            };
            if self.terminals.terminals.lock().contains_key(&tid) {
                continue;
            }
            let mut events = agent
                .server_stream::<_, ProcessEventMessage>(
                    "process.Process/Connect",
                    &ConnectRequest {
                        process: ProcessSelector::Pid(p.pid),
                    },
                    None,
                )
                .await?;
            let pid = first_pid(&mut events).await?;
            let shown = match p.config.args.as_slice() {
                [_, c] if c == LOGIN_SHELL => "login shell".to_string(),
                [_, c] if p.config.cmd == "/bin/sh" => c.clone(),
                args => std::iter::once(p.config.cmd.as_str())
                    .chain(args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let size = Size::checked(pty.cols as u16, pty.rows as u16).unwrap_or(DEFAULT_SIZE);
            let ring = self.terminal_ring_bytes;
            let meta = (tid.clone(), id.to_string(), pid, shown);
            let term = Terminal::start(meta, size, ring, agent.clone(), events);
            self.terminals.terminals.lock().insert(tid, term);
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Adopts the tagged terminals of every running sandbox (at daemon start); failures are
    /// logged, never fatal.
    pub async fn adopt_all_terminals(&self) {
        let Ok(sandboxes) = self.rt.list() else {
            return;
        };
        for sb in sandboxes
            .into_iter()
            .filter(|s| s.state == coppice_runtime::model::SandboxState::Running)
        {
            match self.adopt_terminals(&sb.id).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sandbox = %sb.id, "adopted {n} running terminal(s)"),
                Err(e) => tracing::warn!(sandbox = %sb.id, "adopting its terminals: {e}"),
            }
        }
    }

    /// The terminal `tid` of sandbox `id`.
    pub fn terminal(&self, id: &str, tid: &str) -> Result<Arc<Terminal>> {
        self.rt.check_visible(id)?;
        self.terminals
            .terminals
            .lock()
            .get(tid)
            .filter(|t| t.sandbox == id)
            .cloned()
            .ok_or_else(|| Error::TerminalNotFound {
                sandbox: id.into(),
                terminal: tid.into(),
            })
    }

    /// The terminal `tid`, whichever sandbox it is in.
    pub fn find_terminal(&self, tid: &str) -> Option<Arc<Terminal>> {
        self.terminals.terminals.lock().get(tid).cloned()
    }

    /// The sandbox's terminals, oldest first (ended ones stay listed for ten minutes), PTYs
    /// opened through E2B included.
    pub async fn list_terminals(&self, id: &str) -> Result<Vec<TerminalInfo>> {
        self.rt.check_visible(id)?;
        // A paused sandbox's agent does not answer: list what is brokered already.
        if let Err(e) = self.adopt_terminals(id).await {
            tracing::debug!(sandbox = id, "adopting PTYs: {e}");
        }
        self.terminals.prune();
        let mut out: Vec<TerminalInfo> = self
            .terminals
            .terminals
            .lock()
            .values()
            .filter(|t| t.sandbox == id)
            .map(|t| info_of(t))
            .collect();
        out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One terminal's state.
    pub fn terminal_info(&self, id: &str, tid: &str) -> Result<TerminalInfo> {
        Ok(info_of(&*self.terminal(id, tid)?))
    }

    /// Sets the terminal's size (used while no WebSocket writer gives a smaller one).
    pub fn resize_terminal(
        &self,
        id: &str,
        tid: &str,
        cols: u16,
        rows: u16,
    ) -> Result<TerminalInfo> {
        let t = self.terminal(id, tid)?;
        if t.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "terminal '{tid}' has ended"
            )));
        }
        t.set_base_size(Size::checked(cols, rows)?);
        Ok(info_of(&t))
    }

    /// Kills the terminal's process group (SIGKILL); the terminal then shows as ended.
    pub async fn kill_terminal(&self, id: &str, tid: &str) -> Result<()> {
        let t = self.terminal(id, tid)?;
        if t.exit().is_none() {
            match self
                .signal_process(id, t.pid, crate::commands::Signal::Sigkill)
                .await
            {
                Err(Error::Agent(e)) if e.code == coppice_envd::Code::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Types text and named keys into the terminal, in that order.
    pub async fn send_to_terminal(&self, id: &str, tid: &str, req: SendToTerminal) -> Result<()> {
        let t = self.terminal(id, tid)?;
        let mut bytes = req.text.unwrap_or_default().into_bytes();
        let app_cursor = t.application_cursor();
        for k in &req.keys {
            bytes.extend(key_bytes(k, app_cursor)?);
        }
        if bytes.is_empty() {
            return Err(Error::InvalidArgument("give text or keys to send".into()));
        }
        t.write(bytes).await
    }

    /// A link (page and WebSocket paths with a token) for a writer or a viewer.
    pub fn share_terminal(&self, id: &str, tid: &str, role: Role) -> Result<TerminalShare> {
        let t = self.terminal(id, tid)?;
        let token = tokens::derive(&self.terminal_secret, &t.sandbox, &t.id, role);
        let listen = &self.rt.config().listener.listen;
        Ok(TerminalShare {
            role,
            url: format!("http://{listen}/terminals/{tid}?token={token}"),
            page_path: format!("/terminals/{tid}?token={token}"),
            ws_path: format!("/api/v1/sandboxes/{id}/terminals/{tid}/ws?token={token}"),
            token,
        })
    }

    /// The terminal and role a share token grants; `None` for a wrong token or terminal.
    pub fn terminal_by_token(&self, tid: &str, token: &str) -> Option<(Arc<Terminal>, Role)> {
        let t = self.terminals.terminals.lock().get(tid).cloned()?;
        let role = [Role::Writer, Role::Viewer].into_iter().find(|r| {
            tokens::equal(
                &tokens::derive(&self.terminal_secret, &t.sandbox, &t.id, *r),
                token,
            )
        })?;
        Some((t, role))
    }
}
