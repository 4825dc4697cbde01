//! The shell form every command tool starts (`/bin/bash -lc CMD`, as E2B does), its timeout
//! and how its end reads as an exit code.

use std::collections::BTreeMap;

use coppice_envd::process::{ProcessConfig, StartRequest};

use crate::{Error, Result};

pub(super) fn shell_start(
    cmd: &str,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    stdin: bool,
) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), cmd.to_string()],
            envs: env,
            cwd,
        },
        pty: None,
        tag: None,
        stdin: Some(stdin),
    }
}

pub(super) fn timeout_ms(secs: Option<f64>) -> Result<Option<u64>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some((s * 1000.0).max(1.0) as u64)),
        Some(s) => Err(Error::InvalidArgument(format!(
            "timeout_secs must be a positive number of seconds, got {s}"
        ))),
    }
}

/// Exit code of an end event: the code, or -1 for a signal death.
pub(crate) fn exit_code_of(end: &coppice_envd::process::EndEvent) -> i32 {
    if end.status.starts_with("signal") && end.exit_code == 0 {
        -1
    } else {
        end.exit_code
    }
}
