#!/usr/bin/env python3
"""Terminal rig: keystroke echo through Coppice's terminal WebSocket beside `ssh -tt` to a
loopback sshd and a `tmux` client, fan-out of one terminal's output to many WebSocket clients,
and host memory per idle terminal. One private daemon, one run.

- ``echo``: one key typed at an idle `bash --norc` prompt until its echo comes back, p50/p99.
  Coppice: a binary frame on the WebSocket (the page's and CLI's path), from a lean raw-socket
  client. ssh: `ssh -tt` to a
  private sshd on 127.0.0.1 (its own config and keys) running the same bash, bytes written to
  ssh's stdin. tmux: a `tmux attach` client on a local PTY of a private tmux server running
  the same bash. Samples interleave the three paths. The line is cleared (C-u) every 50 keys.
- ``fanout``: `cat` of a file of base64 text (100 MB; --quick 10 MB) on one terminal, to 1, 10
  and 50 attached WebSocket clients (asyncio, one process); aggregate throughput = bytes
  delivered to all clients / time until the last saw the end marker. Clients that fall out of
  the 1 MiB ring get a gap marker; their missed bytes are not counted (reported as gaps).
- ``idle_memory``: the daemon's RSS growth per idle terminal (its ring, screen model and
  tasks) over 50 idle shells that each printed a prompt, and the sandbox's memory for the
  shells themselves.

Targets (terminals issue): echo p50 <= 1.5 ms and <= 1.3x ssh's; 50 clients >= 50 MB/s
aggregate; <= 1.5 MiB per idle terminal.

Uses `websockets` (pinned by scripts/setup.sh), unlike the stdlib-only rigs: a WebSocket
client is the thing measured. Usage: sudo python3 rigs/terminals.py [--quick]
Writes rigs/results/terminals.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import common
from common import Api, Daemon, auth, metric, percentile

RIG = "terminals"
SHELL = "PS1='$ ' exec bash --norc --noprofile"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Rest:
    def __init__(self, port: int):
        self.api = Api(port)

    def call(self, method: str, path: str, body=None):
        r = self.api._request(method, path, body)
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status} {data[:300]!r}")
        return json.loads(data) if data else None


def wait_screen(rest: Rest, sid: str, tid: str, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in rest.call("GET", f"/api/v1/sandboxes/{sid}/terminals/{tid}/screen")["text"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{needle!r} did not show on {tid}")
        time.sleep(0.05)


# ------------------------------------------------------------------ echo paths


class Echo:
    """A path that types one byte and reads until it comes back."""

    def key(self, b: bytes) -> float:
        t0 = time.perf_counter()
        self.write(b)
        self.read_until(b)
        return (time.perf_counter() - t0) * 1000

    def read_until(self, b: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        seen = b""
        while b not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{type(self).__name__}: no echo of {b!r}; got {seen[-100:]!r}")
            seen += self.read(left)

    def drain(self) -> None:
        try:
            while self.read(0.05):
                pass
        except TimeoutError:
            pass


class WsEcho(Echo):
    """The terminal WebSocket on a raw socket: RFC 6455 framing in a few lines, as lean as the
    other paths' `os.read`/`os.write` (the `websockets` client's reader thread and queue would
    put Python's overhead on this path alone). The `websockets` library is what the fan-out
    phase and the tests use."""

    def __init__(self, port: int, sid: str, tid: str):
        import base64
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        token = auth(port).get("Authorization", "")
        self.sock.sendall((f"GET /api/v1/sandboxes/{sid}/terminals/{tid}/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\nAuthorization: {token}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self._send(0x1, json.dumps({"type": "hello", "name": "rig"}).encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def write(self, b: bytes) -> None:
        self._send(0x2, b)

    def _frame(self) -> tuple[int, bytes] | None:
        if len(self.buf) < 2:
            return None
        n, at = self.buf[1] & 0x7F, 2
        if n == 126:
            n, at = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            n, at = int.from_bytes(self.buf[2:10], "big"), 10
        if len(self.buf) < at + n:
            return None
        op, payload, self.buf = self.buf[0] & 0x0F, self.buf[at:at + n], self.buf[at + n:]
        return op, payload

    def read(self, timeout: float) -> bytes:
        out = b""
        while True:
            f = self._frame()
            if f is None:
                if out:
                    return out
                r, _, _ = select.select([self.sock], [], [], timeout)
                if not r:
                    raise TimeoutError
                self.buf += self.sock.recv(65536)
                continue
            op, payload = f
            if op == 0x2:
                out += payload[8:]

    def close(self) -> None:
        self.sock.close()


class FdEcho(Echo):
    """ssh's pipes or a tmux client's PTY master."""

    def __init__(self, wfd: int, rfd: int):
        self.wfd, self.rfd = wfd, rfd

    def write(self, b: bytes) -> None:
        os.write(self.wfd, b)

    def read(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.rfd], [], [], timeout)
        if not r:
            raise TimeoutError
        return os.read(self.rfd, 65536)


class PrivateSshd:
    """sshd on 127.0.0.1 with its own config, host key and authorized key (root, key only)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="coppice-rig-ssh-", dir="/run"))
        self.port = common.free_port()

    def start(self) -> "PrivateSshd":
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        (d / "authorized_keys").chmod(0o600)
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nAllowUsers root\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPrintMotd no\n"
            "PrintLastLog no\nX11Forwarding no\nAllowTcpForwarding no\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def session(self) -> tuple[subprocess.Popen, FdEcho]:
        p = subprocess.Popen(["ssh", "-tt", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-i", str(self.dir / "client_key"),
                              "-p", str(self.port), "root@127.0.0.1", SHELL],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        return p, FdEcho(p.stdin.fileno(), p.stdout.fileno())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def tmux_client(sock: str) -> tuple[int, FdEcho]:
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "80", "-y", "24", SHELL], check=True)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execvp("tmux", ["tmux", "-S", sock, "attach"])
    return pid, FdEcho(fd, fd)


def measure_echo(paths: dict[str, Echo], samples: int) -> dict[str, list[float]]:
    for p in paths.values():
        p.drain()
        for _ in range(5):
            p.key(b"w")
        p.write(b"\x15")
        p.drain()
    out: dict[str, list[float]] = {k: [] for k in paths}
    names = list(paths)
    for i in range(samples):
        for name in names[i % len(names):] + names[:i % len(names)]:
            out[name].append(paths[name].key(b"x"))
        if i % 50 == 49:
            for p in paths.values():
                p.write(b"\x15")
                p.drain()
    return out


# ------------------------------------------------------------------ fan-out


async def fanout(port: int, sid: str, tid: str, n: int, rest: Rest, marker: str) -> dict:
    import websockets
    url = f"ws://127.0.0.1:{port}/api/v1/sandboxes/{sid}/terminals/{tid}/ws"
    clients = []
    for _ in range(n):
        ws = await websockets.connect(url, additional_headers=auth(port), max_size=None, compression=None)
        await ws.send(json.dumps({"type": "hello", "since": rest.call("GET", f"/api/v1/sandboxes/{sid}/terminals/{tid}")["output_offset"]}))
        hello = json.loads(await ws.recv())
        clients.append((ws, hello["offset"]))
    needle = marker.encode()
    got = [0] * n
    gaps = [0] * n

    async def run(i: int, ws) -> None:
        tail = b""
        while True:
            m = await ws.recv()
            if isinstance(m, bytes):
                got[i] += len(m) - 8
                tail = (tail + m[8:])[-64:]
                if needle in tail:
                    return
            else:
                msg = json.loads(m)
                if msg["type"] == "gap":
                    gaps[i] += msg["to"] - msg["from"]

    t0 = time.perf_counter()
    rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/input",
              {"text": f"cat /tmp/rig-big.txt; echo {marker[:4]}$((1)){marker[5:]}", "keys": ["Enter"]})
    await asyncio.wait_for(asyncio.gather(*(run(i, ws) for i, (ws, _) in enumerate(clients))), 600)
    elapsed = time.perf_counter() - t0
    for ws, _ in clients:
        await ws.close()
    return {"clients": n, "seconds": elapsed, "bytes": sum(got), "gap_bytes": sum(gaps),
            "mb_per_s": sum(got) / elapsed / 1e6}


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coppice", type=Path, default=common.REPO_ROOT / "target/release/coppice")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wait-other", type=float, default=0.0)
    ap.add_argument("--output", type=Path, default=common.RESULTS_DIR / f"{RIG}.json")
    a = ap.parse_args()
    samples = 100 if a.quick else 1000
    big_mb = 10 if a.quick else 100
    idle_n = 20 if a.quick else 50
    if os.geteuid() != 0:
        sys.exit("run as root (real sandboxes)")
    common.refuse_if_other_daemon(a.wait_other)
    started = common.now_iso()
    state = common.make_state_dir("coppice-rig-term-")
    log = state.parent / f"{state.name}.log"
    daemon = Daemon(a.coppice.resolve(), state, pool_size=0, no_network=True, log_path=log)
    metrics: list[dict] = []
    notes: list[str] = []
    extra: dict = {}
    sshd = None
    tmux_sock = str(state.parent / f"{state.name}.tmux")
    tmux_pid = None
    ssh_proc = None
    ok = False
    try:
        daemon.start()
        rest = Rest(daemon.port)
        sid = rest.call("POST", "/api/v1/sandboxes", {"timeout_secs": 3600, "memory": "2G"})["id"]
        # Idle memory first: later phases grow and free the daemon's heap.
        base_rss = rss_bytes(daemon.proc.pid)
        base_cg = common.cgroup_memory_bytes(sid)
        idle = []
        for _ in range(idle_n):
            idle.append(rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals", {"cmd": SHELL})["id"])
        for t in idle:
            wait_screen(rest, sid, t, "$")
        time.sleep(1.0)
        per = (rss_bytes(daemon.proc.pid) - base_rss) / idle_n
        cg = common.cgroup_memory_bytes(sid)
        metrics.append(metric("idle_terminal_daemon_bytes", per / (1 << 20), "MiB", target="<= 1.5", n=idle_n,
                              label="daemon RSS growth per idle terminal (ring, screen model, tasks)"))
        if base_cg is not None and cg is not None:
            metrics.append(metric("idle_terminal_sandbox_bytes", (cg - base_cg) / idle_n / (1 << 20), "MiB", n=idle_n,
                                  label="sandbox memory per idle bash (the program itself)"))
        # Echo.
        tid = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals", {"cmd": SHELL})["id"]
        wait_screen(rest, sid, tid, "$")
        ws = WsEcho(daemon.port, sid, tid)
        sshd = PrivateSshd().start()
        ssh_proc, ssh = sshd.session()
        tmux_pid, tmux = tmux_client(tmux_sock)
        time.sleep(1.0)
        lat = measure_echo({"coppice_ws": ws, "ssh": ssh, "tmux": tmux}, samples)
        ws.close()
        p50 = {k: percentile(v, 50) for k, v in lat.items()}
        p99 = {k: percentile(v, 99) for k, v in lat.items()}
        metrics.append(metric("echo_ws_p50", p50["coppice_ws"], "ms", {"name": "ssh -tt loopback p50", "value": p50["ssh"]},
                              target="<= 1.5", ratio_target="<= 1.3", n=samples))
        metrics.append(metric("echo_ws_p99", p99["coppice_ws"], "ms", {"name": "ssh -tt loopback p99", "value": p99["ssh"]}, n=samples))
        metrics.append(metric("echo_ws_vs_tmux_p50", p50["coppice_ws"], "ms", {"name": "tmux client p50", "value": p50["tmux"]}, n=samples))
        metrics.append(metric("echo_tmux_p99", p99["tmux"], "ms", n=samples))
        # Fan-out.
        subprocess.run([str(a.coppice), "--socket", str(daemon.socket), "exec", sid, "--", "bash", "-c",
                        f"head -c {big_mb * 3 // 4}M /dev/urandom | base64 -w 200 > /tmp/rig-big.txt"], check=True)
        fan_tid = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals", {"cmd": SHELL})["id"]
        wait_screen(rest, sid, fan_tid, "$")
        fan = []
        for n in (1, 10, 50):
            r = asyncio.run(fanout(daemon.port, sid, fan_tid, n, rest, f"fan-1-done-{n}"))
            fan.append(r)
            metrics.append(metric(f"fanout_{n}_clients_aggregate", r["mb_per_s"], "MB/s",
                                  target=">= 50" if n == 50 else None, gap_bytes=r["gap_bytes"],
                                  seconds=r["seconds"], file_mb=big_mb))
        extra["fanout"] = fan
        rest.call("DELETE", f"/api/v1/sandboxes/{sid}")
        ok = True
    except Exception:
        notes.append(traceback.format_exc()[-1500:])
        traceback.print_exc()
    finally:
        if ssh_proc:
            ssh_proc.kill()
        if sshd:
            sshd.stop()
        if tmux_pid:
            subprocess.run(["tmux", "-S", tmux_sock, "kill-server"], capture_output=True)
            try:
                os.waitpid(tmux_pid, 0)
            except ChildProcessError:
                pass
        daemon.stop()
        if ok:
            daemon.cleanup()
            log.unlink(missing_ok=True)
        else:
            print(f"state dir and daemon log kept: {state}, {log}", file=sys.stderr)
    for m in metrics:
        ref = m.get("reference", {})
        print(f"{m['name']:<34} {m['value']!s:>10} {m['unit']:<5} {ref.get('name', '')} {ref.get('value', '')!s}"
              f"{'  ratio ' + str(m['ratio']) if 'ratio' in m else ''}{'  target ' + m['target'] if m.get('target') else ''}")
    path = common.write_results(RIG, started, metrics, {"config": {"quick": a.quick, "samples": samples,
                                                                   "file_mb": big_mb, "idle_terminals": idle_n},
                                                        "notes": notes, **extra}, path=a.output)
    print(f"\nwrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
