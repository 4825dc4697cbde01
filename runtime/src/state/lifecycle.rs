//! Per-sandbox lifecycle extras kept beside the `sandboxes` table: the agent access token
//! (E2B's `envdAccessToken`) and what the reaper does at the timeout (kill or pause).
//! Rows go with the sandbox: `forget` is called wherever the sandbox row is deleted.

use rusqlite::{OptionalExtension, params};

use super::StateStore;
use crate::error::Result;
use crate::model::OnTimeout;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandbox_lifecycle (
    id TEXT PRIMARY KEY,
    access_token TEXT,
    on_timeout TEXT NOT NULL DEFAULT 'kill'
);
-- Sandboxes made through E2B with `secure: false`: their envd traffic needs no token.
CREATE TABLE IF NOT EXISTS e2b_open_traffic (id TEXT PRIMARY KEY);
";

impl StateStore {
    /// Stores the sandbox agent's access token (replacing any).
    pub fn set_access_token(&self, id: &str, token: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO sandbox_lifecycle (id, access_token) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET access_token = excluded.access_token",
            params![id, token],
        )?;
        self.hot.token_written(id, Some(token));
        Ok(())
    }

    /// The sandbox agent's access token, if one was set.
    pub fn access_token(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT access_token FROM sandbox_lifecycle WHERE id = ?1")?
            .query_row(params![id], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    /// Marks a sandbox's E2B sandbox traffic as open to callers without a token.
    pub fn set_open_traffic(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO e2b_open_traffic (id) VALUES (?1)",
            params![id],
        )?;
        Ok(())
    }

    /// Whether the sandbox's E2B traffic is open to callers without a token.
    pub fn open_traffic(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM e2b_open_traffic WHERE id = ?1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Stores what the reaper does at the sandbox's timeout.
    pub fn set_on_timeout(&self, id: &str, on: OnTimeout) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sandbox_lifecycle (id, on_timeout) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET on_timeout = excluded.on_timeout",
            params![id, on.as_str()],
        )?;
        Ok(())
    }

    /// What the reaper does at the sandbox's timeout (kill when nothing was stored).
    pub fn on_timeout(&self, id: &str) -> Result<OnTimeout> {
        let v: Option<String> = self
            .conn()
            .prepare_cached("SELECT on_timeout FROM sandbox_lifecycle WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(match v.as_deref() {
            Some("pause") => OnTimeout::Pause,
            _ => OnTimeout::Kill,
        })
    }

    /// Drops a sandbox's lifecycle row (with its token).
    pub fn forget_lifecycle(&self, id: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute("DELETE FROM sandbox_lifecycle WHERE id = ?1", params![id])?;
        conn.execute("DELETE FROM e2b_open_traffic WHERE id = ?1", params![id])?;
        drop(conn);
        self.forget_pause(id)?;
        self.forget_ingress(id)?;
        self.hot.token_written(id, None);
        Ok(())
    }

    /// How a sandbox ended, from its last event when that is an end (its tombstone):
    /// (unix ms, kind, detail) of `killed`, `reaped` or `lost`.
    pub fn tombstone(&self, id: &str) -> Result<Option<(i64, String, String)>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT at_ms, kind, detail FROM events WHERE sandbox = ?1
                 ORDER BY at_ms DESC, rowid DESC LIMIT 1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .filter(|(_, kind, _): &(i64, String, String)| {
                matches!(kind.as_str(), "killed" | "reaped" | "lost")
            }))
    }

    /// Lifecycle events of one sandbox, oldest first: (unix ms, kind, detail).
    pub fn events_of(
        &self,
        id: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, kind, detail FROM events WHERE sandbox = ?1 AND at_ms >= ?2
             ORDER BY at_ms LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id, since_ms, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_on_timeout() {
        let s = StateStore::open_in_memory().unwrap();
        assert_eq!(s.access_token("a").unwrap(), None);
        assert!(!s.open_traffic("a").unwrap());
        s.set_open_traffic("a").unwrap();
        s.set_open_traffic("a").unwrap();
        assert!(s.open_traffic("a").unwrap());
        assert_eq!(s.on_timeout("a").unwrap(), OnTimeout::Kill);
        s.set_access_token("a", "t1").unwrap();
        s.set_on_timeout("a", OnTimeout::Pause).unwrap();
        assert_eq!(s.access_token("a").unwrap().as_deref(), Some("t1"));
        assert_eq!(s.on_timeout("a").unwrap(), OnTimeout::Pause);
        s.set_access_token("a", "t2").unwrap();
        assert_eq!(s.access_token("a").unwrap().as_deref(), Some("t2"));
        assert_eq!(s.on_timeout("a").unwrap(), OnTimeout::Pause, "kept");
        s.forget_lifecycle("a").unwrap();
        assert_eq!(s.access_token("a").unwrap(), None);
        s.event(Some("a"), "paused", "");
        s.event(Some("b"), "paused", "");
        let ev = s.events_of("a", 0, 10).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, "paused");
    }
}
