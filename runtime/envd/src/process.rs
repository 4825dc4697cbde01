//! `process.Process` messages in protobuf-JSON form (lowerCamelCase, defaults omitted,
//! bytes as base64, enums by name). Field set follows envd's `process.proto`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::wire::{b64, is_false, is_zero_i32};

/// Connect service name of the process API, the path prefix of its RPCs.
pub const SERVICE: &str = "process.Process";

/// What to run: the command, its arguments, environment and working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    /// Program to execute.
    pub cmd: String,
    /// Arguments passed to the program (without `argv[0]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the process; they override the sandbox-wide env.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Working directory, resolved against the user's home; absent means the home itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Terminal size of a PTY, in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Width in columns.
    #[serde(default)]
    pub cols: u32,
    /// Height in rows.
    #[serde(default)]
    pub rows: u32,
}

/// Asks for the process to run on a pseudo-terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// Initial terminal size; absent leaves the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// Selects a process by pid or by tag (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    /// The process with this pid.
    Pid(u32),
    /// The process started with this tag.
    Tag(String),
}

/// Body of `Start`: run a new process and stream its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    /// What to run.
    pub process: ProcessConfig,
    /// Run on a PTY instead of stdin/stdout/stderr pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    /// Caller-chosen tag the process can later be selected by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When false the child's stdin is closed at once (E2B `stdin=False`). Absent = open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Body of `Connect`: attach to the event stream of a running process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// The process to attach to.
    pub process: ProcessSelector,
}

/// Body of `List`. E2B's has no fields; the daemon sets `ptySizes` to learn which processes
/// run on a PTY (to broker E2B PTYs as terminals) without changing what the SDKs see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRequest {
    /// Fill `ptySize` for PTY processes (a Coppice extension; absent in E2B's requests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pty_sizes: bool,
}

/// One running process as reported by `List`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    /// The config it was started with.
    pub config: ProcessConfig,
    /// Process id inside the sandbox.
    pub pid: u32,
    /// Tag given at start, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The PTY's size now, for PTY processes, when the request asked (`ptySizes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty_size: Option<PtySize>,
}

/// Reply to `List`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// The processes still running.
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// Input for a process: bytes for its stdin pipe or its PTY (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    /// Bytes written to the process's stdin pipe.
    Stdin(#[serde(with = "b64")] Vec<u8>),
    /// Bytes written to the process's PTY.
    Pty(#[serde(with = "b64")] Vec<u8>),
}

/// Body of `SendInput`: write one chunk of input to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    /// The process to write to.
    pub process: ProcessSelector,
    /// The bytes and where they go.
    pub input: ProcessInput,
}

/// Signal that `SendSignal` can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// No signal given; `SendSignal` rejects it as an invalid argument.
    #[serde(rename = "SIGNAL_UNSPECIFIED")]
    Unspecified,
    /// `SIGTERM`.
    #[serde(rename = "SIGNAL_SIGTERM")]
    Sigterm,
    /// `SIGKILL`.
    #[serde(rename = "SIGNAL_SIGKILL")]
    Sigkill,
}

impl Signal {
    /// The Linux signal number, or `None` for [`Signal::Unspecified`].
    pub fn number(self) -> Option<i32> {
        match self {
            Signal::Unspecified => None,
            Signal::Sigterm => Some(15),
            Signal::Sigkill => Some(9),
        }
    }
}

/// Body of `SendSignal`: signal a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    /// The process to signal.
    pub process: ProcessSelector,
    /// The signal, given by name or by number.
    #[serde(deserialize_with = "signal_by_name_or_number")]
    pub signal: Signal,
}

/// Body of `CloseStdin`: close a process's stdin pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    /// The process whose stdin is closed.
    pub process: ProcessSelector,
}

/// Body of `Update`: change a running process, today only its PTY size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The process to update.
    pub process: ProcessSelector,
    /// New PTY settings; absent changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// Client-streaming `StreamInput` request messages (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    /// First message: the process the stream writes to.
    Start {
        /// The process to write to.
        process: ProcessSelector,
    },
    /// A chunk of input for that process.
    Data {
        /// The bytes and where they go.
        input: ProcessInput,
    },
    /// Sent to keep the stream open; carries nothing.
    Keepalive {},
}

/// Output of a process, by the stream it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    /// Bytes the process wrote to stdout.
    Stdout(#[serde(with = "b64")] Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(#[serde(with = "b64")] Vec<u8>),
    /// Bytes the process wrote to its PTY.
    Pty(#[serde(with = "b64")] Vec<u8>),
}

/// How a process ended, as reported by envd (shaped after Go's `os.ProcessState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Exit code; -1 when the process was killed by a signal.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub exit_code: i32,
    /// Whether the process exited by itself rather than by a signal.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exited: bool,
    /// Go's `ProcessState.String()`, e.g. `exit status 0` or `signal: killed`.
    #[serde(default)]
    pub status: String,
    /// Set to the same text when the exit was not clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event in the stream of a started or connected process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    /// The process started.
    Start {
        /// Process id inside the sandbox.
        pid: u32,
    },
    /// Output from the process.
    Data(DataEvent),
    /// The process ended; the last event of the stream.
    End(EndEvent),
    /// Sent to keep the stream open; carries nothing.
    Keepalive {},
}

/// Both `StartResponse` and `ConnectResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEventMessage {
    /// The event.
    pub event: ProcessEvent,
}

/// Empty message, the reply of RPCs that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A signal may arrive as its name or as its number (protobuf JSON allows both).
fn signal_by_name_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => match s.as_str() {
            "SIGNAL_SIGTERM" => Signal::Sigterm,
            "SIGNAL_SIGKILL" => Signal::Sigkill,
            "SIGNAL_UNSPECIFIED" => Signal::Unspecified,
            other => return Err(serde::de::Error::custom(format!("unknown signal {other}"))),
        },
        Either::N(15) => Signal::Sigterm,
        Either::N(9) => Signal::Sigkill,
        Either::N(0) => Signal::Unspecified,
        Either::N(n) => return Err(serde::de::Error::custom(format!("unknown signal {n}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_start_request_parses() {
        let req: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"B"},"cwd":"/tmp"},"stdin":false}"#,
        )
        .unwrap();
        assert_eq!(req.process.args[2], "echo hi");
        assert_eq!(req.stdin, Some(false));
    }

    #[test]
    fn events_match_envd_wire_form() {
        let start = ProcessEventMessage {
            event: ProcessEvent::Start { pid: 1234 },
        };
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"event":{"start":{"pid":1234}}}"#
        );
        let data = ProcessEventMessage {
            event: ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec())),
        };
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        let end = ProcessEventMessage {
            event: ProcessEvent::End(EndEvent {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into(),
                error: None,
            }),
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#
        );
        let ka = ProcessEventMessage {
            event: ProcessEvent::Keepalive {},
        };
        assert_eq!(
            serde_json::to_string(&ka).unwrap(),
            r#"{"event":{"keepalive":{}}}"#
        );
    }

    #[test]
    fn signal_and_selectors() {
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":77},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!(r.process, ProcessSelector::Pid(77));
        assert_eq!(r.signal.number(), Some(9));
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"tag":"t"},"signal":15}"#).unwrap();
        assert_eq!(r.signal, Signal::Sigterm);
        let s: StreamInputRequest =
            serde_json::from_str(r#"{"data":{"input":{"stdin":"YQ=="}}}"#).unwrap();
        assert_eq!(
            s,
            StreamInputRequest::Data {
                input: ProcessInput::Stdin(b"a".to_vec())
            }
        );
    }
}
