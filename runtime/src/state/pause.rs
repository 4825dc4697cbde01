//! How a sandbox pauses and resumes (E2B's `autoPauseMemory` and `autoResume`), and the
//! checkpoint a paused sandbox resumes from once its processes are no longer in memory.
//! Rows go with the sandbox (`forget_lifecycle`).

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::StateStore;
use crate::error::Result;
use crate::model::PauseKind;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandbox_pause (
    id TEXT PRIMARY KEY,
    -- Traffic to the paused sandbox resumes it (E2B's autoResume).
    auto_resume INTEGER NOT NULL DEFAULT 0,
    -- What a pause at the timeout keeps: 'memory' or 'filesystem'.
    timeout_pause TEXT NOT NULL DEFAULT 'memory',
    -- The lifetime a resume by traffic starts, in seconds (0: the daemon's default).
    resume_timeout_secs INTEGER NOT NULL DEFAULT 0,
    -- While paused: the snapshot it resumes from when its processes are gone, what that
    -- snapshot keeps, and when the pause began.
    checkpoint TEXT,
    checkpoint_kind TEXT,
    paused_at_ms INTEGER
);
";

/// How a sandbox pauses and resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PauseSettings {
    /// Traffic to it while paused resumes it.
    pub auto_resume: bool,
    /// What a pause at its timeout keeps.
    pub timeout_pause: PauseKind,
    /// Seconds of lifetime a resume by traffic gives it; None: the daemon's default.
    pub resume_timeout_secs: Option<u64>,
}

/// The checkpoint of a paused sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Snapshot id (an implicit snapshot, kept while the row names it).
    pub snapshot: String,
    /// Files and memory, or files only.
    pub kind: PauseKind,
    /// When the pause began, Unix milliseconds.
    pub paused_at_ms: i64,
}

fn kind_of(s: &str) -> PauseKind {
    match s {
        "filesystem" => PauseKind::Filesystem,
        _ => PauseKind::Memory,
    }
}

impl StateStore {
    /// Stores how the sandbox pauses and resumes.
    pub fn set_pause_settings(&self, id: &str, s: &PauseSettings) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sandbox_pause (id, auto_resume, timeout_pause, resume_timeout_secs)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET auto_resume = excluded.auto_resume,
                 timeout_pause = excluded.timeout_pause,
                 resume_timeout_secs = excluded.resume_timeout_secs",
            params![
                id,
                s.auto_resume,
                s.timeout_pause.as_str(),
                s.resume_timeout_secs.unwrap_or(0) as i64
            ],
        )?;
        Ok(())
    }

    /// How the sandbox pauses and resumes (the defaults when nothing was stored).
    pub fn pause_settings(&self, id: &str) -> Result<PauseSettings> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT auto_resume, timeout_pause, resume_timeout_secs FROM sandbox_pause
                 WHERE id = ?1",
            )?
            .query_row(params![id], |r| {
                Ok(PauseSettings {
                    auto_resume: r.get(0)?,
                    timeout_pause: kind_of(&r.get::<_, String>(1)?),
                    resume_timeout_secs: Some(r.get::<_, i64>(2)? as u64).filter(|s| *s > 0),
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    /// Records (or, with None, clears) the checkpoint of a paused sandbox.
    pub fn set_checkpoint(&self, id: &str, c: Option<&Checkpoint>) -> Result<()> {
        self.conn().execute(
            "INSERT INTO sandbox_pause (id, checkpoint, checkpoint_kind, paused_at_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET checkpoint = excluded.checkpoint,
                 checkpoint_kind = excluded.checkpoint_kind,
                 paused_at_ms = excluded.paused_at_ms",
            params![
                id,
                c.map(|c| c.snapshot.as_str()),
                c.map(|c| c.kind.as_str()),
                c.map(|c| c.paused_at_ms)
            ],
        )?;
        Ok(())
    }

    /// The checkpoint of a paused sandbox, if it has one.
    pub fn checkpoint(&self, id: &str) -> Result<Option<Checkpoint>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT checkpoint, checkpoint_kind, paused_at_ms FROM sandbox_pause
                 WHERE id = ?1 AND checkpoint IS NOT NULL",
            )?
            .query_row(params![id], |r| {
                Ok(Checkpoint {
                    snapshot: r.get(0)?,
                    kind: kind_of(&r.get::<_, String>(1)?),
                    paused_at_ms: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Every snapshot that is some paused sandbox's checkpoint (the collector keeps them).
    pub fn checkpoint_snapshots(&self) -> Result<HashSet<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT checkpoint FROM sandbox_pause WHERE checkpoint IS NOT NULL")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<HashSet<_>>>()?)
    }

    pub(super) fn forget_pause(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sandbox_pause WHERE id = ?1", params![id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_checkpoints_are_kept_apart() {
        let s = StateStore::open_in_memory().unwrap();
        assert_eq!(s.pause_settings("a").unwrap(), PauseSettings::default());
        let set = PauseSettings {
            auto_resume: true,
            timeout_pause: PauseKind::Filesystem,
            resume_timeout_secs: Some(90),
        };
        s.set_pause_settings("a", &set).unwrap();
        assert_eq!(s.checkpoint("a").unwrap(), None);
        let c = Checkpoint {
            snapshot: "snap1".into(),
            kind: PauseKind::Memory,
            paused_at_ms: 7,
        };
        s.set_checkpoint("a", Some(&c)).unwrap();
        assert_eq!(
            s.pause_settings("a").unwrap(),
            set,
            "a checkpoint keeps the settings"
        );
        assert_eq!(s.checkpoint("a").unwrap(), Some(c));
        assert_eq!(
            s.checkpoint_snapshots().unwrap(),
            HashSet::from(["snap1".to_string()])
        );
        s.set_checkpoint("a", None).unwrap();
        assert_eq!(s.checkpoint("a").unwrap(), None);
        assert!(s.checkpoint_snapshots().unwrap().is_empty());
        assert_eq!(s.pause_settings("a").unwrap(), set);
        s.forget_pause("a").unwrap();
        assert_eq!(s.pause_settings("a").unwrap(), PauseSettings::default());
    }
}
