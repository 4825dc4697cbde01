//! Running commands in a sandbox, with output streamed as it comes.

use std::collections::BTreeMap;

use coppice_envd::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessEventMessage, StartRequest,
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Tools};

/// Run `cmd` (argv, no shell) in a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds (none = no limit).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// One event of a running command; output bytes travel as base64 in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Start {
        pid: u32,
    },
    Stdout {
        #[serde(with = "coppice_envd::wire::b64")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "coppice_envd::wire::b64")]
        data: Vec<u8>,
    },
    Exit {
        exit_code: i32,
        status: String,
        error: Option<String>,
    },
}

impl Tools {
    /// Starts a command; the stream yields its events until it exits.
    pub async fn exec(
        &self,
        id: &str,
        req: Exec,
    ) -> Result<impl Stream<Item = Result<ExecEvent>> + Send + 'static + use<>> {
        let (cmd, args) = req
            .cmd
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("cmd must name a program".into()))?;
        let agent = self.rt.agent(id)?;
        let start = StartRequest {
            process: ProcessConfig {
                cmd: cmd.clone(),
                args: args.to_vec(),
                envs: req.env,
                cwd: req.cwd,
            },
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let timeout_ms = req.timeout_secs.map(|s| (s * 1000.0).max(1.0) as u64);
        let user = req.user.unwrap_or_default();
        let stream = agent
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &start,
                timeout_ms,
                &user,
            )
            .await?;
        Ok(stream.filter_map(|msg| async move {
            match msg {
                Err(e) => Some(Err(Error::from(e))),
                Ok(ProcessEventMessage { event }) => match event {
                    ProcessEvent::Start { pid } => Some(Ok(ExecEvent::Start { pid })),
                    ProcessEvent::Data(DataEvent::Stdout(data))
                    | ProcessEvent::Data(DataEvent::Pty(data)) => {
                        Some(Ok(ExecEvent::Stdout { data }))
                    }
                    ProcessEvent::Data(DataEvent::Stderr(data)) => {
                        Some(Ok(ExecEvent::Stderr { data }))
                    }
                    ProcessEvent::End(end) => Some(Ok(ExecEvent::Exit {
                        exit_code: end.exit_code,
                        status: end.status,
                        error: end.error,
                    })),
                    ProcessEvent::Keepalive {} => None,
                },
            }
        }))
    }
}
