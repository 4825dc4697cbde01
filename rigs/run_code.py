#!/usr/bin/env python3
"""run_code rig: what a `1+1` round trip costs through a warm kernel, beside what an agent
pays without one (`python3 -c 'print(1+1)'` started fresh in the same sandbox), in the same run.

Warm round trips, interleaved sample by sample against one private daemon and one sandbox:
- ``execute``: ``POST /api/v1/sandboxes/{id}/envd/execute {"code": "1+1"}`` (the E2B
  code-interpreter stream through the daemon's agent proxy, what port 49999 forwards), read to
  ``end_of_execution``; the main result must be ``2``.
- ``mcp_stdio``: ``tools/call run_code {"code": "1+1"}`` through ``coppice-mcp`` joining the
  daemon (a raw JSON-RPC client, see mcp_overhead.py).
- reference ``python3_c``: ``POST /api/v1/sandboxes/{id}/exec {"cmd": ["python3", "-c",
  "print(1+1)"]}`` to its exit event.

First call on a fresh pooled sandbox: take a sandbox from the warm pool (whose default Python
kernel the pool started), time its first ``/execute 1+1``; the reference is the first
``python3 -c 'print(1+1)'`` in another fresh pooled sandbox.

Targets (SPECIFICATION.md): warm ``1+1`` <= 5 ms p50; first call on a pooled sandbox <= 100 ms.

Usage: sudo python3 rigs/run_code.py [--quick] [--samples N] [--fresh N]
Writes rigs/results/run_code.json (shared shape, see rigs/README.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Api, Daemon, metric  # noqa: E402
from mcp_overhead import McpStdio  # noqa: E402

RIG = "run_code"
WARM_TARGET_MS = 5.0
FIRST_TARGET_MS = 100.0


class Execute:
    """/execute through the daemon's agent proxy, one persistent connection."""

    def __init__(self, port: int, sid: str):
        self.path = f"/api/v1/sandboxes/{sid}/envd/execute"
        self.headers = {"Content-Type": "application/json", **common.auth(port)}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def one_plus_one(self) -> None:
        self.conn.request("POST", self.path, body=b'{"code":"1+1"}', headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"/execute: HTTP {r.status}: {data[:300]!r}")
        lines = [json.loads(x) for x in data.splitlines()]
        main = [x for x in lines if x.get("type") == "result" and x.get("is_main_result")]
        if not main or main[0].get("text") != "2" or lines[-1].get("type") != "end_of_execution":
            raise RuntimeError(f"/execute: unexpected lines {lines}")

    def close(self) -> None:
        self.conn.close()


def python_c(api: Api, sid: str) -> Callable[[], None]:
    def go() -> None:
        ev, drain = api.exec_until_exit(sid, ["python3", "-c", "print(1+1)"])
        drain()
        if ev.get("exit_code") != 0:
            raise RuntimeError(f"python3 -c: {ev}")
    return go


def measure(ops: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, dict]:
    out = {k: {"lat_ms": [], "errors": []} for k in ops}
    names = list(ops)
    for _ in range(warmup):
        for k in names:
            ops[k]()
    for i in range(n):
        order = names[i % len(names):] + names[:i % len(names)]
        for k in order:
            t0 = time.perf_counter()
            try:
                ops[k]()
            except Exception as e:  # noqa: BLE001 - reported, not timed
                out[k]["errors"].append(f"{type(e).__name__}: {e}"[:300])
                continue
            out[k]["lat_ms"].append((time.perf_counter() - t0) * 1000)
    return out


def first_calls(daemon: Daemon, api: Api, n: int) -> dict[str, dict]:
    """First /execute on fresh pooled sandboxes, alternating with first python3 -c."""
    out = {"execute_first": {"lat_ms": [], "errors": []}, "python3_c_first": {"lat_ms": [], "errors": []}}
    for i in range(2 * n):
        daemon.wait_pool_full(timeout=300)
        kind = "execute_first" if i % 2 == 0 else "python3_c_first"
        sid = api.create({"timeout_secs": 120})["id"]
        try:
            t0 = time.perf_counter()
            if kind == "execute_first":
                ex = Execute(daemon.port, sid)
                ex.one_plus_one()
                ex.close()
            else:
                python_c(api, sid)()
            out[kind]["lat_ms"].append((time.perf_counter() - t0) * 1000)
        except Exception as e:  # noqa: BLE001
            out[kind]["errors"].append(f"{type(e).__name__}: {e}"[:300])
        finally:
            api.delete(sid)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    ap.add_argument("--quick", action="store_true", help="small sample counts (CI smoke run)")
    ap.add_argument("--samples", type=int, default=None, help="warm samples per path (300; --quick 40)")
    ap.add_argument("--fresh", type=int, default=None, help="fresh pooled sandboxes per kind (10; --quick 3)")
    ap.add_argument("--wait-other", type=float, default=0.0,
                    help="wait up to this many seconds for another coppice daemon to stop (default: refuse)")
    ap.add_argument("--output", type=Path, default=common.RESULTS_DIR / f"{RIG}.json")
    a = ap.parse_args()
    samples = a.samples or (40 if a.quick else 300)
    fresh = a.fresh or (3 if a.quick else 10)
    warmup = 3 if a.quick else 10
    coppice = a.coppice.resolve()
    mcp_bin = coppice.parent / "coppice-mcp"
    if os.geteuid() != 0:
        sys.exit("run as root (real sandboxes)")
    common.refuse_if_other_daemon(a.wait_other)
    started = common.now_iso()
    state = common.make_state_dir("coppice-rig-runcode-")
    log = state.parent / f"{state.name}.log"
    daemon = Daemon(coppice, state, pool_size=1, no_network=False, log_path=log)
    ok = False
    try:
        daemon.start()
        api = daemon.api()
        sid = api.create({"timeout_secs": 1800})["id"]
        ex = Execute(daemon.port, sid)
        mcp = McpStdio(mcp_bin, daemon.socket, state.parent / f"{state.name}.mcp.log")
        mcp.sid = sid

        def mcp_call() -> None:
            r = mcp.call("run_code", {"sandbox_id": sid, "code": "1+1"})
            if r["results"][0]["data"].get("text") != "2":
                raise RuntimeError(f"run_code: {r}")

        warm = measure({"execute": ex.one_plus_one, "mcp_stdio": mcp_call, "python3_c": python_c(api, sid)},
                       samples, warmup)
        mcp.close()
        ex.close()
        api.delete(sid)
        first = first_calls(daemon, api, fresh)

        metrics = []
        ref = warm["python3_c"]["lat_ms"]
        for path in ("execute", "mcp_stdio", "python3_c"):
            lat = warm[path]["lat_ms"]
            for p, q in (("p50", 50), ("p99", 99)):
                rv = common.percentile(ref, q) if path != "python3_c" else None
                metrics.append(metric(f"warm_1plus1_{path}_{p}", common.percentile(lat, q), "ms",
                                      reference={"name": f"python3_c_{p}", "value": rv} if rv else None,
                                      target=f"<= {WARM_TARGET_MS:g} ms" if p == "p50" and path != "python3_c" else None,
                                      n=len(lat), errors=len(warm[path]["errors"])))
        fref = common.percentile(first["python3_c_first"]["lat_ms"], 50)
        for kind in ("execute_first", "python3_c_first"):
            lat = first[kind]["lat_ms"]
            metrics.append(metric(f"pooled_{kind}_p50", common.percentile(lat, 50), "ms",
                                  reference={"name": "pooled_python3_c_first_p50", "value": fref}
                                  if kind == "execute_first" and fref else None,
                                  target=f"<= {FIRST_TARGET_MS:g} ms" if kind == "execute_first" else None,
                                  n=len(lat), errors=len(first[kind]["errors"]), max=max(lat) if lat else None))
        path = common.write_results(RIG, started, metrics, path=a.output)

        rows = []
        for k, r in list(warm.items()) + list(first.items()):
            s = common.summary(r["lat_ms"])
            rows.append([k, s["n"], s["p50"], s["p95"], s["p99"], s["max"], len(r["errors"])])
        print("\n== 1+1 round trips (ms)")
        common.print_table(rows, ["path", "n", "p50", "p95", "p99", "max", "err"])
        for m in metrics:
            if "ratio" in m:
                print(f"   {m['name']}: {m['value']} ms = {m['ratio']}x {m['reference']['name']}")
        misses = [m for m in metrics if m.get("target_met") is False]
        for m in misses:
            print(f"   target missed: {m['name']} = {m['value']} {m['unit']} (target {m['target']})")
        errs = [e for r in list(warm.values()) + list(first.values()) for e in r["errors"]]
        if errs:
            print("errors:", errs[:5])
        print(f"results: {path}")
        ok = not errs
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print(daemon.log_tail(40))
    finally:
        daemon.stop()
        daemon.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
