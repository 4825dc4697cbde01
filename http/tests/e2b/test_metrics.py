"""`GET /metrics` scraped after real traffic on every surface (E2B SDK, native HTTP, MCP over
stdio) and read with the Prometheus project's own OpenMetrics parser (PyPI `prometheus-client`).

scripts/test.sh runs it.

By hand (root): flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_metrics.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
from e2b import NotFoundException, Sandbox
from prometheus_client.openmetrics.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]


def samples(text: str) -> dict[str, list]:
    """Every sample by its name (`coppice_sandboxes`, `..._count`, ...)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(found: dict, name: str, **labels) -> float | None:
    for s in found.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def mcp_stdio_calls(socket: Path) -> list[dict]:
    """Two tool calls through `coppice-mcp` (stdio, through the daemon): one good, one unknown."""
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "metrics-test", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "sandbox_list", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "no_such_tool", "arguments": {}}},
    ]
    p = subprocess.run([str(REPO / "target/release/coppice-mcp")],
                       input="".join(json.dumps(m) + "\n" for m in msgs), capture_output=True,
                       text=True, timeout=60,
                       env={"COPPICE_SOCKET": str(socket), "PATH": os.environ["PATH"]})
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def test_metrics_scrape(daemon):
    url = f"http://127.0.0.1:{daemon.port}"
    bearer = {"Authorization": f"Bearer {daemon.token()}"}
    sbx = Sandbox.create(timeout=120)
    try:
        try:
            Sandbox.get_info("nosuchsandbox")
        except NotFoundException:
            pass
        # A DNS query to the sandbox's resolver crosses its interface.
        sbx.commands.run("getent hosts example.com || true")
        r = httpx.put(f"{url}/api/v1/sandboxes/{sbx.sandbox_id}/network", headers=bearer,
                      json={"deny": [{"cidr": "10.0.0.0/8"}]}, timeout=30)
        assert r.status_code == 200, r.text
        replies = {r.get("id"): r for r in mcp_stdio_calls(daemon.socket)}
        assert "result" in replies[2] and not replies[2]["result"].get("isError"), replies
        assert "error" in replies[3] or replies[3]["result"].get("isError"), replies

        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401, "behind the token"
        r = httpx.get(f"{url}/metrics", headers=bearer, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
        found = samples(r.text)
        sid = sbx.sandbox_id

        assert value(found, "coppice_sandboxes", state="running", template="default") >= 1
        assert value(found, "coppice_pool_ready", template="default") is not None
        assert value(found, "coppice_sandbox_memory_bytes", sandbox=sid) > 0
        assert value(found, "coppice_sandbox_cpu_seconds", sandbox=sid) > 0
        assert value(found, "coppice_sandbox_disk_bytes", sandbox=sid) >= 0
        assert value(found, "coppice_sandbox_network_transmit_bytes", sandbox=sid) > 0
        assert value(found, "coppice_sandbox_network_receive_bytes", sandbox=sid) >= 0
        created = sum(value(found, "coppice_sandbox_create_seconds_count", source=s) or 0
                      for s in ("pooled", "fresh"))
        assert created >= 1, found.get("coppice_sandbox_create_seconds_count")
        assert value(found, "coppice_policy_update_seconds_count") >= 1
        assert value(found, "coppice_mcp_tool_calls_total", tool="sandbox_list", outcome="ok") >= 1
        assert value(found, "coppice_mcp_tool_calls_total", tool="unknown", outcome="error") >= 1
        assert value(found, "coppice_mcp_tool_call_seconds_count", tool="sandbox_list") >= 1
        e2b = [(s.labels, s.value) for s in found["coppice_e2b_requests_total"]]
        assert value(found, "coppice_e2b_requests_total", method="POST", route="/v2/sandboxes",
                     status="201") >= 1, e2b
        assert value(found, "coppice_e2b_requests_total", method="GET", route="/sandboxes/{id}",
                     status="404") >= 1, e2b
    finally:
        sbx.kill()
    # A killed sandbox leaves the per-sandbox gauges at once.
    after = samples(httpx.get(f"{url}/metrics", headers=bearer, timeout=30).text)
    assert value(after, "coppice_sandbox_memory_bytes", sandbox=sid) is None
