//! Warm pools: started sandboxes kept ready per template, refilled in the background, each
//! warmed up (agent answering, code kernel started) before it is handed out.

use std::collections::VecDeque;
use std::time::Duration;

use super::Runtime;
use crate::model::CreateRequest;

impl Runtime {
    pub(super) async fn fill_pools(&self) {
        if self.cfg.pool_size == 0 {
            return;
        }
        for name in self.cfg.pooled_templates() {
            let Ok(template) = self.templates.get(&name) else {
                continue;
            };
            while self.pool_len(&name) < self.cfg.pool_size {
                if let Err(e) = self.check_disk_reserve() {
                    tracing::warn!(template = %name, "not filling the warm pool: {e}");
                    break;
                }
                let req = CreateRequest::default();
                let limits = self.cfg.default_limits.clone();
                match self
                    .start_fresh(&template, limits, &req, Duration::from_secs(1), true)
                    .await
                {
                    Ok(rec) => {
                        self.warm_up(&rec.id).await;
                        // Observable pool readiness (rigs wait for it): warmed and handed out next.
                        self.store.event(Some(&rec.id), "pool_ready", "");
                        self.pool_push(&name, rec.id)
                    }
                    Err(e) => {
                        tracing::warn!(template = %name, "filling the warm pool: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Runs `true` once in a pooled sandbox so the first caller's command does not pay the
    /// sandbox's cold start (first process, loader and libc lookups through a fresh overlay,
    /// the agent's first spawn): measured ~2 ms off the first exec.
    pub(super) async fn warm_up(&self, id: &str) {
        use coppice_envd::process::{ProcessConfig, ProcessEventMessage, StartRequest};
        use futures::StreamExt;
        let req = StartRequest {
            process: ProcessConfig {
                cmd: "/bin/true".into(),
                ..Default::default()
            },
            stdin: Some(false),
            ..Default::default()
        };
        let stream = self
            .agent_of(id)
            .server_stream::<_, ProcessEventMessage>("process.Process/Start", &req, Some(10_000))
            .await;
        match stream {
            Ok(mut events) => while events.next().await.is_some() {},
            Err(e) => tracing::debug!(sandbox = %id, "warming up: {e}"),
        }
        self.warm_kernel(id).await;
    }

    /// Starts the default Python code context (run_code) when the template has a Python
    /// kernel, so the first execution does not wait for the kernel to boot. The agent answers
    /// 400 when the template has none; either way the sandbox is usable.
    pub(super) async fn warm_kernel(&self, id: &str) {
        let req = http::Request::post("/contexts/warm")
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(coppice_envd::client::full_body(
                &b"{\"language\":\"python\"}"[..],
            ))
            .expect("static request");
        let agent = self.agent_of(id);
        match tokio::time::timeout(Duration::from_secs(60), agent.send(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                tracing::debug!(sandbox = %id, "default code context started")
            }
            Ok(Ok(resp)) => {
                tracing::debug!(sandbox = %id, status = %resp.status(), "no code kernel warmed")
            }
            Ok(Err(e)) => tracing::debug!(sandbox = %id, "warming the code kernel: {e}"),
            Err(_) => tracing::warn!(sandbox = %id, "the code kernel did not start within 60s"),
        }
    }

    pub(super) fn pool_push(&self, template: &str, id: String) {
        self.pools
            .lock()
            .expect("pools")
            .entry(template.to_string())
            .or_default()
            .push_back(id);
    }

    pub(super) fn pool_pop(&self, template: &str) -> Option<String> {
        self.pools
            .lock()
            .expect("pools")
            .get_mut(template)?
            .pop_front()
    }

    pub(super) fn pool_len(&self, template: &str) -> usize {
        self.pools
            .lock()
            .expect("pools")
            .get(template)
            .map_or(0, VecDeque::len)
    }

    pub(super) fn pool_remove(&self, template: &str, id: &str) {
        if let Some(q) = self.pools.lock().expect("pools").get_mut(template) {
            q.retain(|x| x != id);
        }
    }

    /// Number of ready sandboxes waiting in the pool of `template`.
    pub fn pool_ready(&self, template: &str) -> usize {
        self.pool_len(template)
    }
}
