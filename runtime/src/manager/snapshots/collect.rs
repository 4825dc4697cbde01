//! The snapshot collector: implicit snapshots nothing stands on any more (and no paused
//! sandbox names as its checkpoint) are removed, and layer sizes are counted in the
//! background.

use super::*;

impl Runtime {
    /// Removes implicit snapshots nothing stands on any more, unfinished snapshots of a
    /// crashed daemon (`startup`), and snapshot directories without a row.
    pub fn collect_snapshots(&self, startup: bool) {
        let Ok(all) = self.store.all_snapshots() else {
            return;
        };
        if startup {
            for s in all.iter().filter(|s| !s.ready) {
                tracing::info!(snapshot = %s.id, "removing a snapshot a crash left unfinished");
                let _ = self.remove_snapshot(s);
            }
            let known: HashSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
            let pins = self.snap.pins.lock().unwrap_or_else(|e| e.into_inner());
            self.backend
                .storage()
                .remove_unknown_layers(&|name| known.contains(name) || pins.contains_key(name));
        }
        // Repeat: removing one implicit snapshot can free the implicit one below it.
        loop {
            let Ok(all) = self.store.all_snapshots() else {
                return;
            };
            let mut removed = false;
            for s in all.iter().filter(|s| s.implicit && s.ready) {
                let unused = {
                    // Same protocol as delete_snapshot: check and drop the row under the lock.
                    // A pause pins its checkpoint until it is recorded, so both are read here.
                    let pins = self.snap.pins.lock().unwrap_or_else(|e| e.into_inner());
                    !pins.contains_key(&s.id)
                        && !self.is_current_warm(s)
                        && matches!(self.store.checkpoint_snapshots(), Ok(c) if !c.contains(&s.id))
                        && matches!(self.store.snapshot_dependants(&s.id),
                                    Ok((a, b)) if a.is_empty() && b.is_empty())
                        && self.store.delete_snapshot(&s.id).is_ok()
                };
                if unused {
                    tracing::info!(snapshot = %s.id, "removed an implicit snapshot no fork uses");
                    self.remove_snapshot_files(s);
                    removed = true;
                }
            }
            if !removed {
                return;
            }
        }
    }

    /// Counts the layers of snapshots taken as subvolumes and records their sizes.
    fn count_snapshot_sizes(&self) {
        let queued =
            std::mem::take(&mut *self.snap.to_size.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, layer) in queued {
            let size = crate::fsutil::tree_size(&layer, Measure::Apparent);
            // A snapshot deleted meanwhile has no row left to update.
            if let Err(e) = self.store.mark_snapshot_ready(&id, size) {
                tracing::warn!(snapshot = %id, "recording its size: {e}");
            }
        }
    }

    /// Runs the snapshot collector every two seconds.
    pub(crate) fn spawn_snapshot_collector(self: &Arc<Self>) {
        let rt = self.clone();
        tokio::spawn(async move {
            let startup = rt.clone();
            let _ = tokio::task::spawn_blocking(move || startup.collect_snapshots(true)).await;
            let mut next_collect = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_collect) => {
                        next_collect = tokio::time::Instant::now() + Duration::from_secs(2);
                        let rt = rt.clone();
                        let _ = tokio::task::spawn_blocking(move || rt.collect_snapshots(false)).await;
                    }
                    _ = rt.snap.sizing.notified() => {
                        let rt = rt.clone();
                        let _ = tokio::task::spawn_blocking(move || rt.count_snapshot_sizes()).await;
                    }
                }
            }
        });
    }
}
