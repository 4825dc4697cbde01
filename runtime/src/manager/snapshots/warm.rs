//! Checkpoint-warmed templates (docs/decisions/0014-warm-checkpoints.md): a template named
//! under `[warm]` is started once, its default Python kernel runs the configured code (say
//! `import pandas, numpy`), and that sandbox is memory-snapshotted. Pooled and fresh sandboxes
//! of the template then start by resuming the checkpoint, like memory forks, so their kernel
//! (imports done) answers the first run_code at once.
//!
//! The checkpoint is an implicit snapshot tagged with what it was made from (the code and the
//! template's layers): a rebuilt template or other code makes a new one, and the collector
//! removes the old one once no sandbox stands on it.

use std::hash::{Hash, Hasher};

use http_body_util::BodyExt;

use super::*;

/// Metadata key of a warm checkpoint: its tag.
const WARM_KEY: &str = "coppice.warm";

/// What a warm checkpoint of `template` made by `code` is tagged with.
fn warm_tag(template: &TemplateInfo, code: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    code.hash(&mut h);
    template.layers.hash(&mut h);
    format!("{}:{:016x}", template.name, h.finish())
}

impl Runtime {
    /// The tag a warm checkpoint of `template` must carry now, when the template is warmed.
    fn current_warm_tag(&self, template: &str) -> Option<String> {
        let code = self.cfg.warm.get(template)?;
        let t = self.templates.get(template).ok()?;
        Some(warm_tag(&t, code))
    }

    /// Whether `s` is the current warm checkpoint of its template (the collector keeps it).
    pub(in crate::manager) fn is_current_warm(&self, s: &SnapshotRecord) -> bool {
        s.metadata
            .get(WARM_KEY)
            .is_some_and(|tag| self.current_warm_tag(&s.template).as_ref() == Some(tag))
    }

    /// The ready, current warm checkpoint of `template`, if there is one.
    fn warm_checkpoint(&self, template: &str) -> Option<SnapshotRecord> {
        let tag = self.current_warm_tag(template)?;
        self.store
            .all_snapshots()
            .ok()?
            .into_iter()
            .find(|s| s.ready && s.metadata.get(WARM_KEY) == Some(&tag))
    }

    /// Starts a new sandbox of `template`: from its warm checkpoint when it has one (a cold
    /// start when there is none or resuming it fails), else as a fresh start.
    pub(in crate::manager) async fn start_fresh(
        &self,
        template: &TemplateInfo,
        limits: Limits,
        req: &CreateRequest,
        timeout: Duration,
        pooled: bool,
    ) -> Result<SandboxRecord> {
        if let Some(snap) = self.warm_checkpoint(&template.name) {
            let _pin = self.snap.pin(&snap.id);
            let started = match self.template_of_snapshot(&snap) {
                Ok(stack) => {
                    self.start_new(&stack, limits.clone(), req, timeout, pooled, Some(&snap.id))
                        .await
                }
                Err(e) => Err(e),
            };
            match started {
                Ok(rec) => return self.stands_on(rec, &snap).await,
                Err(e) => {
                    // Another agent build, say: a fresh checkpoint is made on the next round.
                    tracing::warn!(template = %template.name, snapshot = %snap.id,
                                   "resuming the warm checkpoint failed, starting cold: {e}");
                    self.retire_warm(&snap);
                }
            }
        }
        self.start_new(template, limits, req, timeout, pooled, None)
            .await
    }

    /// Makes the checkpoint of every warmed template that has no current one (the pool task
    /// calls this before filling the pools).
    pub(in crate::manager) async fn ensure_warm_checkpoints(&self) {
        for (name, code) in &self.cfg.warm {
            if self.warm_checkpoint(name).is_some() {
                continue;
            }
            let support = self.backend.memory_snapshots();
            if !support.available {
                tracing::warn!(template = %name, "not warming the template: {}", support.reason);
                continue;
            }
            let Ok(template) = self.templates.get(name) else {
                tracing::warn!(template = %name, "not warming an unknown template");
                continue;
            };
            let t0 = std::time::Instant::now();
            match self.make_warm_checkpoint(&template, code).await {
                Ok(id) => tracing::info!(template = %name, snapshot = %id, elapsed = ?t0.elapsed(),
                                         "warm checkpoint made"),
                Err(e) => tracing::warn!(template = %name, "making the warm checkpoint: {e}"),
            }
        }
    }

    async fn make_warm_checkpoint(&self, template: &TemplateInfo, code: &str) -> Result<String> {
        let limits = self.cfg.default_limits.clone();
        // Pooled: never visible to callers, never reaped for time.
        let rec = self
            .start_new(
                template,
                limits,
                &CreateRequest::default(),
                Duration::from_secs(600),
                true,
                None,
            )
            .await?;
        let made = async {
            self.warm_kernel(&rec.id).await;
            self.run_warm_code(&rec.id, code).await?;
            let id = new_id();
            let _pin = self.snap.pin(&id);
            let req = SnapshotRequest {
                name: None,
                metadata: BTreeMap::from([(WARM_KEY.to_string(), warm_tag(template, code))]),
                kind: SnapshotKind::Memory,
            };
            let how = Taking {
                implicit: Some((&id, "warm")),
                stay_frozen: false,
                internal: true,
            };
            Ok(self.take_snapshot(&rec.id, req, how).await?.id)
        }
        .await;
        self.destroy(rec).await.ok();
        made
    }

    /// Runs `code` in the sandbox's default Python context; its error (an exception) fails.
    async fn run_warm_code(&self, id: &str, code: &str) -> Result<()> {
        let body = serde_json::json!({ "code": code, "language": "python" }).to_string();
        let req = http::Request::post("/execute")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(body))
            .map_err(Error::internal)?;
        let resp = self.agent_of(id).send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(Error::internal)?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let failed = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "error");
        match (status.is_success(), failed) {
            (true, None) => Ok(()),
            (true, Some(e)) => Err(Error::InvalidArgument(format!(
                "the warm code failed: {}: {}",
                e["name"].as_str().unwrap_or_default(),
                e["value"].as_str().unwrap_or_default()
            ))),
            (false, _) => Err(Error::Internal(format!(
                "the warm code could not run ({status}): {}",
                text.trim()
            ))),
        }
    }

    /// Stops using a warm checkpoint that failed to resume: it loses its tag (the collector
    /// removes it once nothing stands on it) and the next round makes a new one.
    fn retire_warm(&self, snap: &SnapshotRecord) {
        let mut metadata = snap.metadata.clone();
        metadata.remove(WARM_KEY);
        metadata.insert("coppice.warm_retired".into(), "resume failed".into());
        if let Err(e) = self.store.update_snapshot_metadata(&snap.id, &metadata) {
            tracing::warn!(snapshot = %snap.id, "retiring the warm checkpoint: {e}");
        }
    }
}
