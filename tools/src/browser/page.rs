//! One tab: its CDP session and what its events told us (console messages, requests, an open
//! dialog or file chooser, a crash, loads), the refs of its snapshots, and waiting for its
//! loads to finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use super::cdp::{Cdp, CdpError, Event};
use super::protocol as p;
use super::snapshot::{self, Refs, Scope};
use crate::{Error, Result};

/// What a call on a crashed tab answers.
pub const CRASHED: &str = "the page crashed: navigate to load it again, or open another tab";

/// Most console messages and requests kept per tab (the oldest go first).
const KEEP: usize = 1000;

#[derive(Debug, Clone)]
pub struct ConsoleMessage {
    /// "error", "warning", "info" or "debug".
    pub level: &'static str,
    pub text: String,
    pub location: Option<String>,
    /// Which load of the page it came in.
    pub load: u64,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub url: String,
    pub resource: String,
    pub status: Option<i64>,
    pub status_text: String,
    pub failure: Option<String>,
    pub load: u64,
}

#[derive(Debug, Clone)]
pub struct Dialog {
    pub kind: String,
    pub message: String,
}

#[derive(Default)]
pub struct PageState {
    pub refs: Refs,
    pub console: Vec<ConsoleMessage>,
    pub requests: Vec<Request>,
    pub dialog: Option<Dialog>,
    /// The file input of an open file chooser (backend node id).
    pub file_chooser: Option<i64>,
    pub crashed: bool,
    /// Main-frame navigations started (each a new document).
    pub load: u64,
    /// A main-frame load is in progress.
    pub loading: bool,
    /// Data of a drag the page started (`Input.dragIntercepted`).
    pub drag: Option<Value>,
    /// Where the mouse is, for the coordinate tools.
    pub mouse: (f64, f64),
    /// Buttons held down (CDP's bit mask), which mouse moves carry.
    pub buttons: u32,
}

pub struct Page {
    pub target_id: String,
    pub session_id: String,
    pub state: Mutex<PageState>,
    changed: Notify,
}

impl Page {
    /// Attaches to `target_id` and turns on the events the tools read.
    pub async fn attach(cdp: &Cdp, target_id: &str) -> Result<Arc<Page>> {
        let attached = cdp
            .call(
                None,
                &p::AttachToTarget {
                    target_id: target_id.into(),
                    flatten: true,
                },
            )
            .await
            .map_err(cdp_error)?;
        let page = Arc::new(Page {
            target_id: target_id.into(),
            session_id: attached.session_id,
            state: Mutex::new(PageState::default()),
            changed: Notify::new(),
        });
        let s = Some(page.session_id.as_str());
        let enable = async {
            cdp.call(s, &p::PageEnable {}).await?;
            cdp.call(s, &p::RuntimeEnable {}).await?;
            cdp.call(s, &p::NetworkEnable {}).await?;
            cdp.call(s, &p::DomEnable {}).await?;
            cdp.call(s, &p::LogEnable {}).await?;
            cdp.call(s, &p::SetInterceptFileChooserDialog { enabled: true })
                .await?;
            Ok::<_, CdpError>(())
        };
        enable.await.map_err(cdp_error)?;
        Ok(page)
    }

    pub fn session(&self) -> Option<&str> {
        Some(self.session_id.as_str())
    }

    /// Folds one of this tab's events into its state.
    pub fn on_event(&self, e: &Event) {
        let mut st = self.state.lock();
        let params = &e.params;
        let str_of =
            |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match e.method.as_str() {
            "Page.frameStartedLoading" if str_of(params, "frameId") == self.target_id => {
                st.loading = true;
            }
            "Page.frameNavigated"
                if params["frame"].get("parentId").is_none()
                    && str_of(&params["frame"], "id") == self.target_id =>
            {
                st.load += 1;
                st.crashed = false;
            }
            "Page.loadEventFired" => st.loading = false,
            "Page.frameStoppedLoading" if str_of(params, "frameId") == self.target_id => {
                st.loading = false;
            }
            "Page.javascriptDialogOpening" => {
                st.dialog = Some(Dialog {
                    kind: str_of(params, "type"),
                    message: str_of(params, "message"),
                });
            }
            "Page.javascriptDialogClosed" => st.dialog = None,
            "Page.fileChooserOpened" => {
                st.file_chooser = params.get("backendNodeId").and_then(Value::as_i64);
            }
            "Input.dragIntercepted" => st.drag = params.get("data").cloned(),
            // (The browser's Target.targetCrashed repeats it, later: only this one counts, or
            // a navigation that reloads the tab could be marked crashed by the echo.)
            "Inspector.targetCrashed" => {
                st.crashed = true;
                st.loading = false;
            }
            "Runtime.consoleAPICalled" => {
                let level = match params["type"].as_str().unwrap_or("log") {
                    "error" | "assert" => "error",
                    "warning" => "warning",
                    "debug" => "debug",
                    _ => "info",
                };
                let text = params["args"]
                    .as_array()
                    .map(|args| args.iter().map(remote_text).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let frame = &params["stackTrace"]["callFrames"][0];
                let location = frame
                    .get("url")
                    .and_then(Value::as_str)
                    .map(|u| format!("{u}:{}", frame["lineNumber"].as_i64().unwrap_or(0) + 1));
                let load = st.load;
                push_capped(
                    &mut st.console,
                    ConsoleMessage {
                        level,
                        text,
                        location,
                        load,
                    },
                );
            }
            "Runtime.exceptionThrown" => {
                let d = &params["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("exception")
                    .to_string();
                let load = st.load;
                push_capped(
                    &mut st.console,
                    ConsoleMessage {
                        level: "error",
                        text,
                        location: d.get("url").and_then(Value::as_str).map(str::to_string),
                        load,
                    },
                );
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                let level = match entry["level"].as_str().unwrap_or("info") {
                    "error" => "error",
                    "warning" => "warning",
                    "verbose" => "debug",
                    _ => "info",
                };
                let load = st.load;
                push_capped(
                    &mut st.console,
                    ConsoleMessage {
                        level,
                        text: str_of(entry, "text"),
                        location: entry.get("url").and_then(Value::as_str).map(str::to_string),
                        load,
                    },
                );
            }
            "Network.requestWillBeSent" => {
                // A new document's own request comes before its frameNavigated.
                let document = str_of(params, "type") == "Document"
                    && str_of(params, "frameId") == self.target_id;
                let load = st.load + u64::from(document);
                push_capped(
                    &mut st.requests,
                    Request {
                        id: str_of(params, "requestId"),
                        method: str_of(&params["request"], "method"),
                        url: str_of(&params["request"], "url"),
                        resource: str_of(params, "type"),
                        status: None,
                        status_text: String::new(),
                        failure: None,
                        load,
                    },
                );
            }
            "Network.responseReceived" => {
                let id = str_of(params, "requestId");
                if let Some(r) = st.requests.iter_mut().rev().find(|r| r.id == id) {
                    r.status = params["response"]["status"].as_i64();
                    r.status_text = str_of(&params["response"], "statusText");
                }
            }
            "Network.loadingFailed" => {
                let id = str_of(params, "requestId");
                if let Some(r) = st.requests.iter_mut().rev().find(|r| r.id == id) {
                    r.failure = Some(str_of(params, "errorText"));
                }
            }
            _ => return,
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for the state, or `limit` passes (false then).
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&PageState) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&self.state.lock()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Runs `call`, an input that may open a dialog: a dialog holds the page's thread, so
    /// the call would not be answered until someone handles it. Returns once either is done.
    pub async fn unless_dialog<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, CdpError>>,
    ) -> Result<()> {
        tokio::select! {
            r = call => r.map(|_| ()).map_err(cdp_error),
            _ = self.until_dialog() => Ok(()),
        }
    }

    /// Resolves when a dialog opens (never, if none does).
    pub async fn until_dialog(&self) {
        while !self
            .wait_until(Duration::from_secs(3600), |st| st.dialog.is_some())
            .await
        {}
    }

    /// After an action: a moment for what it started, then the load it started, if any, up to
    /// `limit` (playwright-mcp waits likewise, with a longer settle time).
    pub async fn settle(&self, limit: Duration) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.wait_until(limit, |st| !st.loading || st.dialog.is_some() || st.crashed)
            .await;
    }

    /// The accessibility snapshot; its refs become the ones actions resolve.
    pub async fn snapshot(&self, cdp: &Cdp, scope: Scope) -> Result<String> {
        self.usable()?;
        // A renderer that crashes meanwhile never answers: its crash ends the wait.
        let tree = tokio::select! {
            r = cdp.call(self.session(), &p::GetFullAxTree {}) => r.map_err(cdp_error)?,
            true = self.wait_until(super::cdp::CALL_TIMEOUT, |st| st.crashed) => {
                return self.usable().map(|_| String::new());
            }
        };
        let mut st = self.state.lock();
        Ok(snapshot::render(&tree.nodes, &mut st.refs, scope))
    }

    /// A crashed tab or one held by a dialog answers nothing that touches its document.
    pub fn usable(&self) -> Result<()> {
        let st = self.state.lock();
        if st.crashed {
            return Err(Error::FailedPrecondition(CRASHED.into()));
        }
        if let Some(d) = &st.dialog {
            return Err(Error::FailedPrecondition(format!(
                "a \"{}\" dialog is open (\"{}\"): answer it with browser_handle_dialog first",
                d.kind, d.message
            )));
        }
        Ok(())
    }

    /// The element a ref (or `#id`-free selector-less target) of the latest snapshot names.
    pub fn resolve(&self, target: &str) -> Result<i64> {
        let st = self.state.lock();
        st.refs.resolve(target.trim()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "Ref {target} not found in the current page snapshot. Try capturing new snapshot."
            ))
        })
    }
}

fn push_capped<T>(v: &mut Vec<T>, item: T) {
    if v.len() >= KEEP {
        v.remove(0);
    }
    v.push(item);
}

/// A console argument as text: its value when it has one, else its description.
fn remote_text(arg: &Value) -> String {
    match arg.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => arg
            .get("description")
            .or(arg.get("unserializableValue"))
            .and_then(Value::as_str)
            .unwrap_or("undefined")
            .to_string(),
    }
}

/// A CDP failure as the tool layer's error.
pub fn cdp_error(e: CdpError) -> Error {
    match e {
        CdpError::Closed => Error::Unavailable(
            "the browser's connection closed (it crashed or was closed); the next browser call \
             starts it again"
                .into(),
        ),
        CdpError::Timeout { .. } => Error::Unavailable(e.to_string()),
        CdpError::Protocol { message, .. } => {
            Error::FailedPrecondition(format!("browser: {message}"))
        }
        CdpError::Decode { .. } => Error::internal(e.to_string()),
    }
}
