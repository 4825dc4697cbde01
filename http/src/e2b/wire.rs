//! E2B's JSON objects: `Sandbox`, `ListedSandbox`, metrics, and optional request bodies.

use coppice_runtime::Error;
use coppice_runtime::clock::rfc3339_ms;
use coppice_runtime::model::SandboxMetrics;
use coppice_runtime::model::{SandboxInfo, SandboxState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::ENVD_VERSION;
use super::error::{E2bError, bad};

pub(super) fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty_json),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The `Sandbox` object of create/connect/resume.
pub(super) fn sandbox_json(s: &E2bState, info: &SandboxInfo) -> Result<Value, Error> {
    let mut v = json!({
        "templateID": info.template,
        "sandboxID": info.id,
        "clientID": "coppice",
        "envdVersion": ENVD_VERSION,
        "trafficAccessToken": s.tools.ingress(&info.id)?.traffic_token,
        "domain": s.opts.domain,
    });
    if let Some(token) = s.tools.access_token(&info.id)? {
        v["envdAccessToken"] = json!(token);
    }
    Ok(v)
}

pub(super) fn state_str(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Paused => "paused",
        _ => "running",
    }
}

/// `ListedSandbox` (and the common part of `SandboxDetail`).
pub(super) fn listed_json(info: &SandboxInfo) -> Value {
    json!({
        "templateID": info.template,
        "sandboxID": info.id,
        "clientID": "coppice",
        "startedAt": info.created_at,
        "endAt": info.expires_at,
        "cpuCount": info.limits.cpus.map_or(1, |c| (c.ceil() as i64).max(1)),
        "memoryMB": info.limits.memory_bytes.map_or(0, |m| m >> 20),
        "diskSizeMB": 0,
        "state": state_str(info.state),
        "envdVersion": ENVD_VERSION,
        "metadata": info.metadata,
    })
}

/// Optional JSON body: absent or empty means all defaults.
pub(super) fn optional_body<T: for<'de> Deserialize<'de> + Default>(
    raw: &[u8],
) -> Result<T, E2bError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

pub(super) fn metric_json(m: &SandboxMetrics) -> Value {
    json!({
        "timestamp": rfc3339_ms(m.at_ms),
        "timestampUnix": m.at_ms / 1000,
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    })
}
