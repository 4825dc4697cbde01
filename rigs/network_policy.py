#!/usr/bin/env python3
"""Network policy rig: what policy costs, measured beside the same without it.

1. Update latency (PUT /api/v1/sandboxes/{id}/network, which returns once the new policy is in
   force and the connections it no longer permits are cut) with N = 1, 100 and 1000 sandbox
   policies in the kernel. A few sandboxes are live; the rest of the N are policy entries for
   absent sandboxes (a chain and a map element each, the same shape the daemon compiles),
   because this host cannot hold 1000 live sandboxes beside four other engineers. Target:
   p95 <= 5 ms at N=1000 and flat in N (the FreeBSD predecessor measured pf anchors at 1.5 ms).
   Beside it, the same transaction through libnftables in process (it
   dumps every chain into its cache first, so it grows with N; the daemon sends the batch over
   netlink itself, runtime/src/linux/nftwire.rs) and through an `nft -f` exec.
2. Networking's cost on create: create latency (no warm pool) of a daemon with networking
   (netns, veth, default policy) beside one started with --no-network.
3. Throughput through the policy: a sandbox downloading from the test world (network
   namespaces, nothing leaves the machine) with a 100-rule policy whose matching rule is the
   last, beside the same sandbox with its policy entry removed from the map (base rules only).
   Target: under 10% loss.

Run under the host lock: flock /tmp/coppice-host.lock python3 rigs/network_policy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Daemon, metric, percentile, print_table  # noqa: E402
from networld import World  # noqa: E402

RIG = "network_policy"
SUBNET_BASE = (10 << 24) | (88 << 16)  # 10.88.0.0, addresses are base + 2 + slot
FAKE_SLOT0 = 60000  # synthetic entries use slots far above live ones
PROBE_SLOT = 65000  # the entry the bare `nft -f` comparison rewrites

DOWNLOAD = r"""
import socket, sys, time
n = int(sys.argv[3]); s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
buf = bytearray(1 << 18); got = 0; t0 = time.monotonic()
while got < n:
    k = s.recv_into(buf)
    if not k: break
    got += k
print(got / (time.monotonic() - t0))
"""


def ip_of(slot: int) -> str:
    a = SUBNET_BASE + 2 + slot
    return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


def fake_chain(slot: int) -> str:
    """One absent sandbox's entry: the transaction the daemon runs for its compiled default-deny
    policy (runtime/src/policy.rs nft_apply): its chain, its map element, no exemptions."""
    c, ip = f"sbx{slot}", ip_of(slot)
    return (f"table inet coppice {{ chain {c} {{}}; chain {c}_exempt {{}}; }}\n"
            f"flush chain inet coppice {c}\nflush chain inet coppice {c}_exempt\n"
            f"table inet coppice {{\n\tchain {c} {{\n"
            f"\t\tip daddr 198.51.100.0/24 meta l4proto tcp th dport 80 accept\n"
            f"\t\tip daddr 198.51.100.0/24 meta l4proto tcp th dport 443 accept\n"
            f"\t\tip daddr 203.0.113.0/24 accept\n"
            f"\t\tgoto policy_reject comment \"default deny\"\n\t}}\n}}\n"
            f"add element inet coppice sandbox_policy {{ {ip} : goto {c} }}\n"
            f"add element inet coppice sandbox_exempt {{ {ip} : jump {c}_exempt }}\n"
            f"delete element inet coppice sandbox_exempt {{ {ip} }}\n"
            f"delete chain inet coppice {c}_exempt\n"
            f"add element inet coppice airgapped4 {{ {ip} }}\n"
            f"delete element inet coppice airgapped4 {{ {ip} }}\n")


def remove_fake(slots: list[int]) -> None:
    if not slots:
        return
    script = "".join(
        f"delete element inet coppice sandbox_policy {{ {ip_of(s)} }}\n"
        f"flush chain inet coppice sbx{s}\ndelete chain inet coppice sbx{s}\n" for s in slots)
    subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)


def nft_load(script: str) -> None:
    r = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if r.returncode:
        raise RuntimeError(f"nft: {r.stderr.strip()}")


class LibNft:
    """libnftables through ctypes: the same in-process path the daemon uses, without an exec."""

    def __init__(self) -> None:
        import ctypes
        self.lib = ctypes.CDLL("libnftables.so.1")
        self.lib.nft_ctx_new.restype = ctypes.c_void_p
        self.lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        self.lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.nft_ctx_new(0)
        self.lib.nft_ctx_buffer_output(self.ctx)
        self.lib.nft_ctx_buffer_error(self.ctx)

    def run(self, script: str) -> None:
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode()) != 0:
            raise RuntimeError("libnftables transaction failed")


def put_policy(api: common.Api, sid: str, policy: dict) -> float:
    t0 = time.perf_counter()
    r = api._request("PUT", f"/api/v1/sandboxes/{sid}/network", policy)
    data = r.read()
    dt = (time.perf_counter() - t0) * 1000
    if r.status != 200:
        raise RuntimeError(f"PUT network: {r.status} {data[:200]!r}")
    return dt


def policies() -> tuple[dict, dict]:
    a = {"default": "deny", "allow": [{"cidr": "198.51.100.0/24", "protocol": "tcp", "ports": [80, 443]}]}
    b = {"default": "allow", "deny": [{"cidr": "198.51.100.20"}, {"cidr": "203.0.113.0/24", "protocol": "udp"}]}
    return a, b


def update_latency(d: Daemon, live: int, sizes: list[int], samples: int) -> tuple[list[dict], list[list]]:
    api = d.api()
    ids = [api.create({"timeout_secs": 1800})["id"] for _ in range(live)]
    a, b = policies()
    for sid in ids:
        put_policy(api, sid, a)
    metrics, rows = [], []
    fake_made = 0
    lib = LibNft()
    try:
        for n in sizes:
            want_fake = max(0, n - live)
            if want_fake > fake_made:
                script = "".join(fake_chain(FAKE_SLOT0 + s) for s in range(fake_made, want_fake))
                nft_load(script)
                fake_made = want_fake
            entries = int(subprocess.run(
                "nft list map inet coppice sandbox_policy | grep -o 'goto sbx' | wc -l",
                shell=True, capture_output=True, text=True).stdout.strip() or 0)
            times = []
            for i in range(samples):
                sid = ids[i % len(ids)]
                times.append(put_policy(api, sid, b if i % 2 == 0 else a))
            # The transaction through libnftables in process, and the
            # same through an `nft -f` exec.
            kern, execs = [], []
            for i in range(samples):
                t0 = time.perf_counter()
                lib.run(fake_chain(PROBE_SLOT))
                kern.append((time.perf_counter() - t0) * 1000)
            for i in range(max(5, samples // 4)):
                t0 = time.perf_counter()
                nft_load(fake_chain(PROBE_SLOT))
                execs.append((time.perf_counter() - t0) * 1000)
            p50, p95 = percentile(times, 50), percentile(times, 95)
            k50, k95 = percentile(kern, 50), percentile(kern, 95)
            rows.append([n, entries, len(ids), p50, p95, k50, k95, percentile(execs, 50)])
            metrics.append(metric(f"update_p50_n{n}", p50, "ms", sandboxes=n, live=len(ids), entries_in_map=entries))
            metrics.append(metric(f"update_p95_n{n}", p95, "ms", target="<= 5" if n >= 1000 else None,
                                  sandboxes=n, live=len(ids), entries_in_map=entries))
            metrics.append(metric(f"libnftables_transaction_p50_n{n}", k50, "ms",
                                  note="one sandbox's transaction through libnftables in process "
                                       "(the daemon sends its batches over netlink instead)"))
            metrics.append(metric(f"libnftables_transaction_p95_n{n}", k95, "ms"))
            metrics.append(metric(f"nft_exec_p50_n{n}", percentile(execs, 50), "ms",
                                  note="the same through an `nft -f` exec, for comparison"))
    finally:
        remove_fake([FAKE_SLOT0 + s for s in range(fake_made)] + [PROBE_SLOT])
        for sid in ids:
            api.delete(sid)
        api.close()
    return metrics, rows


def create_latency(d: Daemon, samples: int) -> list[float]:
    api = d.api()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        sid = api.create({"timeout_secs": 120})["id"]
        out.append((time.perf_counter() - t0) * 1000)
        api.delete(sid)
    api.close()
    return out


def throughput(d: Daemon, coppice: Path, nbytes: int, trials: int) -> tuple[list[float], list[float]]:
    api = d.api()
    sid = api.create({"timeout_secs": 1800})["id"]
    info = json.loads(subprocess.run([str(coppice), "--socket", str(d.socket), "sandbox", "info", sid, "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    ip = info["ip"]
    # 99 rules that do not match, then the one that does: the worst case for a linear chain.
    rules = [{"cidr": f"203.0.113.{i % 16 + 32}", "protocol": "udp", "ports": [1000 + i]} for i in range(99)]
    rules.append({"cidr": "198.51.100.10", "protocol": "tcp", "ports": [5001]})
    policy = {"default": "deny", "allow": rules}
    with_p, without = [], []

    def run() -> float:
        r = subprocess.run([str(coppice), "--socket", str(d.socket), "exec", sid, "--", "python3", "-c",
                            DOWNLOAD, "198.51.100.10", "5001", str(nbytes)], capture_output=True, text=True)
        return float(r.stdout.strip()) / 1e6 if r.returncode == 0 and r.stdout.strip() else float("nan")

    try:
        for _ in range(trials):
            put_policy(api, sid, policy)
            with_p.append(run())
            # Without: the sandbox's map entry removed, so its packets meet the base rules only
            # (the next PUT puts it back).
            nft_load(f"delete element inet coppice sandbox_policy {{ {ip} }}\n")
            without.append(run())
    finally:
        api.delete(sid)
        api.close()
    return with_p, without


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wait-other", type=float, default=0.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED: needs root")
        return 0
    common.refuse_if_other_daemon(args.wait_other)
    coppice = args.coppice.resolve()
    started = common.now_iso()
    live = 3 if args.quick else 8
    samples = 40 if args.quick else 200
    creates = 8 if args.quick else 30
    nbytes = (200 if args.quick else 1000) * 1024 * 1024
    trials = 5 if args.quick else 7
    tmp = Path(tempfile.mkdtemp(prefix="coppice-rig-netpol-"))
    metrics: list[dict] = []
    world = World()
    try:
        world.up()
        with Daemon(coppice, tmp / "state", pool_size=0, no_network=False, log_path=tmp / "daemon.log") as d:
            m, rows = update_latency(d, live, [1, 100, 1000], samples)
            metrics += m
            print("\npolicy update latency (ms)")
            print_table(rows, ["N", "map entries", "live", "API p50", "API p95", "libnftables p50", "libnftables p95", "nft exec p50"])
            net_create = create_latency(d, creates)
            with_p, without = throughput(d, coppice, nbytes, trials)
        with Daemon(coppice, tmp / "state", pool_size=0, no_network=True, log_path=tmp / "daemon.log") as d:
            bare_create = create_latency(d, creates)
    finally:
        world.down()
        # The daemons' storage mounts and state (the log stays).
        Daemon(coppice, tmp / "state", pool_size=0, no_network=True, log_path=tmp / "daemon.log").cleanup()
    n50, b50 = percentile(net_create, 50), percentile(bare_create, 50)
    metrics.append(metric("create_p50_network", n50, "ms", reference={"name": "create_p50_no_network", "value": b50}))
    metrics.append(metric("create_network_cost_p50", (n50 or 0) - (b50 or 0), "ms"))
    tp_with, tp_without = percentile(with_p, 50), percentile(without, 50)
    metrics.append(metric("throughput_with_policy", tp_with, "MB/s",
                          reference={"name": "throughput_without_policy", "value": tp_without},
                          target="ratio >= 0.9", rules=100, trials=trials))
    print("\ncreate (ms, no pool)")
    print_table([["network + default policy", n50, percentile(net_create, 95)],
                 ["--no-network", b50, percentile(bare_create, 95)]], ["daemon", "p50", "p95"])
    print("\nthroughput, sandbox <- world (MB/s, median of trials)")
    print_table([["100-rule policy", tp_with], ["no policy entry", tp_without],
                 ["ratio", (tp_with / tp_without) if tp_with and tp_without else None]], ["", "MB/s"])
    path = common.write_results(RIG, started, metrics, {
        "contention": common.contention(),
        "notes": f"update latency: {live} live sandboxes, the rest of N are policy entries (chain + map element) "
                 "of absent sandboxes; the host cannot hold 1000 live sandboxes beside other work",
    })
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
