#!/usr/bin/env python3
"""Snapshot and fork rig, beside references measured in the same run.

- Snapshot latency (API call: freeze, copy of the upper, thaw, record) for a sandbox whose
  upper holds 10 MB in 10k files, and one holding 500 MB; reference: `cp -a` of the same upper
  on the host, same filesystem (what a snapshot does at its core).
- Fan-out: N forks (100) from one snapshot in one call, until every fork's agent has answered
  an exec of `true` (wall time), and the marginal host memory per idle fork (MemAvailable
  delta / N, and the forks' mean cgroup charge); beside N unpooled creates in the same run
  (pool 0, same concurrency of exec checks).

Python 3.11 stdlib only; run as root from the repository root after a release build:

    sudo python3 rigs/snapshot_fork.py            # full run
    sudo python3 rigs/snapshot_fork.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Api, Daemon  # noqa: E402

TARGETS = {
    "snapshot_10mb_ms": "<= 50",
    "fanout_100_s": "<= 1",
    "mem_per_fork_mib": "<= 2",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coppice", type=Path, default=Path("target/release/coppice"))
    p.add_argument("--quick", action="store_true", help="fewer samples (CI)")
    p.add_argument("--forks", type=int, default=100)
    p.add_argument("--samples", type=int, default=None, help="snapshot samples (5; --quick 2)")
    p.add_argument("--big-mb", type=int, default=500)
    p.add_argument("--wait-other", type=float, default=0.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.samples is None:
        a.samples = 2 if a.quick else 5
    return a


def api_json(api: Api, method: str, path: str, body=None, ok=(200, 201, 204)):
    r = api._request(method, path, body)
    data = r.read()
    if r.status not in ok:
        raise common.ApiError(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data) if data else None


def run_in(api: Api, sid: str, script: str) -> None:
    ev, drain = api.exec_until_exit(sid, ["bash", "-c", script])
    drain()
    if ev.get("exit_code") != 0:
        raise RuntimeError(f"{script[:60]!r} in {sid}: {ev}")


def measure_snapshots(daemon: Daemon, label: str, fill: str, samples: int) -> dict:
    api = daemon.api(timeout=600)
    sb = api.create({"timeout_secs": 3600, "memory": "1G"})
    sid = sb["id"]
    run_in(api, sid, fill)
    upper = common.upper_dir(daemon.state_dir, sid)
    size = int(subprocess.run(["du", "-sb", str(upper)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    files = int(subprocess.run(f"find {upper} | wc -l", shell=True, capture_output=True,
                               text=True, check=True).stdout)
    snap_ms, cp_ms = [], []
    scratch = daemon.state_dir / f"cp-ref-{label}"
    for _ in range(samples):
        subprocess.run(["sync"], check=True)
        t0 = time.monotonic()
        snap = api_json(api, "POST", f"/api/v1/sandboxes/{sid}/snapshots", {})
        snap_ms.append((time.monotonic() - t0) * 1000)
        api_json(api, "DELETE", f"/api/v1/snapshots/{snap['snapshot_id']}")
        subprocess.run(["sync"], check=True)
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", "--no-target-directory", str(upper),
                        str(scratch)], check=True)
        cp_ms.append((time.monotonic() - t0) * 1000)
        shutil.rmtree(scratch)
    api.delete(sid)
    api.close()
    return {"label": label, "upper_bytes": size, "upper_entries": files,
            "snapshot_ms": common.summary(snap_ms), "cp_a_ms": common.summary(cp_ms)}


def avail() -> int:
    vals = []
    for _ in range(5):
        vals.append(common.meminfo()["MemAvailable"])
        time.sleep(0.1)
    return sorted(vals)[len(vals) // 2]


def answer_all(daemon: Daemon, ids: list[str]) -> list[str]:
    """Execs `true` in every sandbox (10 threads); returns the errors."""
    def one(chunk: list[str]) -> list[str]:
        api = daemon.api(timeout=120)
        errs = []
        try:
            for sid in chunk:
                try:
                    ev, drain = api.exec_until_exit(sid, ["true"])
                    drain()
                    if ev.get("exit_code") != 0:
                        errs.append(f"{sid}: {ev}")
                except Exception as e:  # counted, not fatal
                    errs.append(f"{sid}: {e}")
        finally:
            api.close()
        return errs
    chunks = [ids[i::10] for i in range(10)]
    with cf.ThreadPoolExecutor(10) as ex:
        return [e for errs in ex.map(one, chunks) for e in errs]


def delete_all(daemon: Daemon, ids: list[str]) -> None:
    def one(chunk):
        api = daemon.api(timeout=120)
        try:
            for sid in chunk:
                try:
                    api.delete(sid)
                except Exception:
                    pass
        finally:
            api.close()
    with cf.ThreadPoolExecutor(10) as ex:
        list(ex.map(one, [ids[i::10] for i in range(10)]))


def cgroup_mean(ids: list[str]) -> float | None:
    vals = [v for v in (common.cgroup_memory_bytes(s) for s in ids) if v is not None]
    return sum(vals) / len(vals) if vals else None


def measure_fanout(daemon: Daemon, n: int, settle: float) -> dict:
    api = daemon.api(timeout=600)
    parent = api.create({"timeout_secs": 3600})["id"]
    run_in(api, parent, "mkdir -p /home/user/work && seq 1 1000 > /home/user/work/data")
    snap = api_json(api, "POST", f"/api/v1/sandboxes/{parent}/snapshots", {})["snapshot_id"]
    time.sleep(settle)
    before = avail()
    t0 = time.monotonic()
    res = api_json(api, "POST", f"/api/v1/snapshots/{snap}/fork",
                   {"count": n, "timeout_secs": 3600})
    fork_call_s = time.monotonic() - t0
    ids = [f["sandbox"]["id"] for f in res["forks"] if f.get("sandbox")]
    errors = answer_all(daemon, ids)
    fork_wall_s = time.monotonic() - t0
    time.sleep(settle)
    after = avail()
    fork_cg = cgroup_mean(ids)
    delete_all(daemon, ids)

    # Reference: N unpooled creates in parallel (16 at a time, as forks start), same checks.
    time.sleep(settle)
    before_c = avail()
    t0 = time.monotonic()

    def create_one(_):
        a = daemon.api(timeout=120)
        try:
            return a.create({"timeout_secs": 3600})["id"]
        finally:
            a.close()
    with cf.ThreadPoolExecutor(16) as ex:
        created = [f.result() for f in [ex.submit(create_one, i) for i in range(n)]]
    create_call_s = time.monotonic() - t0
    cerrors = answer_all(daemon, created)
    create_wall_s = time.monotonic() - t0
    time.sleep(settle)
    after_c = avail()
    create_cg = cgroup_mean(created)
    delete_all(daemon, created)
    api.delete(parent)
    for _ in range(50):
        try:
            api_json(api, "DELETE", f"/api/v1/snapshots/{snap}")
            break
        except common.ApiError:
            time.sleep(0.2)
    api.close()
    return {
        "n": n, "forks_created": len(ids), "fork_failed": res["failed"], "fork_errors": errors[:5],
        "fork_call_s": fork_call_s, "fork_wall_s": fork_wall_s,
        "fork_memavailable_per_sandbox": (before - after) / max(len(ids), 1),
        "fork_cgroup_per_sandbox": fork_cg,
        "creates": len(created), "create_errors": cerrors[:5],
        "create_call_s": create_call_s, "create_wall_s": create_wall_s,
        "create_memavailable_per_sandbox": (before_c - after_c) / max(len(created), 1),
        "create_cgroup_per_sandbox": create_cg,
    }


def main() -> int:
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("snapshot_fork: run as root (the daemon needs it)")
    binary = a.coppice if a.coppice.is_absolute() else common.REPO_ROOT / a.coppice
    if not binary.is_file():
        sys.exit(f"snapshot_fork: {binary} not found (cargo build --release --workspace --bins)")
    common.refuse_if_other_daemon(a.wait_other)
    started_at = common.now_iso()
    state = common.make_state_dir("coppice-rig-")
    log_path = state.parent / f"{state.name}.log"
    daemon = Daemon(binary, state / "state", 0, False, log_path)
    ok = False
    try:
        daemon.start()
        print("snapshot of 10 MB in 10k files ...", flush=True)
        small = measure_snapshots(
            daemon, "10mb_10k",
            "mkdir -p /home/user/small && cd /home/user/small && python3 -c \"\n"
            "import os\nblob = os.urandom(1024)\n"
            "for d in range(100):\n    os.makedirs(str(d), exist_ok=True)\n"
            "    for f in range(100):\n        open(f'{d}/{f}', 'wb').write(blob)\n\"",
            a.samples)
        print(f"snapshot of {a.big_mb} MB ...", flush=True)
        big = measure_snapshots(
            daemon, f"{a.big_mb}mb",
            f"mkdir -p /home/user/big && for i in $(seq 1 {a.big_mb // 100}); do "
            f"head -c 100M /dev/urandom > /home/user/big/f$i; done",
            max(1, a.samples // 2))
        print(f"fan-out of {a.forks} forks vs {a.forks} unpooled creates ...", flush=True)
        fan = measure_fanout(daemon, a.forks, a.settle)
        ok = True
    finally:
        daemon.stop()
        daemon.cleanup()
        if ok:
            shutil.rmtree(state, ignore_errors=True)
            try:
                log_path.unlink()
            except OSError:
                pass
        else:
            print(f"daemon log kept: {log_path}", file=sys.stderr)

    mib = 1 << 20
    metrics = [
        common.metric("snapshot_10mb_10k_p50", small["snapshot_ms"]["p50"], "ms",
                      {"name": "cp -a of the same upper", "value": small["cp_a_ms"]["p50"]},
                      TARGETS["snapshot_10mb_ms"], upper_bytes=small["upper_bytes"],
                      upper_entries=small["upper_entries"]),
        common.metric(f"snapshot_{a.big_mb}mb_p50", big["snapshot_ms"]["p50"], "ms",
                      {"name": "cp -a of the same upper", "value": big["cp_a_ms"]["p50"]},
                      upper_bytes=big["upper_bytes"]),
        common.metric(f"fanout_{a.forks}_forks_until_all_answer", fan["fork_wall_s"], "s",
                      {"name": f"{a.forks} unpooled creates until all answer",
                       "value": fan["create_wall_s"]},
                      TARGETS["fanout_100_s"] if a.forks == 100 else None,
                      fork_call_s=fan["fork_call_s"], create_call_s=fan["create_call_s"]),
        common.metric("memory_per_idle_fork_memavailable", fan["fork_memavailable_per_sandbox"] / mib,
                      "MiB", {"name": "per unpooled sandbox",
                              "value": fan["create_memavailable_per_sandbox"] / mib},
                      TARGETS["mem_per_fork_mib"]),
        common.metric("memory_per_idle_fork_cgroup", (fan["fork_cgroup_per_sandbox"] or 0) / mib, "MiB",
                      {"name": "per unpooled sandbox",
                       "value": (fan["create_cgroup_per_sandbox"] or 0) / mib}),
    ]
    print()
    common.print_table(
        [[m["name"], m["value"], m["unit"], (m.get("reference") or {}).get("value"), m.get("ratio"),
          m.get("target", ""), m.get("target_met", "")] for m in metrics],
        ["metric", "coppice", "unit", "reference", "ratio", "target", "met"])
    print(f"\nforks: {fan['forks_created']}/{fan['n']} created, {len(fan['fork_errors'])} exec errors;"
          f" creates: {fan['creates']}, {len(fan['create_errors'])} exec errors")
    path = common.write_results("snapshot_fork", started_at, metrics,
                                {"snapshots": [small, big], "fanout": fan, "quick": a.quick},
                                path=a.out)
    print(f"results: {path}")
    failed = fan["fork_failed"] or fan["fork_errors"] or fan["create_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
