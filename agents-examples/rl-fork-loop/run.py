#!/usr/bin/env python3
"""RL-style fork loop: prepare an environment once, then run every episode in its own fork.

1. Create a sandbox, copy in `toyproj/` (a small Python project from this repository),
   install it (`pip install -e`), run its tests.
2. Snapshot that sandbox: the prepared environment becomes an immutable layer.
3. Run N episodes in parallel batches. Each batch is one fork call (count = batch size, with
   per-fork env EPISODE=i); in its fork an episode rewrites `clamp` in toycalc/ops.py with a
   candidate the "policy" picks, runs the tests, and scores passed/total; then the fork is
   killed. Forks never see each other's edits.
4. Print per-episode scores and totals; clean up (sandbox, forks, snapshot).

Talks to a running daemon's native API over its unix socket (standard library only):

    python3 agents-examples/rl-fork-loop/run.py --episodes 20 --batch 5

or with a private daemon of its own (as CI runs it; root, one daemon per host):

    python3 agents-examples/rl-fork-loop/run.py --start-daemon target/release/coppice --episodes 6
"""

import argparse
import base64
import http.client
import io
import json
import random
import shutil
import socket
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "toyproj"

# The policy's action space: candidate bodies for clamp (some right, some wrong).
CANDIDATES = [
    "return max(lo, min(x, hi))",
    "return min(hi, max(x, lo))",
    "return x if lo <= x <= hi else (lo if x < lo else hi)",
    "return max(lo, x)",
    "return min(x, hi)",
    "return lo if x < lo else x",
    "return int(max(lo, min(x, hi)))",
    "return sorted([lo, x, hi])[1]",
]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=300):
        super().__init__("coppice", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Coppice:
    def __init__(self, socket_path):
        self.socket_path = socket_path

    def request(self, method, path, body=None):
        conn = UnixHTTPConnection(self.socket_path)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            value = json.loads(raw) if raw else None
            if resp.status >= 300:
                msg = value.get("message") if isinstance(value, dict) else raw.decode()
                raise RuntimeError(f"{method} {path}: {resp.status}: {msg}")
            return value
        finally:
            conn.close()

    def exec(self, sandbox, cmd, user=None, cwd=None, timeout=120):
        """Runs a command; returns (exit_code, stdout, stderr)."""
        conn = UnixHTTPConnection(self.socket_path)
        try:
            body = {"cmd": cmd, "user": user, "cwd": cwd, "timeout_secs": timeout}
            conn.request(
                "POST",
                f"/api/v1/sandboxes/{sandbox}/exec",
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status >= 300:
                raise RuntimeError(f"exec in {sandbox}: {resp.status}: {resp.read().decode()}")
            out, err, code = b"", b"", None
            for line in resp:
                ev = json.loads(line)
                if ev["type"] == "stdout":
                    out += base64.b64decode(ev["data"])
                elif ev["type"] == "stderr":
                    err += base64.b64decode(ev["data"])
                elif ev["type"] == "exit":
                    code = ev["exit_code"]
                elif ev["type"] == "error":
                    raise RuntimeError(f"exec in {sandbox}: {ev['message']}")
            return code, out.decode(), err.decode()
        finally:
            conn.close()

    def must(self, sandbox, cmd, **kw):
        code, out, err = self.exec(sandbox, cmd, **kw)
        if code != 0:
            raise RuntimeError(f"{cmd} failed in {sandbox} ({code}): {err.strip() or out.strip()}")
        return out


def project_tarball():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(PROJECT, arcname="toyproj", filter=lambda t: None if "__pycache__" in t.name else t)
    return base64.b64encode(buf.getvalue()).decode()


EDIT = r"""
import os, re, sys
path = "toycalc/ops.py"
src = open(path).read()
body = os.environ["CANDIDATE"]
new = re.sub(r"(# EPISODE-EDIT-START\n).*?(\n\s*# EPISODE-EDIT-END)",
             lambda m: m.group(1) + "    " + body + m.group(2), src, flags=re.S)
assert new != src or body in src, "edit did not apply"
open(path, "w").write(new)
"""


def prepare(c, args):
    sbx = c.request("POST", "/api/v1/sandboxes", {"timeout_secs": 1800})["id"]
    print(f"prepared sandbox {sbx}")
    c.must(sbx, ["bash", "-c", f"echo {project_tarball()} | base64 -d | tar -xz -C /home/user"])
    c.must(
        sbx,
        ["python3", "-m", "pip", "install", "--quiet", "--user", "--no-index",
         "--no-build-isolation", "--break-system-packages", "-e", "."],
        cwd="/home/user/toyproj",
        timeout=300,
    )
    baseline = json.loads(c.must(sbx, ["python3", "score.py"], cwd="/home/user/toyproj"))
    print(f"baseline tests: {baseline['passed']}/{baseline['total']} passed")
    if baseline["passed"] != baseline["total"]:
        raise RuntimeError("the project's tests fail before any episode")
    # The installed package must be importable from anywhere (the install is in the snapshot).
    c.must(sbx, ["python3", "-c", "import toycalc; print(toycalc.__file__)"], cwd="/")
    snap = c.request(
        "POST", f"/api/v1/sandboxes/{sbx}/snapshots", {"metadata": {"example": "rl-fork-loop"}}
    )
    # (Its size is counted in the background on btrfs; `metadata` says how it was stored.)
    print(f"snapshot {snap['snapshot_id']} ({snap['metadata'].get('coppice.storage', 'copy')})")
    return sbx, snap["snapshot_id"]


def episode(c, fork_id, index, candidate):
    t0 = time.monotonic()
    try:
        env_ep = c.must(fork_id, ["bash", "-c", "echo $EPISODE"]).strip()
        if env_ep != str(index):
            raise RuntimeError(f"fork has EPISODE={env_ep!r}, expected {index}")
        code, out, err = c.exec(
            fork_id,
            ["env", f"CANDIDATE={candidate}", "python3", "-c", EDIT],
            cwd="/home/user/toyproj",
        )
        if code != 0:
            raise RuntimeError(f"edit failed: {err.strip()}")
        score = json.loads(c.must(fork_id, ["python3", "score.py"], cwd="/home/user/toyproj"))
        return {
            "episode": index,
            "fork": fork_id,
            "candidate": candidate,
            "passed": score["passed"],
            "total": score["total"],
            "reward": score["passed"] / score["total"],
            "seconds": round(time.monotonic() - t0, 3),
        }
    finally:
        try:
            c.request("DELETE", f"/api/v1/sandboxes/{fork_id}")
        except RuntimeError as e:
            print(f"killing fork {fork_id}: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/run/coppice/coppice.sock")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--batch", type=int, default=5, help="forks per batch (1-100)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--start-daemon", metavar="COPPICE",
                    help="start a private `COPPICE serve` (temp state dir) for the run")
    args = ap.parse_args()
    if not args.start_daemon:
        return run(args)
    sys.path.insert(0, str(HERE.parent.parent / "rigs"))
    import common  # the rigs' daemon harness: own state dir, full cleanup

    state = common.make_state_dir("coppice-rl-")
    daemon = common.Daemon(Path(args.start_daemon), state / "state", pool_size=0,
                           no_network=False, log_path=state / "daemon.log")
    try:
        with daemon:
            args.socket = str(daemon.socket)
            code = run(args)
        if code:
            print(daemon.log_tail(), file=sys.stderr)
        return code
    finally:
        daemon.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def run(args):
    c = Coppice(args.socket)
    policy = random.Random(args.seed)

    t0 = time.monotonic()
    sbx, snap = prepare(c, args)
    prepared_s = time.monotonic() - t0
    results, errors = [], []
    try:
        for start in range(0, args.episodes, args.batch):
            indices = list(range(start, min(start + args.batch, args.episodes)))
            candidates = [policy.choice(CANDIDATES) for _ in indices]
            tf = time.monotonic()
            forked = c.request(
                "POST",
                f"/api/v1/snapshots/{snap}/fork",
                {
                    "count": len(indices),
                    "timeout_secs": 600,
                    "forks": [{"env": {"EPISODE": str(i)}} for i in indices],
                },
            )
            fork_s = time.monotonic() - tf
            jobs = []
            with ThreadPoolExecutor(max_workers=len(indices)) as pool:
                for f in forked["forks"]:
                    i = indices[f["index"]]
                    if f.get("sandbox") is None:
                        errors.append((i, f"fork failed: {f.get('error')}"))
                        continue
                    jobs.append((i, pool.submit(episode, c, f["sandbox"]["id"], i, candidates[f["index"]])))
                for i, job in jobs:
                    try:
                        results.append(job.result())
                    except Exception as e:  # one bad episode does not sink the batch
                        errors.append((i, str(e)))
            print(f"batch {start // args.batch}: {len(indices)} forks in {fork_s * 1000:.0f} ms")
    finally:
        c.request("DELETE", f"/api/v1/sandboxes/{sbx}")
        # The snapshot goes once its forks are gone (deletion is refused while any stand on it).
        for _ in range(50):
            try:
                c.request("DELETE", f"/api/v1/snapshots/{snap}")
                break
            except RuntimeError:
                time.sleep(0.2)

    results.sort(key=lambda r: r["episode"])
    print()
    print(f"{'EP':>3} {'FORK':<22} {'SCORE':>7} {'REWARD':>6} {'SECS':>6}  CANDIDATE")
    for r in results:
        print(
            f"{r['episode']:>3} {r['fork']:<22} {r['passed']:>3}/{r['total']:<3} "
            f"{r['reward']:>6.2f} {r['seconds']:>6.2f}  {r['candidate']}"
        )
    for i, e in errors:
        print(f"{i:>3} ERROR {e}")
    total = sum(r["reward"] for r in results)
    best = max(results, key=lambda r: r["reward"], default=None)
    print()
    print(
        f"episodes: {len(results)} scored, {len(errors)} failed; total reward {total:.2f}, "
        f"mean {total / max(len(results), 1):.3f}; prepare {prepared_s:.1f} s, "
        f"all {time.monotonic() - t0:.1f} s"
    )
    if best:
        print(f"best: episode {best['episode']} ({best['reward']:.2f}): {best['candidate']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "errors": errors}, indent=2))
    return 1 if errors or len(results) != args.episodes else 0


if __name__ == "__main__":
    sys.exit(main())
