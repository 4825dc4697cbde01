//! Forks (N sandboxes over one snapshot's layer stack, started a bounded number at a time)
//! and restore (a sandbox's writable layer replaced by a snapshot's).

use super::*;

impl Runtime {
    /// Forks `count` sandboxes from a snapshot, or from a live sandbox through an implicit
    /// snapshot. Request errors fail the call; each fork then succeeds or fails on its own.
    pub async fn fork(&self, req: ForkRequest) -> Result<ForkResult> {
        if !(1..=MAX_FORKS).contains(&req.count) {
            return Err(Error::InvalidArgument(format!(
                "count must be between 1 and {MAX_FORKS}, got {}",
                req.count
            )));
        }
        if req.per_fork.len() > req.count as usize {
            return Err(Error::InvalidArgument(format!(
                "{} per-fork settings given for {} forks",
                req.per_fork.len(),
                req.count
            )));
        }
        // Settings are checked before anything is made, so bad input harms nothing.
        let settings: Vec<ForkSettings> = (0..req.count as usize)
            .map(|i| match req.per_fork.get(i) {
                Some(own) => own.over(&req.common),
                None => req.common.clone(),
            })
            .collect();
        // Checked against the configured defaults before anything is made (bad input harms
        // nothing); again below over the source sandbox's limits.
        for s in &settings {
            self.effective_limits(&s.limits)?;
            self.effective_timeout(s.timeout)?;
        }
        let implicit_id = new_id();
        let _implicit_pin = self.snap.pin(&implicit_id);
        let (snap, implicit) = match &req.source {
            ForkSource::Snapshot(id) => (self.snapshot_record(id)?, false),
            ForkSource::Sandbox(id) => {
                let how = Taking {
                    implicit: Some((&implicit_id, "fork")),
                    ..Default::default()
                };
                let s = self
                    .take_snapshot(id, SnapshotRequest::default(), how)
                    .await?;
                (s, true)
            }
        };
        let _pin = self.snap.pin(&snap.id);
        // Pinned now; make sure a concurrent delete did not remove it just before.
        self.snapshot_record(&snap.id)?;
        let inherited = ForkSettings {
            limits: snap.limits.clone(),
            timeout: None,
            env: snap.env.clone(),
            metadata: BTreeMap::new(),
        };
        let mut checked = Vec::with_capacity(settings.len());
        for s in &settings {
            let s = s.over(&inherited);
            let limits = self.effective_limits(&s.limits)?;
            let timeout = self.effective_timeout(s.timeout)?;
            checked.push((s, limits, timeout));
        }
        let template = self.template_of_snapshot(&snap)?;
        let template = Arc::new(template);
        let outcomes: Vec<ForkOutcome> = futures::stream::iter(checked.into_iter().enumerate())
            .map(|(i, (s, limits, timeout))| {
                let template = template.clone();
                let snap = &snap;
                async move {
                    let res = self.fork_one(&template, snap, s, limits, timeout).await;
                    match res {
                        Ok(info) => ForkOutcome {
                            index: i as u32,
                            sandbox: Some(info),
                            error: None,
                        },
                        Err(e) => {
                            tracing::warn!(snapshot = %snap.id, index = i, "fork failed: {e}");
                            ForkOutcome {
                                index: i as u32,
                                sandbox: None,
                                error: Some(e.to_string()),
                            }
                        }
                    }
                }
            })
            .buffer_unordered(FORK_PARALLELISM)
            .collect()
            .await;
        let mut forks = outcomes;
        forks.sort_by_key(|o| o.index);
        let created = forks.iter().filter(|o| o.sandbox.is_some()).count() as u32;
        Ok(ForkResult {
            snapshot_id: snap.id.clone(),
            implicit_snapshot: implicit,
            failed: req.count - created,
            created,
            forks,
        })
    }

    async fn fork_one(
        &self,
        template: &TemplateInfo,
        snap: &SnapshotRecord,
        s: ForkSettings,
        limits: Limits,
        timeout: Duration,
    ) -> Result<SandboxInfo> {
        let req = CreateRequest {
            template: Some(template.name.clone()),
            limits: limits.clone(),
            timeout: Some(timeout),
            env: s.env,
            metadata: s.metadata,
            // A fork keeps the network policy of the sandbox it came from, while that is known.
            // Its exposed ports get host ports of their own (the original holds its ones).
            network_policy: self
                .store
                .network_policy(&snap.sandbox_id)
                .ok()
                .flatten()
                .map(crate::policy::NetworkPolicy::without_host_ports),
            no_new_privs: None,
        };
        // The same start path as an unpooled create: fresh id, slot (uid range, IP, MAC,
        // interface), hostname, machine-id, cgroup; only the lower layers differ, and a memory
        // snapshot's processes resume instead of a fresh agent.
        self.admit(&limits)?;
        let resume = (snap.kind == SnapshotKind::Memory.as_str()).then_some(snap.id.as_str());
        let rec = self
            .start_new(template, limits, &req, timeout, false, resume)
            .await?;
        let rec = self.stands_on(rec, snap).await?;
        self.store.event(
            Some(&rec.id),
            "forked",
            &format!("from snapshot {}", snap.id),
        );
        Ok(self.info_of(&rec))
    }

    /// Records that a sandbox just started on `snap`'s layers stands on it (its lineage; the
    /// snapshot cannot be deleted under it); on failure the sandbox is removed again.
    pub(in crate::manager) async fn stands_on(
        &self,
        rec: SandboxRecord,
        snap: &SnapshotRecord,
    ) -> Result<SandboxRecord> {
        let lineage = LineageRecord {
            sandbox_id: rec.id.clone(),
            parent_snapshot: Some(snap.id.clone()),
            base_snapshot: Some(snap.id.clone()),
            template: snap.template.clone(),
            created_at_ms: rec.created_at_ms,
        };
        if let Err(e) = self.store.put_lineage(&lineage) {
            self.destroy(rec).await.ok();
            return Err(e);
        }
        Ok(rec)
    }

    /// Rolls a sandbox back to one of its own snapshots, in place: same id, address and
    /// hostname; its processes restart on the snapshot's files (its current upper is dropped),
    /// or, from a memory snapshot, resume as they were.
    pub async fn restore(&self, sandbox_id: &str, snapshot_id: &str) -> Result<SandboxInfo> {
        let mut rec = self.record(sandbox_id)?;
        let snap = self.snapshot_record(snapshot_id)?;
        if snap.sandbox_id != rec.id {
            return Err(Error::InvalidArgument(format!(
                "snapshot '{}' was taken of sandbox '{}', not '{}'; a sandbox restores only its \
                 own snapshots (fork that snapshot to get a new sandbox from it)",
                snap.id, snap.sandbox_id, rec.id
            )));
        }
        let _busy = self.snap.busy(sandbox_id, "restore")?;
        let _pin = self.snap.pin(&snap.id);
        self.snapshot_record(&snap.id)?; // not deleted just before the pin
        if let Err(e) = self.restart_on(&mut rec, &snap).await {
            self.destroy(rec).await.ok();
            return Err(Error::Internal(format!(
                "restoring sandbox '{sandbox_id}' failed and it is gone: {e}"
            )));
        }
        rec.state = SandboxState::Running;
        // Restored while paused: it runs now, so a pause's checkpoint is no longer its own.
        self.store.set_checkpoint(&rec.id, None)?;
        self.store
            .update_with_event(&rec, "restored", &format!("to snapshot {}", snap.id))?;
        Ok(self.info_of(&rec))
    }

    /// Replaces a sandbox's processes and writable layer by a snapshot's, in place (same id,
    /// slot, hostname): a fresh start on the snapshot's files, or from a memory snapshot its
    /// processes resumed. The sandbox is hidden from callers and the reaper meanwhile (state
    /// `Starting`); the caller sets the state after. On failure it may have no processes.
    pub(in crate::manager) async fn restart_on(
        &self,
        rec: &mut SandboxRecord,
        snap: &SnapshotRecord,
    ) -> Result<()> {
        let memory = snap.kind == SnapshotKind::Memory.as_str();
        let template = self.template_of_snapshot(snap)?;
        rec.state = SandboxState::Starting;
        self.store.update(rec)?;
        self.backend.stop_for_restart(rec).await?;
        self.store.set_lineage_base(&rec.id, &snap.id)?;
        // Restarted processes get the daemon's no_new_privs (a sandbox's own choice at
        // create is not stored); a memory snapshot's resume with theirs.
        let started = if memory {
            self.backend
                .resume(rec, &template, self.cfg.no_new_privs, &snap.id)
                .await?
        } else {
            self.backend
                .start(rec, &template, self.cfg.no_new_privs)
                .await?
        };
        rec.pid = Some(started.pid);
        rec.pid_start = started.pid_start;
        self.store.update(rec)?;
        if memory {
            let token = self.store.access_token(&rec.id)?;
            self.hand_over_resumed(rec, &snap.id, token.as_deref())
                .await?;
        }
        if !rec.env.is_empty()
            && let Err(e) = self.init_agent(&rec.id, &rec.env).await
        {
            tracing::warn!(sandbox = %rec.id, "restarted sandbox refused its env: {e}");
        }
        Ok(())
    }
}
