//! What every exec, file and proxy call needs to reach a sandbox's agent (is it visible, is it
//! paused, which access token), answered from memory instead of two SQLite reads per call.
//!
//! Kept coherent with the database by construction: every `StateStore` method that writes a
//! sandbox row or an access token updates this index while it still holds the connection
//! lock, and a miss fills the index from the database under that same lock. So the index never
//! shows a state the database did not have at some point in the same order, and any write made
//! through the store is visible to the next lookup. (A write to `sandboxes` or
//! `sandbox_lifecycle.access_token` that bypassed these methods would not be seen: add a hook
//! beside it.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::{SandboxRecord, StateStore};
use crate::error::Result;
use crate::model::SandboxState;

/// How to reach one sandbox's agent, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRoute {
    /// The sandbox's stored state.
    pub state: SandboxState,
    /// Waiting in a warm pool, not yet handed out.
    pub pooled: bool,
    /// Host pid of the agent (watched while a call waits for it).
    pub pid: Option<i32>,
    /// envd's access token, when the sandbox has one.
    pub token: Option<Arc<str>>,
}

#[derive(Default)]
pub(super) struct HotIndex {
    map: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    state: SandboxState,
    pooled: bool,
    pid: Option<i32>,
    /// None until read from or written to the database.
    token: Option<Option<Arc<str>>>,
}

impl HotIndex {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sandbox row was inserted or rewritten (call with the connection lock held).
    pub(super) fn record_written(&self, r: &SandboxRecord) {
        let mut map = self.map();
        match map.get_mut(&r.id) {
            Some(e) => {
                e.state = r.state;
                e.pooled = r.pooled;
                e.pid = r.pid;
            }
            None => {
                map.insert(
                    r.id.clone(),
                    Entry {
                        state: r.state,
                        pooled: r.pooled,
                        pid: r.pid,
                        token: None,
                    },
                );
            }
        }
    }

    /// A sandbox row was deleted (call with the connection lock held).
    pub(super) fn record_deleted(&self, id: &str) {
        self.map().remove(id);
    }

    /// The access token of `id` was set or removed (call with the connection lock held).
    pub(super) fn token_written(&self, id: &str, token: Option<&str>) {
        if let Some(e) = self.map().get_mut(id) {
            e.token = Some(token.map(Arc::from));
        }
    }

    fn get(&self, id: &str) -> Option<AgentRoute> {
        let map = self.map();
        let e = map.get(id)?;
        Some(AgentRoute {
            state: e.state,
            pooled: e.pooled,
            pid: e.pid,
            token: e.token.clone()?,
        })
    }
}

impl StateStore {
    /// State and access token of a stored sandbox (None: no such row), from memory when known.
    pub fn agent_route(&self, id: &str) -> Result<Option<AgentRoute>> {
        if let Some(route) = self.hot.get(id) {
            return Ok(Some(route));
        }
        let conn = self.conn();
        let Some((state, pooled, pid)) = read_state(&conn, id)? else {
            return Ok(None);
        };
        let token = read_token(&conn, id)?.map(Arc::from);
        self.hot.map().insert(
            id.to_string(),
            Entry {
                state,
                pooled,
                pid,
                token: Some(token.clone()),
            },
        );
        Ok(Some(AgentRoute {
            state,
            pooled,
            pid,
            token,
        }))
    }
}

fn read_state(conn: &Connection, id: &str) -> Result<Option<(SandboxState, bool, Option<i32>)>> {
    Ok(conn
        .prepare_cached("SELECT state, pooled, pid FROM sandboxes WHERE id = ?1")?
        .query_row(params![id], |r| {
            let state: String = r.get(0)?;
            Ok((
                SandboxState::parse(&state).unwrap_or(SandboxState::Stopped),
                r.get(1)?,
                r.get(2)?,
            ))
        })
        .optional()?)
}

fn read_token(conn: &Connection, id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT access_token FROM sandbox_lifecycle WHERE id = ?1")?
        .query_row(params![id], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limits;

    fn record(id: &str, slot: u32, state: SandboxState, pooled: bool) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            template: "default".into(),
            state,
            slot,
            pid: Some(42),
            pid_start: Some(7),
            created_at_ms: 1,
            expires_at_ms: 2,
            limits: Limits::default(),
            env: Default::default(),
            metadata: Default::default(),
            hostname: format!("sbx-{id}"),
            pooled,
        }
    }

    /// What the database says, bypassing the index.
    fn stored(s: &StateStore, id: &str) -> Option<AgentRoute> {
        let conn = s.conn();
        let (state, pooled, pid) = read_state(&conn, id).unwrap()?;
        Some(AgentRoute {
            state,
            pooled,
            pid,
            token: read_token(&conn, id).unwrap().map(Arc::from),
        })
    }

    fn check(s: &StateStore, id: &str) -> Option<AgentRoute> {
        let route = s.agent_route(id).unwrap();
        assert_eq!(route, stored(s, id), "index and database agree on {id}");
        route
    }

    #[test]
    fn the_index_follows_every_write() {
        let s = StateStore::open_in_memory().unwrap();
        assert_eq!(check(&s, "a"), None);
        let mut a = record("a", 0, SandboxState::Starting, true);
        s.insert(&a).unwrap();
        assert!(check(&s, "a").unwrap().pooled);
        a.state = SandboxState::Running;
        s.update(&a).unwrap();
        assert_eq!(check(&s, "a").unwrap().state, SandboxState::Running);
        a.pooled = false;
        s.update_with_event(&a, "created", "from the warm pool")
            .unwrap();
        assert!(!check(&s, "a").unwrap().pooled);
        s.set_access_token("a", "t1").unwrap();
        assert_eq!(check(&s, "a").unwrap().token.as_deref(), Some("t1"));
        a.state = SandboxState::Paused;
        s.update(&a).unwrap();
        let r = check(&s, "a").unwrap();
        assert_eq!(
            (r.state, r.token.as_deref()),
            (SandboxState::Paused, Some("t1"))
        );
        s.set_on_timeout("a", crate::model::OnTimeout::Pause)
            .unwrap();
        assert_eq!(check(&s, "a").unwrap().token.as_deref(), Some("t1"));
        s.forget_lifecycle("a").unwrap();
        assert_eq!(check(&s, "a").unwrap().token, None);
        s.delete("a").unwrap();
        assert_eq!(check(&s, "a"), None);
    }

    #[test]
    fn a_token_written_before_the_index_knew_the_sandbox_is_read() {
        let s = StateStore::open_in_memory().unwrap();
        s.insert(&record("b", 1, SandboxState::Running, false))
            .unwrap();
        // Not in the index yet as far as the token goes: read from the database.
        s.set_access_token("b", "tok").unwrap();
        assert_eq!(check(&s, "b").unwrap().token.as_deref(), Some("tok"));
        // A second store on the same file starts empty and reads everything.
        let dir = std::env::temp_dir().join(format!("coppice-hot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("state.db");
        {
            let s1 = StateStore::open(&db).unwrap();
            s1.insert(&record("c", 2, SandboxState::Running, false))
                .unwrap();
            s1.set_access_token("c", "persisted").unwrap();
        }
        let s2 = StateStore::open(&db).unwrap();
        assert_eq!(check(&s2, "c").unwrap().token.as_deref(), Some("persisted"));
        drop(s2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
