//! Listing sandboxes with filters and cursor paging: the typed form of E2B's `GET
//! /v2/sandboxes` (and of any surface's filtered list).

use coppice_runtime::model::{SandboxInfo, SandboxState};

use crate::{Error, Result, Tools};

/// Which sandboxes, in which order, how many.
#[derive(Debug, Clone, Default)]
pub struct ListSandboxes {
    /// Only sandboxes in these states; none: any state.
    pub states: Option<Vec<SandboxState>>,
    /// Only sandboxes whose metadata holds every one of these pairs.
    pub metadata: Vec<(String, String)>,
    /// Only sandboxes from this template.
    pub template: Option<String>,
    /// Only sandboxes created at or after this time (Unix ms).
    pub started_after_ms: Option<i64>,
    /// Newest first; default oldest first.
    pub newest_first: bool,
    /// Page size, 1 to 100; none: everything, unpaged.
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One page, and the cursor of the next when there is more.
#[derive(Debug, Clone, Default)]
pub struct SandboxPage {
    /// The sandboxes of this page.
    pub sandboxes: Vec<SandboxInfo>,
    /// Pass as `cursor` for the next page; none when this is the last.
    pub next_cursor: Option<String>,
}

impl Tools {
    /// Pages in a stable order (creation time, then id) with a cursor rather than an offset,
    /// so sandboxes ending between pages do not shift the rest.
    pub fn list_sandbox_page(&self, req: &ListSandboxes) -> Result<SandboxPage> {
        if let Some(limit) = req.limit
            && !(1..=100).contains(&limit)
        {
            return Err(Error::InvalidArgument(
                "limit must be between 1 and 100".into(),
            ));
        }
        let mut all: Vec<SandboxInfo> = self
            .list_sandboxes()?
            .into_iter()
            .filter(|i| req.states.as_ref().is_none_or(|s| s.contains(&i.state)))
            .filter(|i| {
                req.metadata
                    .iter()
                    .all(|(k, v)| i.metadata.get(k).is_some_and(|x| x == v))
            })
            .filter(|i| req.template.as_ref().is_none_or(|t| &i.template == t))
            .filter(|i| {
                req.started_after_ms.is_none_or(|after| {
                    coppice_runtime::clock::parse_rfc3339_ms(&i.created_at)
                        .is_some_and(|at| at >= after)
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        if req.newest_first {
            all.reverse();
        }
        let Some(limit) = req.limit else {
            return Ok(SandboxPage {
                sandboxes: all,
                next_cursor: None,
            });
        };
        let start = match req.cursor.as_deref().filter(|t| !t.is_empty()) {
            Some(cursor) => {
                let (at, id) = cursor
                    .split_once('_')
                    .ok_or_else(|| Error::InvalidArgument("invalid nextToken".into()))?;
                all.iter()
                    .position(|i| {
                        let key = (i.created_at.as_str(), i.id.as_str());
                        if req.newest_first {
                            key < (at, id)
                        } else {
                            key > (at, id)
                        }
                    })
                    .unwrap_or(all.len())
            }
            None => 0,
        };
        let more = start + limit < all.len();
        let sandboxes: Vec<SandboxInfo> = all.into_iter().skip(start).take(limit).collect();
        let next_cursor = match (more, sandboxes.last()) {
            (true, Some(last)) => Some(format!("{}_{}", last.created_at, last.id)),
            _ => None,
        };
        Ok(SandboxPage {
            sandboxes,
            next_cursor,
        })
    }
}
