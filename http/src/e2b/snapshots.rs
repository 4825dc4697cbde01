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
use coppice_tools::snapshots::CreateSnapshot;
use serde::Deserialize;
use serde_json::{Value, json};

use super::E2bState;
use super::error::{E2bError, bad};
use super::wire::optional_body;

type St = State<Arc<E2bState>>;

#[derive(Debug, Default, Deserialize)]
struct SnapshotBody {
    name: Option<String>,
    /// true: memory and files (E2B's "full"); false: files only. Absent: E2B's default, a
    /// full snapshot, where the host has CRIU, else files only (true fails clearly there).
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
                kind: Some(
                    match b
                        .memory
                        .unwrap_or_else(|| s.tools.memory_snapshot_support().available)
                    {
                        true => SnapshotKind::Memory,
                        false => SnapshotKind::Filesystem,
                    },
                ),
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
