#!/usr/bin/env python3
"""MCP overhead rig: what the MCP layer costs over calling the sandbox's agent directly.

Two operations, each measured over four paths in the same run against one private daemon
and one sandbox, interleaved sample by sample (so drift and noise hit every path alike):

- ``run_true``: run `true` to completion.
  - direct: ``POST /api/v1/sandboxes/{id}/envd/process.Process/Start`` (Connect server-
    streaming, one JSON envelope in, events out until the end-of-stream envelope) with the
    exact process the tool starts (``/bin/bash -l -c true``).
  - MCP: ``tools/call commands_run {"sandbox_id", "cmd": "true"}``.
- ``write_read_1mib``: write 1 MiB of random bytes, then read them back.
  - direct: ``POST /api/v1/sandboxes/{id}/envd/files?path=..`` (multipart, as the E2B SDKs
    upload) then ``GET .../envd/files?path=..``.
  - MCP: ``files_write`` (``encoding: base64``) then ``files_read`` (binary files up to
    1 MiB come back inline as base64).

MCP paths: ``mcp_stdio`` (``coppice-mcp`` joining the daemon through its socket: the bridge
to the daemon's MCP server), ``mcp_http`` (streamable HTTP ``/mcp``, 2026-07-28, stateless)
and ``mcp_http_legacy`` (2025-11-25, one session). The MCP clients are minimal raw JSON-RPC
clients (one persistent pipe or HTTP/1.1 connection, ``json`` from the stdlib), so the
figures are the server side's cost, not an SDK's; every reply is checked (exit code 0,
bytes equal).

Reference: ``write_read_1mib_codec_floor_p50``, the JSON and base64 work of one write+read
(parse the request, decode, encode, serialize the reply) timed in-process by
the ``codec_floor`` example (mcp/examples) in the same run: the part of the server's share no server can skip.

Targets (SPECIFICATION.md): MCP overhead over the direct call <= 1 ms at p50; ``commands_run true``
<= 5 ms p50 end to end.

Usage: sudo python3 rigs/mcp_overhead.py [--quick] [--samples N] [--io-samples N]
Writes rigs/results/mcp_overhead.json (shared shape, see rigs/README.md).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import struct
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Api, Daemon, metric  # noqa: E402

RIG = "mcp_overhead"
# Seconds the rig's own clients spent on the MCP wire's encoding (json.dumps/json.loads of the
# JSON-RPC messages, base64 of the file) in the current sample: the MCP wire costs the client
# this much whatever the server does; ``measure`` subtracts it to show the server's share.
CODEC = [0.0]


def codec(f: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return f()
    finally:
        CODEC[0] += time.perf_counter() - t0
OVERHEAD_TARGET_MS = 1.0
RUN_TRUE_TARGET_MS = 5.0
MIB = 1024 * 1024
PATHS = ["direct", "mcp_stdio", "mcp_http", "mcp_http_legacy"]
CLIENT_INFO = {"name": "coppice-rig", "version": "0"}


# ---------------------------------------------------------------- direct (envd proxy)


class Direct:
    """The sandbox's agent through the daemon's envd proxy, one persistent connection."""

    def __init__(self, port: int, sid: str):
        self.port = port
        self.base = f"/api/v1/sandboxes/{sid}/envd"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def close(self) -> None:
        self.conn.close()

    def _request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, Any]:
        self.conn.request(method, self.base + path, body=body, headers={**headers, **common.auth(self.port)})
        r = self.conn.getresponse()
        return r.status, r.read(), r

    def run_true(self) -> None:
        msg = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}, "stdin": False}).encode()
        body = struct.pack(">BI", 0, len(msg)) + msg
        status, data, _ = self._request("POST", "/process.Process/Start", body, {
            "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"})
        if status != 200:
            raise RuntimeError(f"Start: HTTP {status}: {data[:300]!r}")
        end = None
        off = 0
        while off + 5 <= len(data):
            flags, n = struct.unpack(">BI", data[off:off + 5])
            payload = json.loads(data[off + 5:off + 5 + n] or b"{}")
            off += 5 + n
            if flags & 0x02:
                if payload.get("error"):
                    raise RuntimeError(f"Start: {payload['error']}")
                break
            ev = payload.get("event", {})
            if "end" in ev:
                end = ev["end"]
        if end is None or end.get("exitCode", 0) != 0:
            raise RuntimeError(f"Start: no clean end event: {data[:300]!r}")

    def write_read(self, path: str, data: bytes) -> None:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, resp, _ = self._request("POST", f"/files?path={path}", body,
                                        {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise RuntimeError(f"upload: HTTP {status}: {resp[:300]!r}")
        status, got, _ = self._request("GET", f"/files?path={path}", None, {})
        if status != 200 or got != data:
            raise RuntimeError(f"download: HTTP {status}, {len(got)} bytes")


# ---------------------------------------------------------------- raw MCP clients


class McpError(RuntimeError):
    pass


def tool_result(reply: dict, tool: str) -> dict:
    if "error" in reply:
        raise McpError(f"{tool}: {reply['error']}")
    res = reply["result"]
    if res.get("isError"):
        raise McpError(f"{tool}: {res.get('content')}")
    return res["structuredContent"]


class McpStdio:
    """coppice-mcp over a pipe (2025-11-25 handshake), one JSON-RPC line per message."""

    def __init__(self, mcp_bin: Path, socket_path: Path, stderr_path: Path):
        self.err = open(stderr_path, "ab")
        self.p = subprocess.Popen([str(mcp_bin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  env={"COPPICE_SOCKET": str(socket_path), "PATH": os.environ.get("PATH", "")})
        self.next_id = 0
        init = self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                           "clientInfo": CLIENT_INFO})
        if "Connected to the Coppice daemon" not in (init["result"].get("instructions") or ""):
            raise RuntimeError(f"coppice-mcp did not join the rig's daemon: {init}")
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, msg: dict) -> None:
        self.p.stdin.write(codec(lambda: json.dumps(msg).encode()) + b"\n")
        self.p.stdin.flush()

    def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        rid = self.next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise McpError("coppice-mcp closed stdout")
            msg = codec(lambda: json.loads(line))
            if msg.get("id") == rid and ("result" in msg or "error" in msg):
                return msg

    def call(self, tool: str, args: dict) -> dict:
        return tool_result(self.request("tools/call", {"name": tool, "arguments": args}), tool)

    def close(self) -> None:
        try:
            self.p.stdin.close()
            self.p.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.p.kill()
            self.p.wait()
        self.err.close()


class McpHttp:
    """Streamable HTTP at /mcp over one persistent connection. ``legacy``: a 2025-11-25
    session (initialize, Mcp-Session-Id); else 2026-07-28 (stateless, `_meta` per request)."""

    def __init__(self, port: int, legacy: bool):
        self.port = port
        self.legacy = legacy
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.next_id = 0
        self.session: str | None = None
        self.version = "2025-11-25" if legacy else "2026-07-28"
        if legacy:
            self.request("initialize", {"protocolVersion": self.version, "capabilities": {},
                                        "clientInfo": CLIENT_INFO})
            self.notify("notifications/initialized")

    def _post(self, msg: dict, extra: dict | None = None) -> http.client.HTTPResponse:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "MCP-Protocol-Version": self.version, **common.auth(self.port)}
        if self.session:
            h["Mcp-Session-Id"] = self.session
        h.update(extra or {})
        self.conn.request("POST", "/mcp", body=codec(lambda: json.dumps(msg).encode()), headers=h)
        return self.conn.getresponse()

    def notify(self, method: str) -> None:
        r = self._post({"jsonrpc": "2.0", "method": method})
        r.read()
        if r.status >= 300:
            raise McpError(f"{method}: HTTP {r.status}")

    def request(self, method: str, params: dict, name: str | None = None) -> dict:
        self.next_id += 1
        rid = self.next_id
        params = dict(params)
        extra = {}
        if not self.legacy:
            params["_meta"] = {"io.modelcontextprotocol/protocolVersion": self.version,
                               "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
                               "io.modelcontextprotocol/clientCapabilities": {}}
            extra["Mcp-Method"] = method
            if name:
                extra["Mcp-Name"] = name
        r = self._post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, extra)
        if r.status != 200:
            raise McpError(f"{method}: HTTP {r.status}: {r.read()[:300]!r}")
        sid = r.getheader("Mcp-Session-Id")
        if sid and self.legacy:
            self.session = sid
        ctype = r.getheader("Content-Type", "")
        if ctype.startswith("application/json"):
            body = r.read()
            return codec(lambda: json.loads(body))
        # SSE: events until the reply with our id; the stream then ends.
        reply = None
        data: list[bytes] = []
        while True:
            line = r.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                raw = b"\n".join(data).strip()
                data = []
                if not raw:  # a priming event (id only, empty data)
                    continue
                msg = codec(lambda: json.loads(raw))
                if isinstance(msg, dict) and msg.get("id") == rid and ("result" in msg or "error" in msg):
                    reply = msg
        if reply is None:
            raise McpError(f"{method}: no reply in the event stream")
        return reply

    def call(self, tool: str, args: dict) -> dict:
        return tool_result(self.request("tools/call", {"name": tool, "arguments": args}, name=tool), tool)

    def close(self) -> None:
        if self.legacy and self.session:
            try:
                self.conn.request("DELETE", "/mcp", headers={"Mcp-Session-Id": self.session,
                                                             "MCP-Protocol-Version": self.version,
                                                             **common.auth(self.port)})
                self.conn.getresponse().read()
            except Exception:  # noqa: BLE001
                pass
        self.conn.close()


# ---------------------------------------------------------------- samples


def mcp_run_true(c) -> Callable[[], None]:
    def go() -> None:
        r = c.call("commands_run", {"sandbox_id": c.sid, "cmd": "true"})
        if r["exit_code"] != 0:
            raise RuntimeError(f"commands_run true: {r}")
    return go


def mcp_write_read(c, path: str, data: bytes) -> Callable[[], None]:
    b64 = base64.b64encode(data).decode()

    def go() -> None:
        w = c.call("files_write", {"sandbox_id": c.sid, "path": path, "content": b64, "encoding": "base64"})
        if w["bytes"] != len(data):
            raise RuntimeError(f"files_write: {w}")
        r = c.call("files_read", {"sandbox_id": c.sid, "path": path})
        if r.get("kind") != "binary" or codec(lambda: base64.b64decode(r["base64"])) != data:
            raise RuntimeError(f"files_read: kind {r.get('kind')}, truncated {r.get('truncated')}")
    return go


def measure(ops: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, dict]:
    """Interleaved: each round runs one sample of every path, in a rotating order."""
    out = {k: {"lat_ms": [], "client_ms": [], "errors": []} for k in ops}
    names = list(ops)
    for _ in range(warmup):
        for k in names:
            ops[k]()
    for i in range(n):
        order = names[i % len(names):] + names[:i % len(names)]
        for k in order:
            CODEC[0] = 0.0
            t0 = time.perf_counter()
            try:
                ops[k]()
            except Exception as e:  # noqa: BLE001 - reported, not timed
                out[k]["errors"].append(f"{type(e).__name__}: {e}"[:300])
                continue
            out[k]["lat_ms"].append((time.perf_counter() - t0) * 1000)
            out[k]["client_ms"].append(CODEC[0] * 1000)
    return out


def server_side(r: dict) -> list[float]:
    """Each sample's latency minus what the rig's client spent encoding and decoding it."""
    return [lat - c for lat, c in zip(r["lat_ms"], r["client_ms"])]


# ---------------------------------------------------------------- report


def build_metrics(res: dict[str, dict[str, dict]]) -> list[dict]:
    out: list[dict] = []
    for op, by_path in res.items():
        direct = by_path["direct"]["lat_ms"]
        d50 = common.percentile(direct, 50)
        d99 = common.percentile(direct, 99)
        for path in PATHS:
            r = by_path.get(path)
            if not r:
                continue
            lat = r["lat_ms"]
            for p, q in (("p50", 50), ("p99", 99)):
                v = common.percentile(lat, q)
                ref = (d50 if p == "p50" else d99) if path != "direct" else None
                target = None
                if op == "run_true" and p == "p50" and path != "direct":
                    target = f"<= {RUN_TRUE_TARGET_MS:g} ms"
                out.append(metric(f"{op}_{path}_{p}_cc1", v, "ms",
                                  reference={"name": f"{op}_direct_{p}_cc1", "value": ref} if ref else None,
                                  target=target, n=len(lat), errors=len(r["errors"])))
        for path in PATHS[1:]:
            lat = by_path.get(path, {}).get("lat_ms")
            if not lat or d50 is None:
                continue
            for p, q, dref in (("p50", 50, d50), ("p99", 99, d99)):
                ov = common.percentile(lat, q) - dref
                out.append(metric(f"{op}_{path}_overhead_{p}_cc1", ov, "ms",
                                  target=f"<= {OVERHEAD_TARGET_MS:g} ms" if p == "p50" else None,
                                  label=f"{path} {p} minus direct {p}"))
            # The same without the client's own JSON/base64 work (see CODEC): the server's share.
            srv = common.percentile(server_side(by_path[path]), 50)
            out.append(metric(f"{op}_{path}_server_overhead_p50_cc1", srv - d50, "ms",
                              label=f"{path} p50 of (latency minus client JSON/base64 time) minus direct p50",
                              client_codec_p50_ms=common.percentile(by_path[path]["client_ms"], 50)))
    return out


def codec_floor(mcp_bin: Path) -> dict | None:
    """The JSON/base64 work no server can skip for one 1 MiB write+read, timed in-process by
    the ``codec_floor`` example built beside ``coppice-mcp`` (None when it is not built)."""
    floor_bin = mcp_bin.parent / "examples" / "codec_floor"
    try:
        out = subprocess.run([str(floor_bin)], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def print_report(res: dict, metrics: list[dict], floor: dict | None = None) -> None:
    for op, by_path in res.items():
        print(f"\n== {op} (ms)")
        d50 = common.percentile(by_path["direct"]["lat_ms"], 50)
        rows = []
        for path in PATHS:
            r = by_path.get(path)
            if not r:
                continue
            s = common.summary(r["lat_ms"])
            over = s["p50"] - d50 if s["p50"] is not None and d50 is not None and path != "direct" else None
            cl = common.percentile(r["client_ms"], 50) if path != "direct" else None
            srv = common.percentile(server_side(r), 50) - d50 if over is not None else None
            rows.append([path, s["n"], s["p50"], s["p95"], s["p99"], s["max"], over, cl, srv, len(r["errors"])])
        common.print_table(rows, ["path", "n", "p50", "p95", "p99", "max", "p50 - direct", "client codec",
                                  "server - direct", "err"])
    if floor:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in (floor.get("parts_p50_ms") or {}).items())
        print(f"\n   codec floor (JSON + base64 of one 1 MiB write+read, in-process): p50 {floor['p50_ms']:.2f} ms"
              f" ({parts}); the server's share above includes it")
    print(f"\n   targets: MCP overhead <= {OVERHEAD_TARGET_MS:g} ms p50; commands_run true <= "
          f"{RUN_TRUE_TARGET_MS:g} ms p50 end to end")
    misses = [m for m in metrics if m.get("target_met") is False]
    if misses:
        print("\n== targets missed")
        for m in misses:
            print(f"   {m['name']}: {m['value']} {m['unit']} (target {m['target']})")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    ap.add_argument("--quick", action="store_true", help="small sample counts (CI smoke run)")
    ap.add_argument("--samples", type=int, default=None, help="run_true samples per path (300; --quick 40)")
    ap.add_argument("--io-samples", type=int, default=None, help="1 MiB write+read samples per path (60; --quick 10)")
    ap.add_argument("--no-network", action="store_true", help="run the daemon with --no-network")
    ap.add_argument("--wait-other", type=float, default=0.0,
                    help="wait up to this many seconds for another coppice daemon to stop (default: refuse)")
    ap.add_argument("--daemon-log", default=None, help="COPPICE_LOG for the daemon, e.g. debug")
    ap.add_argument("--output", type=Path, default=common.RESULTS_DIR / f"{RIG}.json")
    ap.add_argument("--keep-state", action="store_true", help="keep the temp state dir and daemon log")
    a = ap.parse_args()
    samples = a.samples or (40 if a.quick else 300)
    io_samples = a.io_samples or (10 if a.quick else 60)
    warmup = 3 if a.quick else 10
    coppice = a.coppice.resolve()
    mcp_bin = coppice.parent / "coppice-mcp"
    if os.geteuid() != 0:
        sys.exit("run as root (real sandboxes)")
    common.refuse_if_other_daemon(a.wait_other)
    started = common.now_iso()
    state = common.make_state_dir("coppice-rig-mcp-")
    log = state.parent / f"{state.name}.log"
    env = {"COPPICE_LOG": a.daemon_log} if a.daemon_log else None
    # Loopback without a token, as `coppice serve` runs by default (the token check is a
    # header comparison either way).
    daemon = Daemon(coppice, state, pool_size=1, no_network=a.no_network, log_path=log, env=env)
    clients: list[Any] = []
    notes: list[str] = []
    ok = False
    res: dict[str, dict] = {}
    floor: dict | None = None
    contention: list[dict] = []
    try:
        daemon.start()
        api = Api(daemon.port)
        sid = api.create({"timeout_secs": 3600})["id"]
        direct = Direct(daemon.port, sid)
        stdio = McpStdio(mcp_bin, daemon.socket, log.with_suffix(".mcp-stderr"))
        modern = McpHttp(daemon.port, legacy=False)
        legacy = McpHttp(daemon.port, legacy=True)
        clients = [direct, stdio, modern, legacy]
        for c in (stdio, modern, legacy):
            c.sid = sid
        data = os.urandom(MIB)
        contention.append({"phase": "run_true", **common.contention({daemon.proc.pid})})
        res["run_true"] = measure({"direct": direct.run_true, "mcp_stdio": mcp_run_true(stdio),
                                   "mcp_http": mcp_run_true(modern), "mcp_http_legacy": mcp_run_true(legacy)},
                                  samples, warmup)
        contention.append({"phase": "write_read_1mib", **common.contention({daemon.proc.pid})})
        res["write_read_1mib"] = measure({
            "direct": lambda: direct.write_read("rig/direct.bin", data),
            "mcp_stdio": mcp_write_read(stdio, "rig/stdio.bin", data),
            "mcp_http": mcp_write_read(modern, "rig/http.bin", data),
            "mcp_http_legacy": mcp_write_read(legacy, "rig/legacy.bin", data),
        }, io_samples, max(1, warmup // 3))
        floor = codec_floor(mcp_bin)
        for op, by_path in res.items():
            for path, r in by_path.items():
                if r["errors"]:
                    notes.append(f"{op}/{path}: {len(r['errors'])} errors, first: {r['errors'][0]}")
        api.delete(sid)
        api.close()
        ok = not notes
    except Exception:
        notes.append(traceback.format_exc()[-1500:])
        traceback.print_exc()
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        daemon.stop()
        if a.keep_state or not ok:
            print(f"state dir and daemon log kept: {state}, {log}", file=sys.stderr)
        else:
            daemon.cleanup()
            for f in (log, log.with_suffix(".mcp-stderr")):
                f.unlink(missing_ok=True)
    metrics = build_metrics(res) if res.get("run_true") and res.get("write_read_1mib") else []
    if metrics and floor:
        metrics.append(metric("write_read_1mib_codec_floor_p50", floor["p50_ms"], "ms",
                              label="in-process JSON parse + base64 decode + base64 encode + JSON serialize "
                                    "of one 1 MiB write+read (mcp/examples/codec_floor.rs), same run",
                              parts_p50_ms=floor.get("parts_p50_ms"), n=floor.get("samples")))
    if metrics:
        print_report(res, metrics, floor)
    path = common.write_results(RIG, started, metrics, {
        "config": {"samples": samples, "io_samples": io_samples, "warmup": warmup, "quick": a.quick,
                   "network": not a.no_network, "file_bytes": MIB, "paths": PATHS,
                   "clients": "raw JSON-RPC (stdlib json), one persistent pipe / HTTP/1.1 connection each",
                   "order": "interleaved: one sample of every path per round, rotating order"},
        "notes": notes,
        "contention": contention,
    }, path=a.output)
    print(f"\nwrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
