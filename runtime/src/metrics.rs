//! The daemon's Prometheus metrics (OpenMetrics text, `GET /metrics`). What happens is
//! recorded as it happens: create latencies (pooled and fresh), policy updates, MCP tool calls,
//! E2B requests. What *is* (sandboxes by state, pool levels, each sandbox's CPU, memory, disk and
//! network bytes) is read at scrape time into a registry of its own, so a gauge never shows a
//! sandbox that is gone.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to ~33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CreateLabels {
    /// `pooled` (a warm sandbox handed out) or `fresh` (started for the call).
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolOutcome {
    tool: String,
    /// `ok` or `error`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    /// The route's pattern (`/sandboxes/{id}`), not the path: one series per route.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    sandbox: String,
}

/// Metrics recorded as things happen.
pub struct Metrics {
    registry: Registry,
    create_seconds: Histograms<CreateLabels>,
    policy_update_seconds: Histogram,
    tool_calls: Family<ToolOutcome, Counter>,
    tool_seconds: Histograms<ToolLabels>,
    e2b_requests: Family<RouteLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty set of recordings.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coppice");
        let create_seconds = Histograms::<CreateLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "sandbox_create_seconds",
            "Time to create a sandbox, by source (pooled or fresh)",
            create_seconds.clone(),
        );
        let policy_update_seconds = latency_histogram();
        registry.register(
            "policy_update_seconds",
            "Time to validate, store and apply a sandbox's network policy",
            policy_update_seconds.clone(),
        );
        let tool_calls = Family::<ToolOutcome, Counter>::default();
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls, by tool and outcome",
            tool_calls.clone(),
        );
        let tool_seconds = Histograms::<ToolLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "mcp_tool_call_seconds",
            "MCP tool call latency, by tool",
            tool_seconds.clone(),
        );
        let e2b_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "e2b_requests",
            "Requests to the E2B API routes, by method, route and status",
            e2b_requests.clone(),
        );
        Metrics {
            registry,
            create_seconds,
            policy_update_seconds,
            tool_calls,
            tool_seconds,
            e2b_requests,
        }
    }

    /// A create answered after `took`, from the pool or not.
    pub fn sandbox_created(&self, pooled: bool, took: Duration) {
        let source = if pooled { "pooled" } else { "fresh" }.to_string();
        self.create_seconds
            .get_or_create(&CreateLabels { source })
            .observe(took.as_secs_f64());
    }

    /// A network policy update put in force after `took`.
    pub fn policy_updated(&self, took: Duration) {
        self.policy_update_seconds.observe(took.as_secs_f64());
    }

    /// An MCP tool call that ended after `took`, well or with an error.
    pub fn tool_called(&self, tool: &str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" }.to_string();
        self.tool_calls
            .get_or_create(&ToolOutcome {
                tool: tool.to_string(),
                outcome,
            })
            .inc();
        self.tool_seconds
            .get_or_create(&ToolLabels {
                tool: tool.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// An E2B API request answered with `status`.
    pub fn e2b_request(&self, method: &str, route: &str, status: u16) {
        self.e2b_requests
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// The scrape: `now`'s readings first, then what was recorded.
    pub fn encode(&self, now: &Readings) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &now.registry);
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_eof(&mut out);
        out
    }
}

/// What is, read at one scrape.
pub struct Readings {
    registry: Registry,
    sandboxes: Family<StateLabels, Gauge>,
    pool_ready: Family<TemplateLabels, Gauge>,
    cpu_seconds: Family<SandboxLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    memory_bytes: Family<SandboxLabels, Gauge>,
    disk_bytes: Family<SandboxLabels, Gauge>,
    net_rx_bytes: Family<SandboxLabels, Gauge>,
    net_tx_bytes: Family<SandboxLabels, Gauge>,
}

impl Default for Readings {
    fn default() -> Self {
        Self::new()
    }
}

impl Readings {
    /// An empty scrape.
    pub fn new() -> Self {
        let r = Readings {
            registry: Registry::with_prefix("coppice"),
            sandboxes: Default::default(),
            pool_ready: Default::default(),
            cpu_seconds: Default::default(),
            memory_bytes: Default::default(),
            disk_bytes: Default::default(),
            net_rx_bytes: Default::default(),
            net_tx_bytes: Default::default(),
        };
        let mut registry = Registry::with_prefix("coppice");
        let help = "Sandboxes handed out, by state and template";
        registry.register("sandboxes", help, r.sandboxes.clone());
        let help = "Warm sandboxes ready in the pool, by template";
        registry.register("pool_ready", help, r.pool_ready.clone());
        // Gauges, not counters, for the per-sandbox totals: a restore starts a sandbox's
        // cgroup and interface afresh, which a counter must never do.
        let help = "CPU time the sandbox has used";
        registry.register("sandbox_cpu_seconds", help, r.cpu_seconds.clone());
        let help = "Memory charged to the sandbox";
        registry.register("sandbox_memory_bytes", help, r.memory_bytes.clone());
        let help = "Bytes in the sandbox's writable layer";
        registry.register("sandbox_disk_bytes", help, r.disk_bytes.clone());
        let help = "Bytes the sandbox received on its network interface";
        registry.register(
            "sandbox_network_receive_bytes",
            help,
            r.net_rx_bytes.clone(),
        );
        let help = "Bytes the sandbox sent on its network interface";
        registry.register(
            "sandbox_network_transmit_bytes",
            help,
            r.net_tx_bytes.clone(),
        );
        Readings { registry, ..r }
    }

    /// One more sandbox in `state`, of `template`.
    pub fn sandbox(&self, state: &str, template: &str) {
        self.sandboxes
            .get_or_create(&StateLabels {
                state: state.to_string(),
                template: template.to_string(),
            })
            .inc();
    }

    /// The ready sandboxes of a template's pool.
    pub fn pool_ready(&self, template: &str, ready: usize) {
        self.pool_ready
            .get_or_create(&TemplateLabels {
                template: template.to_string(),
            })
            .set(ready as i64);
    }

    /// One sandbox's usage; what could not be read is left out.
    pub fn usage(&self, sandbox: &str, usage: &Usage) {
        let l = SandboxLabels {
            sandbox: sandbox.to_string(),
        };
        if let Some(ns) = usage.cpu_ns {
            self.cpu_seconds.get_or_create(&l).set(ns as f64 / 1e9);
        }
        let set = |family: &Family<SandboxLabels, Gauge>, v: Option<u64>| {
            if let Some(v) = v {
                family.get_or_create(&l).set(v as i64);
            }
        };
        set(&self.memory_bytes, usage.memory_bytes);
        set(&self.disk_bytes, usage.disk_bytes);
        set(&self.net_rx_bytes, usage.net.map(|n| n.0));
        set(&self.net_tx_bytes, usage.net.map(|n| n.1));
    }
}

/// A sandbox's resource use at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged now.
    pub memory_bytes: Option<u64>,
    /// Bytes in its writable layer.
    pub disk_bytes: Option<u64>,
    /// (received, sent) by the sandbox.
    pub net: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_holds_readings_and_recordings_once_each() {
        let m = Metrics::new();
        m.sandbox_created(true, Duration::from_millis(3));
        m.tool_called("run_code", false, Duration::from_millis(20));
        m.e2b_request("GET", "/sandboxes/{id}", 404);
        let now = Readings::new();
        now.sandbox("running", "default");
        now.pool_ready("default", 2);
        now.usage(
            "s1",
            &Usage {
                cpu_ns: Some(1_500_000_000),
                net: Some((10, 20)),
                ..Default::default()
            },
        );
        let text = m.encode(&now);
        for line in [
            "coppice_sandboxes{state=\"running\",template=\"default\"} 1",
            "coppice_pool_ready{template=\"default\"} 2",
            "coppice_sandbox_cpu_seconds{sandbox=\"s1\"} 1.5",
            "coppice_sandbox_network_transmit_bytes{sandbox=\"s1\"} 20",
            "coppice_sandbox_create_seconds_count{source=\"pooled\"} 1",
            "coppice_mcp_tool_calls_total{tool=\"run_code\",outcome=\"error\"} 1",
            "coppice_e2b_requests_total{method=\"GET\",route=\"/sandboxes/{id}\",status=\"404\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(
            !text.contains("sandbox_memory_bytes{"),
            "unread values are left out"
        );
    }
}
