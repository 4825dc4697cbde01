#!/usr/bin/env python3
"""Browser rig: Coppice's browser tools beside Microsoft's playwright-mcp (npm `@playwright/mcp`,
pinned in rigs/browser-clients) driving the same in-sandbox Chromium on the same local pages,
in one run, over MCP stdio with the official Python client.

- ``navigate``: `browser_navigate` to the test page (both answer with the page's snapshot).
- ``click``: `browser_click` on a button that changes the page, answer with the snapshot after.
- ``screenshot``: `browser_take_screenshot` of the viewport.
  playwright-mcp is attached with `--cdp-endpoint` to Coppice's CDP endpoint for the sandbox,
  so both drive one browser; samples interleave the two. It runs at its defaults (it waits
  500 ms to settle after actions) and with `--timeout-settle=0`; both are reported.
- ``first_call``: the first browser call in a fresh sandbox, Chromium's start included.
- ``idle_memory``: PSS of an idle browser (every Chromium process of a sandbox on about:blank),
  averaged over three sandboxes' browsers idle at once.

Targets (browser issue): each action's p50 <= 1.0x playwright-mcp's; first call <= 1.5 s;
<= 150 MiB per idle browser.

Usage: sudo python3 rigs/browser.py [--quick]   Writes rigs/results/browser.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import common
from common import Daemon, metric, percentile

RIG = "browser"
CLIENTS_SRC = common.REPO_ROOT / "rigs" / "browser-clients"
CLIENTS_DIR = Path(os.environ.get("COPPICE_RIG_BROWSER_CLIENTS", "/opt/coppice-rig-browser-clients"))
PAGE = """<!doctype html><html><head><title>Rig page</title></head><body>
<h1>Rig</h1><p id="out">0</p>
<button onclick="out.textContent = +out.textContent + 1">Count</button>
<ul>""" + "".join(f"<li><a href='#i{i}'>item {i}</a></li>" for i in range(50)) + """</ul></body></html>"""


def install_clients() -> Path:
    """`npm ci` of the pinned playwright-mcp into CLIENTS_DIR (once per lock file)."""
    stamp = CLIENTS_DIR / ".installed-lock.json"
    lock = CLIENTS_SRC / "package-lock.json"
    if not (stamp.exists() and stamp.read_bytes() == lock.read_bytes()):
        CLIENTS_DIR.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(CLIENTS_SRC / f, CLIENTS_DIR / f)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS_DIR, check=True)
        shutil.copy(lock, stamp)
    return CLIENTS_DIR / "node_modules" / "@playwright" / "mcp" / "cli.js"


def node() -> str:
    private = Path("/opt/coppice-test-clients/node_modules/.bin/node")
    return str(private) if private.exists() else "node"


def chromium_pss(sid: str) -> tuple[int, int]:
    """(PSS bytes, processes) of the Chromium processes in sandbox ``sid``'s cgroup."""
    pids: set[int] = set()
    for d in common.sandbox_cgroup_dirs(sid):
        for f in d.rglob("cgroup.procs"):
            pids.update(int(p) for p in f.read_text().split())
    total, n = 0, 0
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("chrom"):
            total += common.pss_bytes(pid) or 0
            n += 1
    return total, n


async def call(client, tool: str, args: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = await client.call_tool(tool, args)
    ms = (time.perf_counter() - t0) * 1000
    text = "\n".join(getattr(c, "text", "") for c in r.content)
    if r.is_error:
        raise RuntimeError(f"{tool}: {text[:500]}")
    return ms, text


def button_ref(text: str) -> str:
    m = re.search(r'button "Count"[^\n]*?\[ref=((?:f\d+)?e\d+)\]', text)
    if not m:
        raise RuntimeError(f"no Count button in\n{text[:2000]}")
    return m.group(1)


async def run(a, daemon: Daemon, metrics: list[dict], extra: dict) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    samples = 15 if a.quick else 100
    cli = install_clients()
    mcp_bin = a.coppice.resolve().parent / "coppice-mcp"
    ours = StdioServerParameters(command=str(mcp_bin), env={"COPPICE_SOCKET": str(daemon.socket)})
    async with Client(ours) as c:
        # First call in fresh sandboxes; they then stay idle for the memory figure.
        first, idle = [], []
        for _ in range(3):
            sid = (await c.call_tool("sandbox_create", {"timeout_secs": 3600, "memory": "1G"})).structured_content["sandbox_id"]
            ms, _ = await call(c, "browser_navigate", {"sandbox_id": sid, "url": "about:blank"})
            first.append(ms)
            idle.append(sid)
        await asyncio.sleep(3)
        pss = [chromium_pss(s) for s in idle]
        per = sum(p for p, _ in pss) / len(pss) / (1 << 20)
        metrics.append(metric("first_call", percentile(first, 50), "ms", target="<= 1500", n=len(first),
                              label="first browser_navigate in a fresh sandbox, Chromium's start included"))
        metrics.append(metric("idle_browser_pss", per, "MiB", target="<= 150", browsers=len(pss),
                              processes=[n for _, n in pss]))
        sid = idle[0]
        await call(c, "files_write", {"sandbox_id": sid, "path": "/home/user/rig/index.html", "content": PAGE})
        await call(c, "commands_start", {"sandbox_id": sid, "cmd": "cd /home/user/rig && exec python3 -m http.server 8000"})
        await call(c, "commands_run", {"sandbox_id": sid, "cmd":
                   "for i in $(seq 100); do curl -sf localhost:8000/ >/dev/null && exit 0; sleep 0.1; done; exit 1"})
        url = "http://localhost:8000/index.html"
        endpoint = f"http://127.0.0.1:{daemon.port}/api/v1/sandboxes/{sid}/cdp"
        results: dict[str, dict[str, list[float]]] = {}
        for variant, flags in (("default", []), ("settle0", ["--timeout-settle=0"])):
            # Its snapshots and screenshots also go to files: into a directory of the run's own.
            out_dir = tempfile.mkdtemp(prefix="coppice-rig-pwmcp-")
            ref_params = StdioServerParameters(command=node(), args=[
                str(cli), "--cdp-endpoint", endpoint, "--cdp-header", f"Authorization: Bearer {daemon.token()}",
                "--output-dir", out_dir, *flags], cwd=out_dir)
            async with Client(ref_params) as pw:
                times = {k: [] for k in ("coppice_navigate", "pw_navigate", "coppice_click", "pw_click",
                                         "coppice_screenshot", "pw_screenshot")}
                for _ in range(samples):
                    ms, _ = await call(c, "browser_navigate", {"sandbox_id": sid, "url": url})
                    times["coppice_navigate"].append(ms)
                    ms, _ = await call(pw, "browser_navigate", {"url": url})
                    times["pw_navigate"].append(ms)
                    # Each takes its refs from the page as it now is (a navigation by the other
                    # made new elements), untimed.
                    _, snap = await call(c, "browser_snapshot", {"sandbox_id": sid})
                    ms, _ = await call(c, "browser_click", {"sandbox_id": sid, "target": button_ref(snap)})
                    times["coppice_click"].append(ms)
                    _, snap = await call(pw, "browser_snapshot", {})
                    ms, _ = await call(pw, "browser_click", {"target": button_ref(snap), "element": "Count button"})
                    times["pw_click"].append(ms)
                    ms, _ = await call(c, "browser_take_screenshot", {"sandbox_id": sid})
                    times["coppice_screenshot"].append(ms)
                    ms, _ = await call(pw, "browser_take_screenshot", {})
                    times["pw_screenshot"].append(ms)
                results[variant] = times
            shutil.rmtree(out_dir, ignore_errors=True)
        for variant, times in results.items():
            for action in ("navigate", "click", "screenshot"):
                ours_p50 = percentile(times[f"coppice_{action}"], 50)
                theirs_p50 = percentile(times[f"pw_{action}"], 50)
                metrics.append(metric(f"{action}_p50_vs_playwright_mcp_{variant}", ours_p50, "ms",
                                      {"name": f"@playwright/mcp {variant} p50", "value": theirs_p50},
                                      ratio_target="<= 1.0", n=samples))
        extra["samples"] = {v: {k: [round(x, 2) for x in xs] for k, xs in t.items()} for v, t in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wait-other", type=float, default=0.0)
    ap.add_argument("--output", type=Path, default=common.RESULTS_DIR / f"{RIG}.json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (real sandboxes)")
    common.refuse_if_other_daemon(a.wait_other)
    started = common.now_iso()
    state = common.make_state_dir("coppice-rig-browser-")
    log = state.parent / f"{state.name}.log"
    daemon = Daemon(a.coppice.resolve(), state, pool_size=0, no_network=False, log_path=log)
    metrics: list[dict] = []
    extra: dict = {}
    notes: list[str] = []
    try:
        daemon.start()
        asyncio.run(run(a, daemon, metrics, extra))
    except Exception:
        notes.append(traceback.format_exc()[-1500:])
        traceback.print_exc()
    finally:
        daemon.stop()
        daemon.cleanup()
    extra["notes"] = notes
    path = common.write_results(RIG, started, metrics, extra, path=a.output)
    rows = [[m["name"], m["value"], m["unit"], (m.get("reference") or {}).get("value"), m.get("ratio"),
             m.get("target") or m.get("ratio_target")] for m in metrics]
    common.print_table(rows, ["metric", "coppice", "unit", "reference", "ratio", "target"])
    print(f"wrote {path}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
