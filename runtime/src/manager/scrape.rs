//! `GET /metrics`: what is recorded as it happens, plus what is read at the scrape (sandboxes
//! by state and template, pool levels, each sandbox's CPU, memory, disk and network bytes).

use super::Runtime;
use crate::fsutil::{Measure, tree_size};
use crate::metrics::{Metrics, Readings, Usage};
use crate::model::SandboxState;

impl Runtime {
    /// What surfaces record into (MCP tool calls, E2B requests).
    pub fn telemetry(&self) -> &Metrics {
        &self.telemetry
    }

    /// The scrape, in OpenMetrics text.
    pub async fn metrics_text(&self) -> String {
        let now = Readings::new();
        let records = self.store.all().unwrap_or_default();
        for t in self.templates.list().unwrap_or_default() {
            now.pool_ready(&t.name, self.pool_ready(&t.name));
        }
        let mut measured = Vec::new();
        for rec in records.iter().filter(|r| !r.pooled) {
            now.sandbox(rec.state.as_str(), &rec.template);
            if rec.state != SandboxState::Running {
                continue;
            }
            let usage = Usage {
                cpu_ns: self.backend.cpu_usage_ns(&rec.id),
                memory_bytes: self.backend.memory_usage(&rec.id),
                disk_bytes: None,
                net: self.backend.network_bytes(rec.slot),
            };
            measured.push((
                rec.id.clone(),
                self.backend.storage().upper_dir(&rec.id),
                usage,
            ));
        }
        // Walking the writable layers is the slow part: off the async threads, in one go.
        let measured = tokio::task::spawn_blocking(move || {
            measured
                .into_iter()
                .map(|(id, upper, mut usage)| {
                    usage.disk_bytes = Some(tree_size(&upper, Measure::Allocated));
                    (id, usage)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (id, usage) in &measured {
            now.usage(id, usage);
        }
        self.telemetry.encode(&now)
    }
}
