#!/usr/bin/env python3
"""Rig `e2b_compat`: the unmodified E2B Python SDK against Coppice, beside Coppice's own CLI in
the same run. Needs PyPI `e2b` (scripts/setup.sh installs the pinned version); run as root.

Per sample, with a warm pool refilled (untimed) before each one:
  - E2B SDK: `Sandbox.create()`, `commands.run("true")`, `kill()` (API and envd traffic on
    one loopback port, as with E2B_API_URL = E2B_SANDBOX_URL);
  - reference: `coppice sandbox create`, `coppice exec ID -- true`, `coppice sandbox kill ID`
    (processes over the unix socket; includes the CLI's own process start).
Reports p50/p95 of each step and of the whole, and the SDK/CLI ratio.
Target (SPECIFICATION.md): SDK create p50 <= 20 ms on loopback.

Usage:  sudo python3 rigs/e2b_compat.py [--quick] [--samples N] [--coppice PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Daemon, metric, summary  # noqa: E402

RIG = "e2b_compat"
CREATE_P50_TARGET_MS = 20.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    p.add_argument("--quick", action="store_true", help="10 samples (CI smoke run)")
    p.add_argument("--samples", type=int, default=None, help="samples per side (default 50; --quick 10)")
    p.add_argument("--wait-other", type=float, default=0.0,
                   help="wait up to this many seconds for another coppice daemon to stop (default: refuse)")
    return p.parse_args()


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def main() -> int:
    args = parse_args()
    n = args.samples or (10 if args.quick else 50)
    common.refuse_if_other_daemon(args.wait_other)
    started = common.now_iso()
    key = "e2b_" + uuid.uuid4().hex
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"coppice-rig-{RIG}"
    tmp.mkdir(parents=True, exist_ok=True)
    d = Daemon(args.coppice, tmp / "state", pool_size=2, no_network=False, log_path=tmp / "daemon.log",
               env={"COPPICE_E2B_API_KEY": key})
    d.start()
    url = f"http://127.0.0.1:{d.port}"
    os.environ.update({"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": key})
    from e2b import Sandbox  # after the environment is set

    sdk = {"create": [], "run": [], "kill": [], "total": []}
    cli = {"create": [], "run": [], "kill": [], "total": []}
    cli_base = [str(args.coppice), "--socket", str(d.socket)]
    try:
        # One untimed round each: imports, connection pools, page cache.
        Sandbox.create().kill()
        d.wait_pool_full()
        for _ in range(n):
            d.wait_pool_full()
            t0 = time.perf_counter()
            s = Sandbox.create()
            sdk["create"].append(ms(t0))
            t1 = time.perf_counter()
            s.commands.run("true")
            sdk["run"].append(ms(t1))
            t2 = time.perf_counter()
            s.kill()
            sdk["kill"].append(ms(t2))
            sdk["total"].append(ms(t0))

            d.wait_pool_full()
            t0 = time.perf_counter()
            sid = subprocess.run(cli_base + ["sandbox", "create"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            cli["create"].append(ms(t0))
            t1 = time.perf_counter()
            subprocess.run(cli_base + ["exec", sid, "--", "true"], check=True, capture_output=True)
            cli["run"].append(ms(t1))
            t2 = time.perf_counter()
            subprocess.run(cli_base + ["sandbox", "kill", sid], check=True, capture_output=True)
            cli["kill"].append(ms(t2))
            cli["total"].append(ms(t0))
    finally:
        d.stop()
        d.cleanup()

    metrics = []
    rows = []
    for step in ("create", "run", "kill", "total"):
        a, b = summary(sdk[step]), summary(cli[step])
        target = f"<= {CREATE_P50_TARGET_MS}" if step == "create" else None
        metrics.append(metric(f"e2b_sdk_{step}_p50", a["p50"], "ms",
                              reference={"name": f"coppice_cli_{step}_p50", "value": b["p50"]},
                              target=target, samples=n, p95=a["p95"], reference_p95=b["p95"]))
        rows.append([step, a["p50"], a["p95"], b["p50"], b["p95"],
                     (a["p50"] / b["p50"]) if b["p50"] else None])
    common.print_table(rows, ["step", "sdk p50 ms", "sdk p95 ms", "cli p50 ms", "cli p95 ms", "ratio p50"])
    path = common.write_results(RIG, started, metrics)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
