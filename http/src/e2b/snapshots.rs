//! E2B snapshots, fork and network updates (reference §1.3 rows for `/snapshots`,
//! `/sandboxes/{id}/snapshots`, `/sandboxes/{id}/fork`, `/sandboxes/{id}/network`,
//! `DELETE /templates/{snapshotID}`): thin handlers over `coppice_tools::snapshots` and
//! `coppice_tools::network`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use coppice_runtime::Error;
use coppice_runtime::manager::snapshots::{SnapshotInfo, SnapshotKind};
use coppice_runtime::model::SandboxInfo;
use coppice_runtime::policy::NetworkPolicy;
use coppice_tools::network::e2b_network_policy;
use coppice_tools::snapshots::{CreateSnapshot, ForkSandbox};
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::control::{E2bError, bad, new_token, optional_body, sandbox_json};

type St = State<Arc<E2bState>>;

/// E2B's fork count range (the SDK checks it too).
const MAX_E2B_FORKS: u32 = 20;

// ---------------------------------------------------------------- snapshots

#[derive(Debug, Default, Deserialize)]
struct SnapshotBody {
    name: Option<String>,
    /// true: memory and files (E2B's "full"); false or absent: files only. Coppice's default
    /// is files only; memory needs CRIU and fails clearly without it.
    memory: Option<bool>,
}

fn snapshot_json(s: &SnapshotInfo) -> Value {
    json!({ "snapshotID": s.snapshot_id, "names": s.name.iter().collect::<Vec<_>>() })
}

pub(super) async fn create_snapshot(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: SnapshotBody = optional_body(&raw)?;
    let info = s
        .tools
        .create_snapshot(
            &id,
            CreateSnapshot {
                name: b.name,
                kind: Some(if b.memory == Some(true) {
                    SnapshotKind::Memory
                } else {
                    SnapshotKind::Filesystem
                }),
                metadata: BTreeMap::new(),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&info))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// Snapshots the user took, oldest first, paged by a cursor (the last snapshot id). Implicit
/// snapshots (made by a fork of a live sandbox, removed with their last fork) are not listed.
pub(super) async fn list_snapshots(
    State(s): St,
    Query(q): Query<SnapshotQuery>,
) -> Result<Response, E2bError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit must be between 1 and 100"));
    }
    // E2B names may be tag-qualified ("name:tag"); Coppice snapshots have no tags.
    let name = q
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(|n| n.split_once(':').map_or(n, |(base, _)| base));
    let all: Vec<SnapshotInfo> = s
        .tools
        .list_snapshots(q.sandbox_id.as_deref().filter(|i| !i.is_empty()))?
        .into_iter()
        .filter(|i| !i.implicit)
        .filter(|i| name.is_none_or(|n| i.snapshot_id == n || i.name.as_deref() == Some(n)))
        .collect();
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => all
            .iter()
            .position(|i| i.snapshot_id == t)
            .map(|p| p + 1)
            .ok_or_else(|| bad("invalid nextToken (that snapshot is gone): list again"))?,
        None => 0,
    };
    let page: Vec<&SnapshotInfo> = all.iter().skip(start).take(limit).collect();
    let mut resp = Json(page.iter().map(|i| snapshot_json(i)).collect::<Vec<_>>()).into_response();
    if start + page.len() < all.len()
        && let Some(last) = page.last()
        && let Ok(v) = HeaderValue::from_str(&last.snapshot_id)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `DELETE /templates/{id}`: the SDK's `delete_snapshot`. Only snapshots are deletable here;
/// anything else is a 404 (the SDK then returns False).
pub(super) async fn delete_snapshot(
    State(s): St,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let info = match s.tools.snapshot_info(&id) {
        Ok(i) => i,
        Err(Error::SnapshotNotFound(_)) => {
            return Err(E2bError(
                StatusCode::NOT_FOUND,
                format!(
                    "snapshot '{id}' not found (deleting templates is not supported through \
                     the E2B API)"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    s.tools.delete_snapshot(&info.snapshot_id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- fork

#[derive(Debug, Default, Deserialize)]
struct ForkBody {
    timeout: Option<u64>,
    count: Option<u32>,
}

/// A fork's `Sandbox` JSON, the same as create's: a fresh envd access token when asked for
/// (the SDK sends it as `X-Access-Token`). On failure the fork is killed.
pub(super) async fn finish_fork(
    s: &E2bState,
    info: &SandboxInfo,
    secure: bool,
) -> Result<Value, Error> {
    let setup = async {
        if secure {
            s.tools.set_access_token(&info.id, &new_token()).await?;
        } else {
            s.tools.runtime().set_open_traffic(&info.id)?;
        }
        sandbox_json(s, info)
    };
    match setup.await {
        Ok(mut v) => {
            v["alias"] = json!(info.template);
            Ok(v)
        }
        Err(e) => {
            let _ = s.tools.kill_sandbox(&info.id).await;
            Err(e)
        }
    }
}

pub(super) async fn fork(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: ForkBody = optional_body(&raw)?;
    if b.count.is_some_and(|c| !(1..=MAX_E2B_FORKS).contains(&c)) {
        return Err(bad(format!("count must be between 1 and {MAX_E2B_FORKS}")));
    }
    if b.timeout == Some(0) {
        return Err(bad("timeout must be at least 1 second"));
    }
    // Forks are secured like their source: a token when the source has one.
    let secure = s.tools.access_token(&id)?.is_some();
    let result = s
        .tools
        .fork_sandbox(ForkSandbox {
            sandbox_id: Some(id),
            count: b.count,
            timeout_secs: b.timeout.map(|t| t as f64),
            ..Default::default()
        })
        .await?;
    let mut out = Vec::with_capacity(result.forks.len());
    for f in &result.forks {
        let item = match (&f.sandbox, &f.error) {
            (Some(info), _) => match finish_fork(&s, info, secure).await {
                Ok(v) => json!({ "sandbox": v }),
                Err(e) => {
                    let E2bError(code, message) = e.into();
                    json!({ "error": { "code": code.as_u16(), "message": message } })
                }
            },
            (None, err) => json!({ "error": {
                "code": 500,
                "message": err.clone().unwrap_or_else(|| "the fork failed to start".into()),
            }}),
        };
        out.push(item);
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

// ---------------------------------------------------------------- network

/// E2B's network object at create time (`SandboxNetworkConfig`) and in `PUT .../network`
/// (`SandboxNetworkUpdateConfig`). IP/CIDR egress rules and allowOut domain names are honoured; every other
/// field is refused when set rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct E2bNetwork {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
    /// Update body only (at create it is a top-level field).
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A domain rather than an IP address or CIDR block: the policy's one test, which also takes
/// `*` patterns and internationalized names (so they get the domain checker's precise error,
/// not "not a CIDR").
use coppice_runtime::policy::looks_like_domain as is_domain;

impl E2bNetwork {
    /// Refuses what this server cannot honour: domain names in denyOut, proxies, transform rules, ...
    fn check(&self) -> Result<(), E2bError> {
        if let Some((k, _)) = self
            .other
            .iter()
            .find(|(k, v)| !super::control::is_empty_json(v) && !is_default(k, v))
        {
            return Err(bad(format!(
                "network.{k} is not supported by this Coppice daemon (only allowOut, denyOut \
                 and allow_internet_access are)"
            )));
        }
        // Domain names in allowOut become the policy's `domains`; E2B takes them nowhere else.
        if let Some(d) = self.deny_out.iter().find(|e| is_domain(e)) {
            return Err(bad(format!(
                "denyOut: '{d}' is a domain name; denyOut takes IP addresses and CIDR blocks \
                 (name the allowed domains in allowOut with denyOut [\"0.0.0.0/0\"] instead)"
            )));
        }
        Ok(())
    }

    /// The policy these fields mean (at create, `allow_internet_access` is the top-level
    /// field).
    pub(super) fn policy(
        &self,
        allow_internet_access: Option<bool>,
    ) -> Result<NetworkPolicy, E2bError> {
        self.check()?;
        Ok(e2b_network_policy(
            self.allow_internet_access.or(allow_internet_access),
            &self.allow_out,
            &self.deny_out,
        )?)
    }
}

/// Fields harmless to accept: E2B's defaults, and `dnsServers` (sandboxes always resolve
/// through Coppice's own resolver, which enforces domain rules).
fn is_default(key: &str, v: &Value) -> bool {
    matches!(
        (key, v),
        ("allowPublicTraffic", Value::Bool(true)) | ("dnsServers", _)
    )
}

pub(super) async fn update_network(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: E2bNetwork = optional_body(&raw)?;
    b.check()?;
    s.tools
        .set_network_e2b(&id, b.allow_internet_access, &b.allow_out, &b.deny_out)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_told_apart_from_addresses() {
        assert!(is_domain("example.com"));
        assert!(is_domain("*.example.com"));
        assert!(!is_domain("8.8.8.8"));
        assert!(!is_domain("10.0.0.0/8"));
        assert!(!is_domain("fe80::1"));
        assert!(!is_domain("2001:db8::/32"));
    }

    #[test]
    fn network_fields_map_or_are_refused() {
        let n: E2bNetwork = serde_json::from_str(r#"{"denyOut":["example.com"]}"#).unwrap();
        assert!(n.policy(None).is_err());
        let n: E2bNetwork = serde_json::from_str(
            r#"{"allowOut":["example.com","*.pypi.org"],"denyOut":["0.0.0.0/0"]}"#,
        )
        .unwrap();
        assert_eq!(
            n.policy(None).unwrap().domains,
            vec!["example.com", "*.pypi.org"]
        );
        let n: E2bNetwork = serde_json::from_str(r#"{"egressProxy":{"address":"x"}}"#).unwrap();
        assert!(n.policy(None).is_err());
        let n: E2bNetwork = serde_json::from_str(r#"{"allowPublicTraffic":true}"#).unwrap();
        assert_eq!(n.policy(None).unwrap(), NetworkPolicy::default());
        let n: E2bNetwork = serde_json::from_str(r#"{}"#).unwrap();
        assert!(n.policy(Some(false)).unwrap().air_gapped);
        let n: E2bNetwork =
            serde_json::from_str(r#"{"denyOut":["0.0.0.0/0"],"allowOut":["1.1.1.1"]}"#).unwrap();
        let p = n.policy(None).unwrap();
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.deny.len(), 1);
    }
}
