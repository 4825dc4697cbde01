//! The state store: one SQLite file under the state dir (ARCHITECTURE decision 7). It records
//! what the daemon created so that after a crash or restart it can reconcile with the kernel.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Limits, SandboxState};

pub mod hot;
pub mod ingress;
mod lifecycle;
pub mod pause;
pub mod snapshots;

/// One sandbox as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Sandbox id.
    pub id: String,
    /// Name of the template it was started from.
    pub template: String,
    /// Its stored state (never `Unhealthy`).
    pub state: SandboxState,
    /// Small integer owning the sandbox's uid range, IP and host interface name.
    pub slot: u32,
    /// Host pid of the sandbox's init, and its start time (clock ticks since boot) so that a
    /// recycled pid is never mistaken for the sandbox after a restart.
    pub pid: Option<i32>,
    /// Start time of `pid`, in clock ticks since boot.
    pub pid_start: Option<u64>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// When the reaper acts on it, Unix milliseconds (`i64::MAX` while pooled).
    pub expires_at_ms: i64,
    /// Its limits, defaults filled in.
    pub limits: Limits,
    /// Environment variables every process gets.
    pub env: BTreeMap<String, String>,
    /// Caller's key-value metadata.
    pub metadata: BTreeMap<String, String>,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Waiting in a warm pool, not yet handed out.
    pub pooled: bool,
}

/// The daemon's SQLite state: sandboxes, policies, snapshots, lineage and events.
pub struct StateStore {
    conn: Mutex<Connection>,
    /// In-memory answers for the per-call agent lookup (state/hot.rs); every write below that
    /// touches a sandbox row keeps it in step.
    hot: hot::HotIndex,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    state TEXT NOT NULL,
    slot INTEGER NOT NULL UNIQUE,
    pid INTEGER,
    pid_start INTEGER,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    limits TEXT NOT NULL,
    env TEXT NOT NULL,
    metadata TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pooled INTEGER NOT NULL DEFAULT 0
);
-- Snapshots (immutable layers) and lineage: state/snapshots.rs.
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    sandbox_id TEXT NOT NULL,
    base_snapshot TEXT,
    template TEXT NOT NULL,
    kind TEXT NOT NULL,
    implicit INTEGER NOT NULL DEFAULT 0,
    ready INTEGER NOT NULL DEFAULT 0,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    limits TEXT NOT NULL,
    env TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lineage (
    sandbox_id TEXT PRIMARY KEY,
    parent_snapshot TEXT,
    base_snapshot TEXT,
    template TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS network_policies (
    sandbox TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    at_ms INTEGER NOT NULL,
    sandbox TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_sandbox ON events (sandbox, at_ms);
";

impl StateStore {
    /// Opens (creating it owner-only if need be) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self> {
        owner_only(path)?;
        let conn = Connection::open(path)?;
        // WAL + NORMAL: durable across a daemon crash (not across power loss), and fast.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(lifecycle::SCHEMA)?;
        conn.execute_batch(ingress::SCHEMA)?;
        conn.execute_batch(pause::SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            hot: Default::default(),
        })
    }

    /// A store in memory, for tests.
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(lifecycle::SCHEMA)?;
        conn.execute_batch(ingress::SCHEMA)?;
        conn.execute_batch(pause::SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            hot: Default::default(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new sandbox row.
    pub fn insert(&self, r: &SandboxRecord) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO sandboxes (id, template, state, slot, pid, pid_start, created_at_ms,
                expires_at_ms, limits, env, metadata, hostname, pooled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                r.id,
                r.template,
                r.state.as_str(),
                r.slot,
                r.pid,
                r.pid_start.map(|v| v as i64),
                r.created_at_ms,
                r.expires_at_ms,
                json(&r.limits),
                json(&r.env),
                json(&r.metadata),
                r.hostname,
                r.pooled,
            ],
        )?;
        self.hot.record_written(r);
        Ok(())
    }

    /// Rewrites every mutable column of an existing record.
    pub fn update(&self, r: &SandboxRecord) -> Result<()> {
        let conn = self.conn();
        if Self::update_in(&conn, r)? {
            self.hot.record_written(r);
        }
        Ok(())
    }

    /// `update` and an event row in one transaction (one commit on the hot path).
    pub fn update_with_event(&self, r: &SandboxRecord, kind: &str, detail: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let updated = Self::update_in(&tx, r)?;
        tx.prepare_cached(
            "INSERT INTO events (at_ms, sandbox, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![crate::clock::now_ms(), r.id, kind, detail])?;
        tx.commit()?;
        if updated {
            self.hot.record_written(r);
        }
        Ok(())
    }

    /// True when the row existed (and was rewritten).
    fn update_in(conn: &Connection, r: &SandboxRecord) -> Result<bool> {
        let changed = conn
            .prepare_cached(
                "UPDATE sandboxes SET state = ?2, pid = ?3, pid_start = ?4, expires_at_ms = ?5,
                limits = ?6, env = ?7, metadata = ?8, pooled = ?9, created_at_ms = ?10
             WHERE id = ?1",
            )?
            .execute(params![
                r.id,
                r.state.as_str(),
                r.pid,
                r.pid_start.map(|v| v as i64),
                r.expires_at_ms,
                json(&r.limits),
                json(&r.env),
                json(&r.metadata),
                r.pooled,
                r.created_at_ms,
            ])?;
        Ok(changed > 0)
    }

    /// Deletes a sandbox's row and its network policy.
    pub fn delete(&self, id: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        conn.execute(
            "DELETE FROM network_policies WHERE sandbox = ?1",
            params![id],
        )?;
        self.hot.record_deleted(id);
        Ok(())
    }

    /// The network policy stored for a sandbox (None: the default policy).
    pub fn network_policy(&self, id: &str) -> Result<Option<crate::policy::NetworkPolicy>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT policy FROM network_policies WHERE sandbox = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.map(|t| from_json(&t)))
    }

    /// Stores a sandbox's network policy; None removes it (the default policy applies).
    pub fn set_network_policy(
        &self,
        id: &str,
        policy: Option<&crate::policy::NetworkPolicy>,
    ) -> Result<()> {
        match policy {
            Some(p) => self.conn().execute(
                "INSERT INTO network_policies (sandbox, policy) VALUES (?1, ?2)
                 ON CONFLICT(sandbox) DO UPDATE SET policy = excluded.policy",
                params![id, json(p)],
            )?,
            None => self.conn().execute(
                "DELETE FROM network_policies WHERE sandbox = ?1",
                params![id],
            )?,
        };
        Ok(())
    }

    /// The stored sandbox `id`, pooled or not.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{SELECT} WHERE id = ?1"),
                params![id],
                row_to_record,
            )
            .optional()?)
    }

    /// Every stored sandbox, oldest first.
    pub fn all(&self) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY created_at_ms"))?;
        let rows = stmt.query_map([], row_to_record)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many sandboxes callers own (pooled ones not counted) and the sum of their memory
    /// limits: one aggregate query, for admission on every create.
    pub fn owned_totals(&self) -> Result<(usize, u64)> {
        let conn = self.conn();
        let (n, sum): (i64, i64) = conn
            .prepare_cached(
                "SELECT count(*), coalesce(sum(json_extract(limits, '$.memory_bytes')), 0)
                 FROM sandboxes WHERE pooled = 0",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((n.max(0) as usize, sum.max(0) as u64))
    }

    /// The smallest slot not held by any stored sandbox.
    pub fn free_slot(&self) -> Result<u32> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT slot FROM sandboxes ORDER BY slot")?;
        let used = stmt.query_map([], |r| r.get::<_, u32>(0))?;
        let mut next = 0u32;
        for slot in used {
            let slot = slot?;
            if slot != next {
                break;
            }
            next += 1;
        }
        Ok(next)
    }

    /// Records an event (best effort: a failure is only logged).
    pub fn event(&self, sandbox: Option<&str>, kind: &str, detail: &str) {
        let at = crate::clock::now_ms();
        if let Err(e) = self.conn().execute(
            "INSERT INTO events (at_ms, sandbox, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![at, sandbox, kind, detail],
        ) {
            tracing::warn!("recording event {kind}: {e}");
        }
    }
}

const SELECT: &str =
    "SELECT id, template, state, slot, pid, pid_start, created_at_ms, expires_at_ms,
    limits, env, metadata, hostname, pooled FROM sandboxes";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    let state: String = row.get(2)?;
    Ok(SandboxRecord {
        id: row.get(0)?,
        template: row.get(1)?,
        state: SandboxState::parse(&state).unwrap_or(SandboxState::Stopped),
        slot: row.get(3)?,
        pid: row.get(4)?,
        pid_start: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        created_at_ms: row.get(6)?,
        expires_at_ms: row.get(7)?,
        limits: from_json(&row.get::<_, String>(8)?),
        env: from_json(&row.get::<_, String>(9)?),
        metadata: from_json(&row.get::<_, String>(10)?),
        hostname: row.get(11)?,
        pooled: row.get(12)?,
    })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("state values serialize")
}

fn from_json<T: for<'de> Deserialize<'de> + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

/// The database holds access tokens and sandboxes' environment variables: it and its WAL
/// files are the owner's alone (0600). SQLite gives the WAL files the database's mode, so a
/// database created 0600 keeps them so; older files are narrowed here.
fn owner_only(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)
        .map_err(crate::error::Error::io(format!(
            "creating {}",
            db.display()
        )))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        if file.exists() {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).map_err(
                crate::error::Error::io(format!("restricting {}", file.display())),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, slot: u32) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            template: "default".into(),
            state: SandboxState::Running,
            slot,
            pid: Some(42),
            pid_start: Some(7),
            created_at_ms: 1,
            expires_at_ms: 2,
            limits: Limits {
                memory_bytes: Some(1 << 29),
                cpus: Some(1.0),
                pids: Some(256),
                disk_bytes: None,
            },
            env: [("A".to_string(), "1".to_string())].into(),
            metadata: BTreeMap::new(),
            hostname: format!("sbx-{id}"),
            pooled: false,
        }
    }

    #[test]
    fn round_trip_and_slots() {
        let s = StateStore::open_in_memory().unwrap();
        assert_eq!(s.free_slot().unwrap(), 0);
        s.insert(&record("a", 0)).unwrap();
        s.insert(&record("b", 2)).unwrap();
        assert_eq!(s.free_slot().unwrap(), 1);
        let mut a = s.get("a").unwrap().unwrap();
        assert_eq!(a, record("a", 0));
        a.state = SandboxState::Paused;
        a.expires_at_ms = 99;
        s.update(&a).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap().expires_at_ms, 99);
        assert_eq!(s.all().unwrap().len(), 2);
        s.delete("a").unwrap();
        assert!(s.get("a").unwrap().is_none());
        assert_eq!(s.free_slot().unwrap(), 0);
        assert!(s.insert(&record("c", 2)).is_err(), "slots are unique");
    }
}
