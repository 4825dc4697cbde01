#!/usr/bin/env python3
"""Memory snapshot and memory fork rig (CRIU), beside the cold path in the same run.

- Memory snapshot of a sandbox whose Python kernel has imported pandas and numpy and holds
  `x = 41` (API call: freeze, file snapshot, CRIU dump, thaw); the image size and the
  sandbox's memory (its cgroup charge) beside it.
- Forks of that snapshot, 1, 10 and 50 (--quick: 1 and 10) in one call, until every fork's
  kernel has answered `x` (wall time), and the host memory per fork (MemAvailable delta / N).
- Pause tiers (decision 0013) of the same sandbox: a memory pause (freeze + checkpoint to
  disk); a resume from memory (a thaw) until the kernel answers `x`; and, once the pause has
  left memory (`pause_in_memory_secs = 1` here), a resume from the checkpoint until it answers.
- A checkpoint-warmed template (decision 0014; a second daemon with `[warm] default = ...` the
  same imports and `x`): create until the first run_code answers `x`, unpooled.
- Reference: the cold path to the same state: create a sandbox, start its kernel, import
  pandas and numpy, set `x`, until it answers.

Python 3.11 stdlib only; run as root from the repository root after scripts/build.sh, with CRIU
installed (scripts/install-criu.sh):

    sudo python3 rigs/memory_fork.py            # full run
    sudo python3 rigs/memory_fork.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Daemon  # noqa: E402

TARGETS = {
    "snapshot_ms": "<= 150",
    "fork_1_ms": "<= 60",
    "fork_10_ms": "<= 600",
}
WARM = "import pandas, numpy\nx = 41"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coppice", type=Path, default=Path("target/release/coppice"))
    p.add_argument("--quick", action="store_true", help="fewer samples and forks (CI)")
    p.add_argument("--samples", type=int, default=None, help="snapshot and cold samples (5; --quick 2)")
    p.add_argument("--wait-other", type=float, default=0.0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.samples is None:
        a.samples = 2 if a.quick else 5
    return a


class Client:
    def __init__(self, port: int):
        self.port = port
        self.headers = {"Content-Type": "application/json", **common.auth(port)}

    def call(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        c.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:400]!r}")
        return json.loads(data) if data else None

    def answer(self, sid: str, code: str) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        c.request("POST", f"/api/v1/sandboxes/{sid}/envd/execute", body=json.dumps({"code": code}),
                  headers=self.headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError(f"/execute: HTTP {r.status}: {data[:300]!r}")
        lines = [json.loads(x) for x in data.splitlines()]
        main = [x["text"] for x in lines if x.get("type") == "result" and x.get("is_main_result")]
        errors = [x for x in lines if x.get("type") == "error"]
        if errors:
            raise RuntimeError(f"/execute: {errors}")
        return main[0] if main else ""


def avail() -> int:
    vals = []
    for _ in range(5):
        vals.append(common.meminfo()["MemAvailable"])
        time.sleep(0.1)
    return sorted(vals)[len(vals) // 2]


def cold_path(api: Client) -> tuple[float, str]:
    """Create, kernel, imports, x: until it answers. Returns (seconds, sandbox id)."""
    t0 = time.monotonic()
    sid = api.call("POST", "/api/v1/sandboxes", {"timeout_secs": 900})["id"]
    if api.answer(sid, WARM + "\nx") != "41":
        raise RuntimeError("the cold kernel did not answer x")
    return time.monotonic() - t0, sid


def forks_until_answer(api: Client, snap: str, n: int) -> dict:
    before = avail()
    t0 = time.monotonic()
    res = api.call("POST", f"/api/v1/snapshots/{snap}/fork", {"count": n})
    call_s = time.monotonic() - t0
    ids = [f["sandbox"]["id"] for f in res["forks"] if f.get("sandbox")]

    def one(sid: str) -> str | None:
        try:
            got = api.answer(sid, "x")
            return None if got == "41" else f"{sid}: x is {got!r}"
        except Exception as e:  # counted, not fatal
            return f"{sid}: {e}"

    with cf.ThreadPoolExecutor(10) as ex:
        errors = [e for e in ex.map(one, ids) if e]
    wall_s = time.monotonic() - t0
    time.sleep(1.0)
    after = avail()
    cg = [v for v in (common.cgroup_memory_bytes(s) for s in ids) if v is not None]
    out = {
        "n": n, "created": len(ids), "failed": res["failed"],
        "fork_errors": [f["error"] for f in res["forks"] if f.get("error")][:5], "answer_errors": errors[:5],
        "call_s": call_s, "wall_s": wall_s,
        "memavailable_per_fork": (before - after) / max(len(ids), 1),
        "cgroup_per_fork": sum(cg) / len(cg) if cg else None,
    }
    for sid in ids:
        try:
            api.call("DELETE", f"/api/v1/sandboxes/{sid}", ok=(204, 404))
        except Exception:
            pass
    return out


def warm_creates(api: Client, samples: int) -> list[float]:
    """Milliseconds from create to `x` answered on a warm template (once its checkpoint is made)."""
    deadline = time.monotonic() + 300
    while not [s for s in api.call("GET", "/api/v1/snapshots")
               if s["metadata"].get("coppice.implicit") == "warm"]:
        if time.monotonic() > deadline:
            raise RuntimeError("no warm checkpoint within 300 s")
        time.sleep(0.2)
    out = []
    for _ in range(samples):
        t0 = time.monotonic()
        sid = api.call("POST", "/api/v1/sandboxes", {"timeout_secs": 900})["id"]
        if api.answer(sid, "x") != "41":
            raise RuntimeError("the warm kernel did not answer x")
        out.append((time.monotonic() - t0) * 1000)
        api.call("DELETE", f"/api/v1/sandboxes/{sid}", ok=(204, 404))
    return out


def pause_tiers(api: Client, sid: str, samples: int) -> dict[str, list[float]]:
    """Milliseconds of: the pause call; a resume from memory until the kernel answers; a
    resume from the on-disk checkpoint (after the pause left memory) until it answers."""
    out: dict[str, list[float]] = {"pause": [], "resume_from_memory": [], "resume_from_disk": []}
    for _ in range(samples):
        for tier in ("resume_from_memory", "resume_from_disk"):
            t0 = time.monotonic()
            api.call("POST", f"/api/v1/sandboxes/{sid}/pause", {"kind": "memory"})
            out["pause"].append((time.monotonic() - t0) * 1000)
            if tier == "resume_from_disk":
                deadline = time.monotonic() + 60
                while api.call("GET", f"/api/v1/sandboxes/{sid}/events")[-1]["kind"] != "paused-to-disk":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the pause did not leave memory")
                    time.sleep(0.1)
            t0 = time.monotonic()
            r = api.call("POST", f"/api/v1/sandboxes/{sid}/resume", {})
            answer = api.answer(sid, "x")
            out[tier].append((time.monotonic() - t0) * 1000)
            want = "thawed" if tier == "resume_from_memory" else "restored"
            if r["resumed"] != want or answer != "41":
                raise RuntimeError(f"{tier}: resumed {r['resumed']}, x = {answer!r}")
    return out


def main() -> int:
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("memory_fork: run as root (the daemon needs it)")
    binary = a.coppice if a.coppice.is_absolute() else common.REPO_ROOT / a.coppice
    if not binary.is_file():
        sys.exit(f"memory_fork: {binary} not found (scripts/build.sh)")
    common.refuse_if_other_daemon(a.wait_other)
    started_at = common.now_iso()
    state = common.make_state_dir("coppice-rig-")
    log_path = state.parent / f"{state.name}.log"
    config = state / "coppice.toml"
    config.write_text("pause_in_memory_secs = 1\n")
    daemon = Daemon(binary, state / "state", 0, False, log_path, config=config)
    ok = False
    try:
        daemon.start()
        api = Client(daemon.port)
        print("cold path: create, kernel, import pandas + numpy, x ...", flush=True)
        cold, sids = [], []
        for _ in range(a.samples):
            s, sid = cold_path(api)
            cold.append(s)
            sids.append(sid)
        parent = sids.pop()
        for sid in sids:
            api.call("DELETE", f"/api/v1/sandboxes/{sid}", ok=(204, 404))
        kernel_bytes = common.cgroup_memory_bytes(parent)
        print("memory snapshots ...", flush=True)
        snaps, snap_ms, images = [], [], None
        for _ in range(a.samples):
            t0 = time.monotonic()
            s = api.call("POST", f"/api/v1/sandboxes/{parent}/snapshots", {"kind": "memory"})
            snap_ms.append((time.monotonic() - t0) * 1000)
            snaps.append(s["snapshot_id"])
            images = int(s["metadata"]["coppice.memory_bytes"])
        snap = snaps[-1]
        for s in snaps[:-1]:
            api.call("DELETE", f"/api/v1/snapshots/{s}")
        fans = {}
        for n in ([1, 10] if a.quick else [1, 10, 50]):
            print(f"{n} forks until every kernel answers x ...", flush=True)
            fans[n] = forks_until_answer(api, snap, n)
        api.call("DELETE", f"/api/v1/snapshots/{snap}")
        print("pause tiers: pause, resume from memory, resume from disk ...", flush=True)
        tiers = pause_tiers(api, parent, a.samples)
        daemon.stop()
        daemon.cleanup()
        print("warm template: create until run_code answers x ...", flush=True)
        config.write_text(f"[warm]\ndefault = {json.dumps(WARM)}\n")
        daemon = Daemon(binary, state / "state", 0, False, log_path, config=config)
        daemon.start()
        warm = warm_creates(Client(daemon.port), a.samples)
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
    cold_ms = sorted(cold)[len(cold) // 2] * 1000
    ref = {"name": "cold path to the same state (create, kernel, imports, x)", "value": cold_ms}
    metrics = [
        common.metric("memory_snapshot_p50", sorted(snap_ms)[len(snap_ms) // 2], "ms", None,
                      TARGETS["snapshot_ms"], samples_ms=[round(x, 1) for x in snap_ms]),
        common.metric("image_size", images / mib, "MiB",
                      {"name": "the sandbox's memory (cgroup charge)", "value": (kernel_bytes or 0) / mib}),
    ]
    for n, f in fans.items():
        metrics.append(common.metric(
            f"fork_{n}_until_kernels_answer", f["wall_s"] * 1000, "ms", ref,
            TARGETS.get(f"fork_{n}_ms"), call_ms=round(f["call_s"] * 1000, 1)))
    for n, f in fans.items():
        metrics.append(common.metric(
            f"host_memory_per_fork_of_{n}", f["memavailable_per_fork"] / mib, "MiB",
            {"name": "the sandbox's memory (cgroup charge)", "value": (kernel_bytes or 0) / mib},
            cgroup_per_fork_mib=round((f["cgroup_per_fork"] or 0) / mib, 2)))
    for name, values in tiers.items():
        metrics.append(common.metric(f"{name}_p50", sorted(values)[len(values) // 2], "ms",
                                     None if name == "pause" else ref,
                                     samples_ms=[round(x, 1) for x in values]))
    metrics.append(common.metric("warm_template_create_until_x_p50", sorted(warm)[len(warm) // 2], "ms",
                                 ref, samples_ms=[round(x, 1) for x in warm]))
    fork1 = fans[1]["wall_s"] * 1000
    speedup = cold_ms / fork1 if fork1 else None
    print()
    common.print_table(
        [[m["name"], m["value"], m["unit"], (m.get("reference") or {}).get("value"), m.get("ratio"),
          m.get("target", ""), m.get("target_met", "")] for m in metrics],
        ["metric", "coppice", "unit", "reference", "ratio", "target", "met"])
    print(f"\nfork path vs cold path: {speedup:.1f}x faster (target >= 5x: "
          f"{'met' if speedup and speedup >= 5 else 'missed'})")
    path = common.write_results("memory_fork", started_at, metrics,
                                {"forks": fans, "cold_s": cold, "speedup_vs_cold": speedup,
                                 "quick": a.quick}, path=a.out)
    print(f"results: {path}")
    failed = any(f["failed"] or f["answer_errors"] for f in fans.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
