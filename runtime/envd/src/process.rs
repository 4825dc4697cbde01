//! `process.Process` messages in protobuf-JSON form (lowerCamelCase, defaults omitted,
//! bytes as base64, enums by name). Field set follows envd's `process.proto`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{b64, is_false, is_zero_i32};

pub const SERVICE: &str = "process.Process";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(default)]
    pub cols: u32,
    #[serde(default)]
    pub rows: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// Selects a process by pid or by tag (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    pub process: ProcessConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When false the child's stdin is closed at once (E2B `stdin=False`). Absent = open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// Input for a process: bytes for its stdin pipe or its PTY (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    #[serde(rename = "SIGNAL_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "SIGNAL_SIGTERM")]
    Sigterm,
    #[serde(rename = "SIGNAL_SIGKILL")]
    Sigkill,
}

impl Signal {
    pub fn number(self) -> Option<i32> {
        match self {
            Signal::Unspecified => None,
            Signal::Sigterm => Some(15),
            Signal::Sigkill => Some(9),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(deserialize_with = "crate::wire::signal_by_name_or_number")]
    pub signal: Signal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// Client-streaming `StreamInput` request messages (a oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start { process: ProcessSelector },
    Data { input: ProcessInput },
    Keepalive {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(#[serde(with = "b64")] Vec<u8>),
    Stderr(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start { pid: u32 },
    Data(DataEvent),
    End(EndEvent),
    Keepalive {},
}

/// Both `StartResponse` and `ConnectResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEventMessage {
    pub event: ProcessEvent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

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
