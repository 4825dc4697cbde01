//! A pause's checkpoint: an implicit snapshot (files, or files and memory) taken with the
//! sandbox frozen and left frozen, that the paused sandbox resumes from in place once its
//! processes are gone (manager/pause.rs).

use super::*;
use crate::model::PauseKind;
use crate::state::pause::Checkpoint;

impl Runtime {
    /// Takes and records the checkpoint of a sandbox being paused; on success the sandbox is
    /// frozen (on failure it runs on, untouched).
    pub(in crate::manager) async fn take_checkpoint(
        &self,
        sandbox_id: &str,
        kind: PauseKind,
    ) -> Result<Checkpoint> {
        let id = new_id();
        // Pinned until the checkpoint row names it (the collector keeps it from then on).
        let _pin = self.snap.pin(&id);
        let req = SnapshotRequest {
            name: None,
            metadata: BTreeMap::new(),
            kind: match kind {
                PauseKind::Memory => SnapshotKind::Memory,
                PauseKind::Filesystem => SnapshotKind::Filesystem,
            },
        };
        let how = Taking {
            implicit: Some((&id, "pause")),
            stay_frozen: true,
            internal: false,
        };
        let snap = self.take_snapshot(sandbox_id, req, how).await?;
        let c = Checkpoint {
            snapshot: snap.id,
            kind,
            paused_at_ms: now_ms(),
        };
        if let Err(e) = self.store.set_checkpoint(sandbox_id, Some(&c)) {
            let _ = self.backend.thaw_async(sandbox_id).await;
            return Err(e);
        }
        Ok(c)
    }

    /// Brings a paused sandbox whose processes are gone back on its checkpoint, in place;
    /// on failure it is left without processes (the caller keeps it paused).
    pub(in crate::manager) async fn resume_from_checkpoint(
        &self,
        rec: &mut SandboxRecord,
        c: &Checkpoint,
    ) -> Result<()> {
        let snap = self.snapshot_record(&c.snapshot)?;
        let _busy = self.snap.busy(&rec.id, "resume")?;
        let _pin = self.snap.pin(&snap.id);
        self.restart_on(rec, &snap).await?;
        // After a host restart its network policy is gone from the kernel with the rest.
        self.reapply_policies(std::slice::from_ref(rec)).await;
        Ok(())
    }
}
