//! Snapshot and lineage rows (tables in `SCHEMA` next to the sandboxes table).
//!
//! `snapshots`: one row per immutable layer under `<state>/snapshots/<id>/layer`.
//! `lineage`: one row per sandbox that was forked or snapshotted, kept after the sandbox is
//! gone so that ancestry stays listable. `parent_snapshot` is where the sandbox came from
//! (never changes); `base_snapshot` is the top layer it currently stands on (changes on
//! restore). A sandbox without a row stands on its template alone.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{StateStore, from_json, json};
use crate::error::{Error, Result};
use crate::model::Limits;

/// One row of the `snapshots` table: a stored layer and what it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot id, also its directory under `<state>/snapshots/`.
    pub id: String,
    /// Optional caller-given label, unique among snapshots.
    pub name: Option<String>,
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// The snapshot that sandbox stood on: its layers lie below this one.
    pub base_snapshot: Option<String>,
    /// Name of the template at the bottom of its layer stack.
    pub template: String,
    /// "filesystem" or "memory".
    pub kind: String,
    /// Made by a fork straight from a live sandbox; removed once nothing stands on it.
    pub implicit: bool,
    /// False while the layer is being copied (and after a crash mid-copy).
    pub ready: bool,
    /// Bytes in its own layer; 0 until counted.
    pub size_bytes: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Caller's key-value metadata.
    pub metadata: BTreeMap<String, String>,
    /// The source sandbox's limits and env: forks inherit them unless they override.
    pub limits: Limits,
    /// The source sandbox's environment variables.
    pub env: BTreeMap<String, String>,
}

/// One row of the `lineage` table: where a sandbox came from and what it stands on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// The sandbox, which may be gone.
    pub sandbox_id: String,
    /// The snapshot it was forked or restored from; never changes.
    pub parent_snapshot: Option<String>,
    /// The top snapshot layer it stands on now; changes on restore.
    pub base_snapshot: Option<String>,
    /// Name of the template it descends from.
    pub template: String,
    /// When the sandbox was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

const SELECT_SNAPSHOT: &str = "SELECT id, name, sandbox_id, base_snapshot, template, kind, \
     implicit, ready, size_bytes, created_at_ms, metadata, limits, env FROM snapshots";

fn row_to_snapshot(row: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        sandbox_id: row.get(2)?,
        base_snapshot: row.get(3)?,
        template: row.get(4)?,
        kind: row.get(5)?,
        implicit: row.get(6)?,
        ready: row.get(7)?,
        size_bytes: row.get::<_, i64>(8)? as u64,
        created_at_ms: row.get(9)?,
        metadata: from_json(&row.get::<_, String>(10)?),
        limits: from_json(&row.get::<_, String>(11)?),
        env: from_json(&row.get::<_, String>(12)?),
    })
}

fn row_to_lineage(row: &rusqlite::Row<'_>) -> rusqlite::Result<LineageRecord> {
    Ok(LineageRecord {
        sandbox_id: row.get(0)?,
        parent_snapshot: row.get(1)?,
        base_snapshot: row.get(2)?,
        template: row.get(3)?,
        created_at_ms: row.get(4)?,
    })
}

impl StateStore {
    /// Inserts a snapshot row (not yet ready). A taken name is `AlreadyExists`.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let res = self.conn().execute(
            "INSERT INTO snapshots (id, name, sandbox_id, base_snapshot, template, kind, implicit,
                ready, size_bytes, created_at_ms, metadata, limits, env)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                s.id,
                s.name,
                s.sandbox_id,
                s.base_snapshot,
                s.template,
                s.kind,
                s.implicit,
                s.ready,
                s.size_bytes as i64,
                s.created_at_ms,
                json(&s.metadata),
                json(&s.limits),
                json(&s.env),
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::AlreadyExists(format!(
                    "a snapshot named '{}' already exists; choose another name or delete it",
                    s.name.as_deref().unwrap_or_default()
                )))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Replaces snapshot `id`'s metadata.
    pub fn update_snapshot_metadata(
        &self,
        id: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE snapshots SET metadata = ?2 WHERE id = ?1",
            params![id, json(metadata)],
        )?;
        Ok(())
    }

    /// Marks snapshot `id` ready and records its size (also how a later count updates the size).
    pub fn mark_snapshot_ready(&self, id: &str, size_bytes: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE snapshots SET ready = 1, size_bytes = ?2 WHERE id = ?1",
            params![id, size_bytes as i64],
        )?;
        Ok(())
    }

    /// The snapshot with this id or, failing that, this name; ready or not.
    pub fn get_snapshot(&self, id_or_name: &str) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{SELECT_SNAPSHOT} WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC"),
                params![id_or_name],
                row_to_snapshot,
            )
            .optional()?)
    }

    /// Every snapshot, ready or not, oldest first.
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT_SNAPSHOT} ORDER BY created_at_ms, id"))?;
        let rows = stmt.query_map([], row_to_snapshot)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Deletes snapshot `id`'s row (its layer is the caller's to remove).
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// What stands on snapshot `id`: live sandboxes whose current base it is, and snapshots
    /// whose layer stack contains it.
    pub fn snapshot_dependants(&self, id: &str) -> Result<(Vec<String>, Vec<String>)> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT l.sandbox_id FROM lineage l JOIN sandboxes s ON s.id = l.sandbox_id
             WHERE l.base_snapshot = ?1 ORDER BY l.created_at_ms",
        )?;
        let sandboxes = stmt
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM snapshots WHERE base_snapshot = ?1 ORDER BY created_at_ms",
        )?;
        let snapshots = stmt
            .query_map(params![id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok((sandboxes, snapshots))
    }

    /// Records a sandbox's lineage (or replaces it).
    pub fn put_lineage(&self, l: &LineageRecord) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO lineage (sandbox_id, parent_snapshot, base_snapshot, template,
                created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                l.sandbox_id,
                l.parent_snapshot,
                l.base_snapshot,
                l.template,
                l.created_at_ms
            ],
        )?;
        Ok(())
    }

    /// Records a template-born sandbox's lineage row unless it has one.
    pub fn ensure_lineage(
        &self,
        sandbox_id: &str,
        template: &str,
        created_at_ms: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO lineage (sandbox_id, parent_snapshot, base_snapshot, template,
                created_at_ms) VALUES (?1, NULL, NULL, ?2, ?3)",
            params![sandbox_id, template, created_at_ms],
        )?;
        Ok(())
    }

    /// Sets the snapshot sandbox `sandbox_id` now stands on (after a restore).
    pub fn set_lineage_base(&self, sandbox_id: &str, base: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE lineage SET base_snapshot = ?2 WHERE sandbox_id = ?1",
            params![sandbox_id, base],
        )?;
        Ok(())
    }

    /// Deletes sandbox `sandbox_id`'s lineage row.
    pub fn delete_lineage(&self, sandbox_id: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM lineage WHERE sandbox_id = ?1",
            params![sandbox_id],
        )?;
        Ok(())
    }

    /// Sandbox `sandbox_id`'s lineage row, if it has one.
    pub fn get_lineage(&self, sandbox_id: &str) -> Result<Option<LineageRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT sandbox_id, parent_snapshot, base_snapshot, template, created_at_ms
                 FROM lineage WHERE sandbox_id = ?1",
                params![sandbox_id],
                row_to_lineage,
            )
            .optional()?)
    }

    /// Sandboxes forked from snapshot `id` (live or not), oldest first.
    pub fn forks_of(&self, snapshot_id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT sandbox_id FROM lineage WHERE parent_snapshot = ?1 ORDER BY created_at_ms",
        )?;
        let rows = stmt.query_map(params![snapshot_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Snapshots taken of sandbox `id`, oldest first.
    pub fn snapshots_of(&self, sandbox_id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM snapshots WHERE sandbox_id = ?1 ORDER BY created_at_ms",
        )?;
        let rows = stmt.query_map(params![sandbox_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: Option<&str>, base: Option<&str>) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: name.map(Into::into),
            sandbox_id: "sbx".into(),
            base_snapshot: base.map(Into::into),
            template: "default".into(),
            kind: "filesystem".into(),
            implicit: false,
            ready: true,
            size_bytes: 10,
            created_at_ms: 1,
            metadata: BTreeMap::new(),
            limits: Limits::default(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn snapshots_names_and_dependants() {
        let s = StateStore::open_in_memory().unwrap();
        s.insert_snapshot(&snap("a", Some("prepared"), None))
            .unwrap();
        s.insert_snapshot(&snap("b", None, Some("a"))).unwrap();
        s.insert_snapshot(&snap("c", None, None)).unwrap();
        assert!(matches!(
            s.insert_snapshot(&snap("d", Some("prepared"), None)),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(s.get_snapshot("prepared").unwrap().unwrap().id, "a");
        assert_eq!(
            s.get_snapshot("b")
                .unwrap()
                .unwrap()
                .base_snapshot
                .as_deref(),
            Some("a")
        );
        // A fork row counts only while its sandbox is live.
        s.put_lineage(&LineageRecord {
            sandbox_id: "f1".into(),
            parent_snapshot: Some("a".into()),
            base_snapshot: Some("a".into()),
            template: "default".into(),
            created_at_ms: 2,
        })
        .unwrap();
        assert_eq!(
            s.snapshot_dependants("a").unwrap(),
            (vec![], vec!["b".to_string()])
        );
        assert_eq!(s.forks_of("a").unwrap(), vec!["f1".to_string()]);
        s.ensure_lineage("f1", "other", 3).unwrap();
        assert_eq!(
            s.get_lineage("f1")
                .unwrap()
                .unwrap()
                .parent_snapshot
                .as_deref(),
            Some("a"),
            "ensure_lineage keeps an existing row"
        );
        s.delete_snapshot("b").unwrap();
        assert_eq!(s.snapshot_dependants("a").unwrap(), (vec![], vec![]));
    }
}
