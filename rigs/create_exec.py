#!/usr/bin/env python3
"""Rig `create_exec`: how long from "I want a sandbox" to "my first command finished", and
what an idle sandbox costs in host memory. Python 3.11 stdlib only; run as root.

Measures, in one run (see rigs/README.md for the results shape):
  - create -> first exec of `true` completed (POST create + POST exec until the NDJSON exit
    line, one persistent HTTP/1.1 connection per worker thread, through common.LeanApi so
    that Python's http.client is not timed), at concurrency 1, 10, 50,
    with a warm pool of `cc` sandboxes (pooled) and without one (unpooled, --pool-size 0);
  - references in the same run and with the same harness (posix_spawn + waitpid): bwrap,
    unshare, plain fork/exec;
  - idle host memory per sandbox at N=100 (MemAvailable delta, cgroup charge, agent Pss).

Usage:  sudo python3 rigs/create_exec.py [--quick] [--no-network] [--coppice PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MIB, Api, Daemon, LeanApi, metric, run_rounds, summary  # noqa: E402

RIG = "create_exec"

REFERENCES = {
    "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
              "--die-with-parent", "true"],
    "unshare": ["unshare", "-Urmpfnui", "true"],
    "fork_exec_true": ["/bin/true"],
}
KEY_REFERENCE = "bwrap"
UNPOOLED_RATIO_TARGET = 2.5  # unpooled p50 / bwrap p50
UNPOOLED_P50_CC1_TARGET_MS = 15.0
CC50_P95_TARGET_MS = 150.0
POOLED_P50_CC1_TARGET_MS = 3.0
IDLE_MEM_TARGET_MIB = 2.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice",
                   help="coppice binary (default: target/release/coppice of this repo)")
    p.add_argument("--no-network", action="store_true", help="run the daemon with --no-network")
    p.add_argument("--quick", action="store_true", help="small sample counts (CI smoke run)")
    p.add_argument("--levels", default="1,10,50", help="concurrency levels (default 1,10,50)")
    p.add_argument("--samples", default=None,
                   help="Coppice samples per level, e.g. 60,100,100 (default; --quick: 5,10,50)")
    p.add_argument("--ref-samples", default=None,
                   help="reference samples per level (default 200,200,200; --quick: 20,20,50)")
    p.add_argument("--mem-n", type=int, default=None, help="idle sandboxes for the memory figure (100; --quick 10)")
    p.add_argument("--mem-cc", type=int, default=10, help="concurrency used to create them")
    p.add_argument("--mem-settle", type=float, default=3.0, help="seconds to wait before measuring memory")
    p.add_argument("--skip", default="", help="comma list of phases to skip: refs,unpooled,pooled,memory")
    p.add_argument("--wait-other", type=float, default=0.0,
                   help="wait up to this many seconds for another coppice daemon to stop (default: refuse)")
    p.add_argument("--daemon-log", default=None, help="COPPICE_LOG for the daemon, e.g. debug")
    p.add_argument("--output", type=Path, default=common.RESULTS_DIR / f"{RIG}.json")
    p.add_argument("--keep-state", action="store_true", help="keep the temp state dir and daemon log")
    a = p.parse_args()
    a.levels = [int(x) for x in a.levels.split(",") if x]
    a.samples = _per_level(a.samples, a.levels, [5, 10, 50] if a.quick else [60, 100, 100])
    a.ref_samples = _per_level(a.ref_samples, a.levels, [20, 20, 50] if a.quick else [200, 200, 200])
    a.mem_n = a.mem_n if a.mem_n is not None else (10 if a.quick else 100)
    a.skip = {x for x in a.skip.split(",") if x}
    return a


def _per_level(spec: str | None, levels: list[int], default: list[int]) -> dict[int, int]:
    vals = [int(x) for x in spec.split(",")] if spec else default
    out = {}
    for i, cc in enumerate(levels):
        n = vals[i] if i < len(vals) else vals[-1]
        out[cc] = max(n, cc)  # at least one full round
    return out


def ms(values: list[float]) -> list[float]:
    return [v * 1000.0 for v in values]


# ---------------------------------------------------------------- references


# Each reference runs with no output kept: stdio on /dev/null.
_DEVNULL_STDIO = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]


def measure_reference(name: str, cmd: list[str], cc: int, samples: int) -> dict:
    # posix_spawn + waitpid: the least harness work per start, as LeanApi is on Coppice's side.
    def timed(_state):
        pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=_DEVNULL_STDIO)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code != 0:
            raise RuntimeError(f"{name} exited {code} (run it by hand to see why)")

    timed(None)  # warm-up (page cache, binary)
    lat, errors = run_rounds(cc, samples, lambda i: None, timed)
    return {"lat_ms": ms(lat), "errors": errors}


# ---------------------------------------------------------------- Coppice


class Worker:
    """Per-thread state: a persistent connection and the split of the last sample."""

    def __init__(self, port: int):
        self.port = port
        self.api = LeanApi(port)
        self.create_ms: list[float] = []
        self.exec_ms: list[float] = []

    def reset(self) -> None:
        self.api.close()
        self.api = LeanApi(self.port)


def create_exec_sample(w: Worker):
    t0 = time.perf_counter()
    try:
        sb = w.api.create({})
        t1 = time.perf_counter()
        ev, drain = w.api.exec_until_exit(sb["id"], ["true"])
    except Exception:
        w.reset()
        raise
    t2 = time.perf_counter()
    if ev.get("exit_code") != 0:
        drain()
        w.api.delete(sb["id"])
        raise RuntimeError(f"`true` exited {ev}")
    w.create_ms.append((t1 - t0) * 1000)
    w.exec_ms.append((t2 - t1) * 1000)
    return sb["id"], drain


def measure_coppice(daemon: Daemon, cc: int, samples: int, pooled: bool, warmup: int = 1) -> dict:
    workers: list[Worker] = []

    def make(i: int) -> Worker:
        w = Worker(daemon.port)
        workers.append(w)
        return w

    between = daemon.wait_pool_full if pooled else None
    # Warm-up: one untimed create+exec+delete (first-touch costs are not what we measure).
    if warmup:
        w = Worker(daemon.port)
        for _ in range(warmup):
            sid, drain = create_exec_sample(w)
            drain()
            w.api.delete(sid)
        w.api.close()
        if between:
            between()
    lat, errors = run_rounds(
        cc, samples, make, create_exec_sample,
        after_sample=lambda w, res: res[1](),
        cleanup=lambda w, res: w.api.delete(res[0]),
        between_rounds=between,
    )
    for w in workers:
        w.api.close()
    return {
        "lat_ms": ms(lat),
        "create_ms": [x for w in workers for x in w.create_ms],
        "exec_ms": [x for w in workers for x in w.exec_ms],
        "errors": errors,
    }


def measure_idle_memory(daemon: Daemon, n: int, cc: int, settle: float) -> dict:
    """With pool 0: N idle sandboxes; MemAvailable delta, cgroup charge and agent Pss."""
    def avail() -> int:
        vals = []
        for _ in range(5):
            vals.append(common.meminfo()["MemAvailable"])
            time.sleep(0.1)
        return sorted(vals)[len(vals) // 2]

    time.sleep(settle)  # earlier phases' background deletes
    daemon_pss_before = common.pss_bytes(daemon.proc.pid)
    before = avail()
    t0 = time.monotonic()
    sandboxes: list[dict] = []
    errors: list[str] = []

    def create_one(_):
        api = Api(daemon.port)
        try:
            return api.create({})
        finally:
            api.close()

    with cf.ThreadPoolExecutor(cc) as ex:
        for fut in [ex.submit(create_one, i) for i in range(n)]:
            try:
                sandboxes.append(fut.result())
            except Exception as e:
                errors.append(str(e))
    create_s = time.monotonic() - t0
    time.sleep(settle)
    after = avail()
    cg = [common.cgroup_memory_bytes(sb["id"]) for sb in sandboxes]
    pss = [common.pss_bytes(sb["pid"]) for sb in sandboxes if sb.get("pid")]
    procs = 0
    for sb in sandboxes:
        for d in common.sandbox_cgroup_dirs(sb["id"]):
            try:
                procs += len((d / "cgroup.procs").read_text().split())
                break
            except OSError:
                continue
    daemon_pss_after = common.pss_bytes(daemon.proc.pid)
    ok = len(sandboxes)
    # Delete them (parallel, untimed).
    def delete(sb):
        api = Api(daemon.port)
        try:
            api.delete(sb["id"])
        finally:
            api.close()

    with cf.ThreadPoolExecutor(cc) as ex:
        list(ex.map(delete, sandboxes))
    cg_known = [x for x in cg if x is not None]
    pss_known = [x for x in pss if x is not None]
    return {
        "n": ok,
        "errors": errors,
        "create_all_s": create_s,
        "memavailable_delta_per_sandbox": (before - after) / ok if ok else None,
        "cgroup_per_sandbox": sum(cg_known) / len(cg_known) if cg_known else None,
        "cgroup_known": len(cg_known),
        "agent_pss_per_sandbox": sum(pss_known) / len(pss_known) if pss_known else None,
        "agent_pss_known": len(pss_known),
        "procs_per_sandbox": procs / ok if ok else None,
        "daemon_pss_delta_per_sandbox": ((daemon_pss_after - daemon_pss_before) / ok
                                         if ok and daemon_pss_after and daemon_pss_before else None),
    }


# ---------------------------------------------------------------- report


def build_metrics(refs: dict, cop: dict, mem: dict | None, levels: list[int]) -> list[dict]:
    out: list[dict] = []
    pct = {"p50": 50, "p95": 95, "p99": 99}

    def refval(name: str, cc: int, p: str):
        r = refs.get((name, cc))
        return common.percentile(r["lat_ms"], pct[p]) if r and r["lat_ms"] else None

    for (name, cc), r in sorted(refs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        for p in pct:
            out.append(metric(f"ref_{name}_{p}_cc{cc}", common.percentile(r["lat_ms"], pct[p]), "ms",
                              n=len(r["lat_ms"]), errors=len(r["errors"])))
    for mode in ("unpooled", "pooled"):
        for cc in levels:
            r = cop.get((mode, cc))
            if not r:
                continue
            for p in pct:
                target = None
                if mode == "pooled" and cc == 1 and p == "p50":
                    target = f"<= {POOLED_P50_CC1_TARGET_MS:g} ms"
                if mode == "unpooled" and cc == 1 and p == "p50":
                    target = f"<= {UNPOOLED_P50_CC1_TARGET_MS:g} ms"
                if cc == 50 and p == "p95":
                    # SPECIFICATION.md's "cc=50 p95 <= 150 ms", shown on both paths.
                    target = f"<= {CC50_P95_TARGET_MS:g} ms"
                ref = refval(KEY_REFERENCE, cc, p)
                out.append(metric(
                    f"{mode}_create_exec_{p}_cc{cc}", common.percentile(r["lat_ms"], pct[p]), "ms",
                    reference={"name": f"{KEY_REFERENCE}_{p}_cc{cc}", "value": ref} if ref else None,
                    target=target, n=len(r["lat_ms"]), errors=len(r["errors"]),
                ))
            # Where the time goes: the create POST and the exec POST, separately.
            out.append(metric(f"{mode}_create_only_p50_cc{cc}", common.percentile(r["create_ms"], 50), "ms"))
            out.append(metric(f"{mode}_exec_only_p50_cc{cc}", common.percentile(r["exec_ms"], 50), "ms"))
            if "pool_refill_s" in r:
                out.append(metric(f"pool_fill_{cc}_s", r["pool_refill_s"], "s"))
    # The headline ratios: Coppice p50 / reference p50, per level.
    for cc in levels:
        r = cop.get(("unpooled", cc))
        if not r or not r["lat_ms"]:
            continue
        v = common.percentile(r["lat_ms"], 50)
        for name in REFERENCES:
            ref = refval(name, cc, "p50")
            if not ref:
                continue
            ratio = v / ref
            m = metric(f"ratio_unpooled_vs_{name}_p50_cc{cc}", ratio, "x",
                       reference={"name": f"{name}_p50_cc{cc}", "value": ref})
            m["ratio"] = round(ratio, 3)
            if name == KEY_REFERENCE:
                m["target"] = f"<= {UNPOOLED_RATIO_TARGET:g}"
                m["target_met"] = ratio <= UNPOOLED_RATIO_TARGET
            out.append(m)
    if mem:
        t = f"<= {IDLE_MEM_TARGET_MIB:g} MiB"
        for key, label in (("memavailable_delta_per_sandbox", "host MemAvailable drop / N"),
                           ("cgroup_per_sandbox", "sandbox cgroup memory usage, mean"),
                           ("agent_pss_per_sandbox", "agent (PID 1) Pss, mean"),
                           ("daemon_pss_delta_per_sandbox", "daemon Pss growth / N")):
            v = mem.get(key)
            out.append(metric(f"idle_mem_{key}_n{mem['n']}", v / MIB if v is not None else None, "MiB",
                              target=t if key != "daemon_pss_delta_per_sandbox" else None, label=label))
        out.append(metric(f"idle_mem_create_{mem['n']}_s", mem["create_all_s"], "s",
                          label="wall time to create all of them"))
    return out


def print_report(refs: dict, cop: dict, mem: dict | None, levels: list[int], metrics: list[dict]) -> None:
    print("\n== create -> first exec of `true` completed (ms; references: one invocation)")
    rows = []
    for label, data, cc in ([(f"coppice {m}", cop.get((m, cc)), cc) for m in ("pooled", "unpooled") for cc in levels]
                            + [(name, refs.get((name, cc)), cc) for name in REFERENCES for cc in levels]):
        if not data:
            continue
        s = summary(data["lat_ms"])
        extra = ""
        if "create_ms" in data:
            extra = (f"create {common.percentile(data['create_ms'], 50):.1f} + "
                     f"exec {common.percentile(data['exec_ms'], 50):.1f}")
        rows.append([label, cc, s["n"], s["p50"], s["p95"], s["p99"], s["max"], len(data["errors"]), extra])
    common.print_table(rows, ["what", "cc", "n", "p50", "p95", "p99", "max", "err", "p50 split (ms)"])

    print("\n== ratios (p50 / reference p50, same concurrency)")
    rows = []
    for cc in levels:
        for m in ("unpooled", "pooled"):
            d = cop.get((m, cc))
            if not d or not d["lat_ms"]:
                continue
            v = common.percentile(d["lat_ms"], 50)
            row = [f"coppice {m}", cc]
            for name in REFERENCES:
                r = refs.get((name, cc))
                row.append(v / common.percentile(r["lat_ms"], 50) if r and r["lat_ms"] else None)
            rows.append(row)
    common.print_table(rows, ["what", "cc"] + [f"/{n}" for n in REFERENCES])
    print(f"   key: unpooled / {KEY_REFERENCE} at cc=1, target <= {UNPOOLED_RATIO_TARGET}")

    if mem:
        print(f"\n== idle host memory per sandbox (N={mem['n']}, pool 0; target <= {IDLE_MEM_TARGET_MIB} MiB)")
        rows = []
        for key, label in (("memavailable_delta_per_sandbox", "(a) MemAvailable drop / N"),
                           ("cgroup_per_sandbox", "(b) cgroup memory usage, mean"),
                           ("agent_pss_per_sandbox", "(c) agent Pss, mean"),
                           ("daemon_pss_delta_per_sandbox", "    daemon Pss growth / N")):
            v = mem.get(key)
            rows.append([label, v / MIB if v is not None else None])
        common.print_table(rows, ["measure", "MiB"])
        print(f"   processes per idle sandbox: {mem['procs_per_sandbox']}; "
              f"creating {mem['n']} at cc=10 took {mem['create_all_s']:.1f}s")

    misses = [m for m in metrics if m.get("target_met") is False]
    if misses:
        print("\n== targets missed")
        for m in misses:
            print(f"   {m['name']}: {m['value']} {m['unit']} (target {m['target']})")


def maybe_plot(refs: dict, cop: dict, levels: list[int], path: Path) -> Path | None:
    if not common.have_matplotlib():
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series = [(f"coppice {m}", cop, (m,)) for m in ("pooled", "unpooled")] + \
                 [(n, refs, (n,)) for n in REFERENCES]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(series)
        for i, (label, src, key) in enumerate(series):
            p50 = []
            p99 = []
            for cc in levels:
                d = src.get((key[0], cc))
                p50.append(common.percentile(d["lat_ms"], 50) if d and d["lat_ms"] else 0)
                p99.append(common.percentile(d["lat_ms"], 99) if d and d["lat_ms"] else 0)
            xs = [j + i * width for j in range(len(levels))]
            ax.bar(xs, p50, width, label=label)
            ax.scatter(xs, p99, marker="_", color="black")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], [f"cc={c}" for c in levels])
        ax.set_ylabel("ms (bar p50, tick p99)")
        ax.set_yscale("log")
        ax.set_title("create -> first exec completed")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    except Exception as e:
        print(f"(plot skipped: {e})", file=sys.stderr)
        return None


# ---------------------------------------------------------------- main


def main() -> int:
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("create_exec: run as root (the daemon needs it)")
    binary = a.coppice if a.coppice.is_absolute() else common.REPO_ROOT / a.coppice
    if not binary.is_file():
        sys.exit(f"create_exec: {binary} not found (cargo build --release --workspace --bins)")
    missing = [n for n, c in REFERENCES.items() if not common.shutil.which(c[0])]
    if missing:
        sys.exit(f"create_exec: reference tools missing: {missing}")
    common.refuse_if_other_daemon(a.wait_other)

    started_at = common.now_iso()
    t_start = time.monotonic()
    state = common.make_state_dir("coppice-rig-")
    log_path = state.parent / f"{state.name}.log"
    env = {"COPPICE_LOG": a.daemon_log} if a.daemon_log else None
    refs: dict = {}
    cop: dict = {}
    mem = None
    notes: list[str] = []
    daemon: Daemon | None = None
    first_start_s = None

    phases: list[dict] = []

    def phase(name: str) -> None:
        c = common.contention({daemon.proc.pid} if daemon is not None and daemon.proc is not None else set())
        c["phase"] = name
        phases.append(c)
        if c["compilers"] or c["other_daemons"]:
            print(f"   note: host busy during {name}: {c}", flush=True)

    def start_daemon(pool: int) -> Daemon:
        nonlocal first_start_s
        common.refuse_if_other_daemon(a.wait_other)
        d = Daemon(binary, state / "state", pool, a.no_network, log_path, env=env)
        t0 = time.monotonic()
        d.start()
        if first_start_s is None:
            first_start_s = time.monotonic() - t0
            print(f"daemon up in {first_start_s:.1f}s (first start builds the default template)")
        return d

    try:
        if "refs" not in a.skip:
            for name, cmd in REFERENCES.items():
                for cc in a.levels:
                    print(f"reference {name} cc={cc} n={a.ref_samples[cc]} ...", flush=True)
                    phase(f"ref_{name}_cc{cc}")
                    refs[(name, cc)] = measure_reference(name, cmd, cc, a.ref_samples[cc])

        if "unpooled" not in a.skip or "memory" not in a.skip:
            daemon = start_daemon(0)
            if "unpooled" not in a.skip:
                for cc in a.levels:
                    print(f"coppice unpooled cc={cc} n={a.samples[cc]} ...", flush=True)
                    phase(f"unpooled_cc{cc}")
                    cop[("unpooled", cc)] = measure_coppice(daemon, cc, a.samples[cc], pooled=False)
            if "memory" not in a.skip:
                print(f"idle memory N={a.mem_n} ...", flush=True)
                phase("memory")
                mem = measure_idle_memory(daemon, a.mem_n, a.mem_cc, a.mem_settle)
            daemon.stop()
            daemon = None

        if "pooled" not in a.skip:
            for cc in a.levels:
                daemon = start_daemon(cc)
                fill = daemon.wait_pool_full()
                print(f"coppice pooled cc={cc} n={a.samples[cc]} (pool of {cc} filled in {fill:.1f}s) ...",
                      flush=True)
                phase(f"pooled_cc{cc}")
                r = measure_coppice(daemon, cc, a.samples[cc], pooled=True)
                r["pool_refill_s"] = fill
                cop[("pooled", cc)] = r
                daemon.stop()
                daemon = None
    except KeyboardInterrupt:
        notes.append("interrupted")
        print("\ninterrupted; cleaning up", file=sys.stderr)
    except Exception as e:  # report what was measured, keep the daemon log
        import traceback
        traceback.print_exc()
        notes.append(f"failed: {type(e).__name__}: {e}"[:2000])
    finally:
        if daemon is not None:
            daemon.stop()
        cleaner = Daemon(binary, state / "state", 0, a.no_network, log_path)
        cleaner.stop()
        if not a.keep_state:
            cleaner.cleanup()
            try:
                os.rmdir(state)
            except OSError:
                pass

    errs = {f"{k[0]} cc={k[1]}": v["errors"][:3] for d in (refs, cop) for k, v in d.items() if v["errors"]}
    if errs:
        notes.append(f"errors: {json.dumps(errs)}")
    metrics = build_metrics(refs, cop, mem, a.levels)
    print_report(refs, cop, mem, a.levels, metrics)
    extra = {
        "config": {
            "levels": a.levels, "samples": a.samples, "ref_samples": a.ref_samples, "mem_n": a.mem_n,
            "network": not a.no_network, "quick": a.quick, "binary": str(binary),
            "load_shape": "rounds of cc simultaneous samples behind a barrier; deletes between rounds",
            "daemon_first_start_s": first_start_s, "runtime_s": round(time.monotonic() - t_start, 1),
        },
        "notes": notes,
        "contention": phases,
    }
    if mem:
        extra["memory"] = {k: v for k, v in mem.items() if k != "errors"}
    out = common.write_results(RIG, started_at, metrics, extra, a.output)
    png = maybe_plot(refs, cop, a.levels, out.with_suffix(".png"))
    print(f"\nwrote {out}" + (f" and {png}" if png else "") + f" in {time.monotonic() - t_start:.0f}s")
    if a.keep_state:
        print(f"state kept in {state}, daemon log {log_path}")
    elif notes and log_path.exists():
        print(f"daemon log kept: {log_path}")
    elif log_path.exists():
        log_path.unlink()
    return 1 if any(n.startswith(("failed", "interrupted")) for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
