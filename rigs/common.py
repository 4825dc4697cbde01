"""Shared pieces of the Coppice benchmark rigs (Python 3.11 stdlib only).

- host facts and the shared results shape (``write_results``), see rigs/README.md;
- percentiles and a plain-text table;
- ``Daemon``: a private ``coppice serve`` (temp state dir, own socket, free port) that is
  always torn down together with every sandbox it started, pooled ones included;
- ``Api``: a persistent HTTP/1.1 connection to the daemon (one per worker thread);
  ``LeanApi``: the same calls with the least client work, for timed spans;
- ``run_rounds``: the load shape every latency rig uses (rounds of ``cc`` simultaneous
  operations released by a barrier, untimed cleanup between rounds).
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


# ---------------------------------------------------------------- host facts / results


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            parts = rest.split()
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def cgroup_mode() -> str:
    """"v2" (unified only), "hybrid" (v1 controllers + a cgroup2 mount) or "v1"."""
    fstypes = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == str(CGROUP_ROOT) or parts[1].startswith(str(CGROUP_ROOT) + "/"):
                fstypes.add(parts[2])
    if "cgroup" in fstypes:
        return "hybrid" if "cgroup2" in fstypes else "v1"
    return "v2" if "cgroup2" in fstypes else "none"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def host_facts() -> dict[str, Any]:
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total": meminfo().get("MemTotal"),
        "os": os_name(),
        "cgroup_mode": cgroup_mode(),
        "commit": _run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT) or None,
        # Benchmarks of a dirty tree are not of `commit`: say so.
        "dirty": bool(dirty),
        "python": platform.python_version(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def metric(
    name: str,
    value: float | None,
    unit: str,
    reference: dict[str, Any] | None = None,
    target: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One metric of the shared shape. ``reference`` is {"name", "value"} in the same unit;
    ``ratio`` = value / reference value is filled in when both are known."""
    m: dict[str, Any] = {"name": name, "value": _round(value), "unit": unit}
    if reference is not None:
        ref = dict(reference)
        ref["value"] = _round(ref.get("value"))
        m["reference"] = ref
        if value is not None and ref.get("value"):
            m["ratio"] = round(value / reference["value"], 3)
    if target is not None:
        m["target"] = target
        ok = target_met(value, target)
        if ok is not None:
            m["target_met"] = ok
    m.update(extra)
    return m


def target_met(value: float | None, target: str) -> bool | None:
    """Evaluates "<= 3 ms"-style targets against the metric's value (same unit assumed).
    A target on the ratio is written "ratio <= 2.5" and is checked by the caller."""
    parts = target.split()
    if value is None or len(parts) < 2 or parts[0] not in ("<=", "<", ">=", ">"):
        return None
    try:
        bound = float(parts[1])
    except ValueError:
        return None
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[parts[0]]


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    return v


def write_results(rig: str, started_at: str, metrics: list[dict], extra: dict | None = None,
                  path: Path | None = None) -> Path:
    """Writes rigs/results/<rig>.json in the shared shape (see README.md)."""
    path = path or RESULTS_DIR / f"{rig}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "rig": rig,
        "started_at": started_at,
        "finished_at": now_iso(),
        "host": host_facts(),
        "metrics": metrics,
    }
    if extra:
        doc.update(extra)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100), like numpy's default."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def print_table(rows: list[list[Any]], header: list[str], out=sys.stdout) -> None:
    cells = [[_fmt(c) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _fmt(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 10 else f"{c:.1f}"
    return str(c)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- the daemon


def other_daemons(ours: set[int] | None = None) -> list[str]:
    """Command lines of running `coppice ... serve` processes, except ``ours`` (pids)."""
    out = subprocess.run(["pgrep", "-af", "coppice.* serve"], capture_output=True, text=True).stdout
    me = {os.getpid(), os.getppid()} | (ours or set())
    lines = []
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if pid.isdigit() and int(pid) not in me:
            lines.append(line)
    return lines


def refuse_if_other_daemon(wait_s: float = 0.0) -> None:
    """Exits with a clear message while another coppice daemon runs (after waiting up to
    ``wait_s`` seconds for it to go away): two daemons share cgroup parents, the bridge and
    CPU, so figures would be wrong and cleanup could collide."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        others = other_daemons()
        if not others:
            return
        if time.monotonic() >= deadline:
            sys.exit(
                "refusing to run: another coppice daemon is running (its figures and ours would mix;"
                " stop it or pass --wait-other SECONDS):\n  " + "\n  ".join(others)
            )
        if not announced:
            print(f"another coppice daemon is running; waiting up to {wait_s:.0f}s for it to stop:\n  "
                  + "\n  ".join(others), file=sys.stderr)
            announced = True
        time.sleep(5)


def contention(ours: set[int] | None = None) -> dict[str, Any]:
    """What else is loading the host right now (recorded per phase: a compile or another
    daemon next to a benchmark skews it)."""
    out = subprocess.run(["ps", "-eo", "pid=,pcpu=,comm="], capture_output=True, text=True).stdout
    busy = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[2] in ("rustc", "cargo", "cc", "ld", "cc1", "lld", "mold") :
            busy.append(parts[2])
    return {
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
        "compilers": len(busy),
        "other_daemons": len(other_daemons(ours)),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox_cgroup_dirs(sid: str) -> list[Path]:
    """Every cgroup directory of sandbox ``sid`` (v1 hierarchies and/or the unified one)."""
    dirs = []
    if (CGROUP_ROOT / "coppice" / sid).is_dir():
        dirs.append(CGROUP_ROOT / "coppice" / sid)
    try:
        for h in CGROUP_ROOT.iterdir():
            d = h / "coppice" / sid
            if d.is_dir():
                dirs.append(d)
    except OSError:
        pass
    return dirs


def cgroup_memory_bytes(sid: str) -> int | None:
    """Memory charged to the sandbox's cgroup: memory.usage_in_bytes (v1) or memory.current (v2)."""
    for d in (CGROUP_ROOT / "memory" / "coppice" / sid, CGROUP_ROOT / "coppice" / sid,
              CGROUP_ROOT / "unified" / "coppice" / sid):
        for f in ("memory.usage_in_bytes", "memory.current"):
            try:
                return int((d / f).read_text())
            except (OSError, ValueError):
                continue
    return None


def pss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Bearer tokens of the daemons this process started, by TCP port: every route of the TCP
# listener but /health (and the E2B routes, with their own keys) needs one.
_TOKENS: dict[int, str] = {}


def auth(port: int) -> dict[str, str]:
    """The Authorization header for the daemon on ``port`` (empty if it is not ours)."""
    token = _TOKENS.get(port)
    return {"Authorization": f"Bearer {token}"} if token else {}


class Daemon:
    """A private `coppice serve`. Use as a context manager, or call stop() + cleanup().

    The state dir is shared across restarts (the default template is built once); ``stop()``
    kills every sandbox of this state dir, including pooled ones (the API cannot see those,
    and a stopped daemon leaves its sandboxes running by design)."""

    def __init__(self, binary: Path, state_dir: Path, pool_size: int, no_network: bool,
                 log_path: Path, ready_timeout: float = 600.0, env: dict | None = None,
                 config: Path | None = None):
        self.binary = binary
        self.state_dir = state_dir
        self.pool_size = pool_size
        self.no_network = no_network
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.env = env
        self.config = config
        self.port = free_port()
        self.socket = state_dir.parent / f"{state_dir.name}.sock"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Daemon":
        cmd = [str(self.binary), "--socket", str(self.socket), "serve", "--state-dir", str(self.state_dir),
               "--listen", self.listen, "--pool-size", str(self.pool_size)]
        if self.no_network:
            cmd.append("--no-network")
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== {now_iso()} {' '.join(cmd)}\n".encode())
        self._log.flush()
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coppice serve exited with {self.proc.returncode} while starting;"
                                   f" log tail:\n{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status < 300:
                    _TOKENS[self.port] = self.token()
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"coppice serve not ready after {self.ready_timeout:.0f}s; log tail:\n{self.log_tail()}")

    def token(self) -> str:
        """The TCP listener's bearer token: the configured one, else the one the daemon made
        in its state dir at first start."""
        configured = (self.env or {}).get("COPPICE_MCP_TOKEN")
        return configured or (self.state_dir / "api-token").read_text().strip()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def api(self, timeout: float = 120.0) -> "Api":
        return Api(self.port, timeout)

    # -- pool

    def pool_ready(self) -> int:
        """Warmed sandboxes waiting in the pool, from the daemon's state.db (WAL, read only)."""
        db = self.state_dir / "state.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
            try:
                # Warmed (the pool_ready event: its first process ran, its code kernel started)
                # and waiting to be handed out.
                return con.execute("SELECT count(*) FROM sandboxes WHERE pooled = 1 AND pid IS NOT NULL AND id IN "
                                   "(SELECT sandbox FROM events WHERE kind = 'pool_ready')").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            # Fallback: sandbox directories whose cgroup has a process.
            return sum(1 for sid in self.sandbox_ids() if any_procs(sid))

    def wait_pool_full(self, timeout: float = 300.0, settle: float = 0.3) -> float:
        """Blocks until the pool holds ``pool_size`` started sandboxes; returns seconds waited."""
        t0 = time.monotonic()
        while self.pool_ready() < self.pool_size:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon died while filling its pool; log tail:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"pool not full after {timeout:.0f}s ({self.pool_ready()}/{self.pool_size})")
            time.sleep(0.05)
        time.sleep(settle)  # the filler's last bookkeeping, and let the host go quiet
        return time.monotonic() - t0

    # -- teardown

    def sandbox_ids(self) -> list[str]:
        try:
            # Dot names are the daemon's own (CRIU's cache), not sandboxes.
            return sorted(p.name for p in (self.state_dir / "sandboxes").iterdir()
                          if not p.name.startswith("."))
        except OSError:
            return []

    def delete_all_visible(self) -> None:
        """DELETEs every sandbox the API lists (pooled ones are not listed)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            api = self.api(timeout=30)
            for sb in api.list():
                api.delete(sb["id"])
            api.close()
        except Exception as e:  # teardown continues regardless
            print(f"warning: deleting sandboxes through the API: {e}", file=sys.stderr)

    def stop(self) -> None:
        """Deletes visible sandboxes, stops the daemon, then kills what is left (pool)."""
        self.delete_all_visible()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None
        kill_sandboxes(self.sandbox_ids())

    def cleanup(self) -> None:
        """After stop(): removes cgroups and the state dir (the next daemon would do it too)."""
        ids = self.sandbox_ids()
        kill_sandboxes(ids)
        for sid in ids:
            for d in sandbox_cgroup_dirs(sid):
                rmdir_retry(d)
        unmount_storage(self.state_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        try:
            self.socket.unlink()
        except OSError:
            pass

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def any_procs(sid: str) -> bool:
    for d in sandbox_cgroup_dirs(sid):
        try:
            if (d / "cgroup.procs").read_text().strip():
                return True
        except OSError:
            pass
    return False


def kill_sandboxes(ids: list[str], timeout: float = 20.0) -> None:
    """SIGKILLs every process in the cgroups of the given sandboxes (only those ids: other
    people's sandboxes are never touched) and waits until they are gone from /proc, not just
    from the cgroup: a killed agent is reparented to the host's init and stays a zombie until
    init reaps it, and the daemon's recovery counts a zombie as a live sandbox."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while True:
        left = 0
        for sid in ids:
            for d in sandbox_cgroup_dirs(sid):
                try:
                    pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    continue
                for pid in pids:
                    left += 1
                    seen.add(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if not left:
            break
        if time.monotonic() > deadline:
            print(f"warning: sandbox processes survive SIGKILL: {left}", file=sys.stderr)
            return
        time.sleep(0.05)
    while any(os.path.exists(f"/proc/{pid}") for pid in seen):
        if time.monotonic() > deadline:
            print("warning: killed sandbox processes not reaped yet (zombies)", file=sys.stderr)
            return
        time.sleep(0.05)


def rmdir_retry(d: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while d.exists():
        try:
            d.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                print(f"warning: could not remove {d}", file=sys.stderr)
                return
            time.sleep(0.05)


def unmount_storage(state_dir: Path) -> None:
    """Detaches what the daemon mounts in its state dir and leaves mounted when it stops (live
    sandboxes use them): the loop-mounted btrfs image (`<state>/btrfs`, sandbox uppers and
    snapshots; the loop device goes with it) and the tmpfs of sandbox directories
    (`<state>/sandboxes`)."""
    try:
        mounts = {line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    except OSError:
        return
    for target in (str(state_dir / "btrfs"), str(state_dir / "sandboxes")):
        if target in mounts:
            subprocess.run(["umount", "-l", target], check=False)


def upper_dir(state_dir: Path, sid: str) -> Path:
    """A sandbox's overlay upper: its btrfs subvolume's, else the plain directory."""
    sub = state_dir / "btrfs" / "uppers" / sid / "upper"
    return sub if sub.is_dir() else state_dir / "sandboxes" / sid / "fs" / "upper"


def make_state_dir(prefix: str) -> Path:
    """A temp dir on the same filesystem as /usr when possible (the default template is a
    hard-link farm of /usr; across filesystems it would be a full copy)."""
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# ---------------------------------------------------------------- HTTP API


class ApiError(RuntimeError):
    pass


class Api:
    """One persistent HTTP/1.1 connection to the daemon (not thread-safe: one per thread)."""

    def __init__(self, port: int, timeout: float = 120.0):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def _request(self, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(auth(self.port))
        try:
            self.conn.request(method, path, body=data, headers=headers)
            return self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closed an idle keep-alive connection: reconnect once.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request(method, path, body=data, headers=headers)
            return self.conn.getresponse()

    def create(self, body: dict | None = None) -> dict:
        r = self._request("POST", "/api/v1/sandboxes", body or {})
        data = r.read()
        if r.status != 201:
            raise ApiError(f"create: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)

    def exec_until_exit(self, sid: str, cmd: list[str]) -> tuple[dict, Callable[[], None]]:
        """Runs ``cmd``; returns the exit event as soon as its line arrives, plus a function
        that drains the rest of the response (call it outside any timed span, before the
        next request on this connection)."""
        r = self._request("POST", f"/api/v1/sandboxes/{sid}/exec", {"cmd": cmd})
        if r.status != 200:
            data = r.read()
            raise ApiError(f"exec: HTTP {r.status}: {data[:300]!r}")
        while True:
            line = r.readline()
            if not line:
                raise ApiError("exec: stream ended without an exit event")
            ev = json.loads(line)
            if ev.get("type") == "exit":
                return ev, r.read
            if ev.get("type") == "error":
                r.read()
                raise ApiError(f"exec: {ev}")

    def delete(self, sid: str) -> None:
        r = self._request("DELETE", f"/api/v1/sandboxes/{sid}")
        data = r.read()
        if r.status not in (204, 404):
            raise ApiError(f"delete: HTTP {r.status}: {data[:300]!r}")

    def list(self) -> list[dict]:
        r = self._request("GET", "/api/v1/sandboxes")
        data = r.read()
        if r.status != 200:
            raise ApiError(f"list: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)


class LeanHttp:
    """HTTP/1.1 over one keep-alive TCP socket, doing as little client work per request as
    Python allows (bytes in, bytes out: no header objects, no ``email`` header parser).

    Timed spans use it so that they measure the daemon: ``http.client`` spends about 0.3 ms
    of Python per request on this 2-core VM when its caches are cold (measured: pooled
    create -> `true` 4.0 ms through http.client, 3.3 ms through this, same daemon, same run).
    Only what the daemon sends is handled: Content-Length or chunked bodies."""

    def __init__(self, port: int, timeout: float = 120.0):
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.auth_line = "".join(f"{k}: {v}\r\n" for k, v in auth(port).items())

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the daemon closed the connection")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out, self.buf = self.buf[:i], self.buf[i + 2:]
        return out

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[bytes, bytes]]:
        """Sends one request; returns (status, lower-cased headers). Read the body next."""
        data = b"" if body is None else json.dumps(body).encode()
        msg = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"{self.auth_line}Content-Length: {len(data)}\r\n\r\n").encode() + data
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock.sendall(msg)
                status_line = self._line()
                break
            except (ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.close()
                if attempt:
                    raise
        headers = {}
        while line := self._line():
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        return int(status_line.split(b" ", 2)[1]), headers

    def chunks(self, headers: dict[bytes, bytes]):
        """The body, as it arrives."""
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while size := int(self._line().split(b";")[0], 16):
                yield self._take(size)
                self._take(2)
            while self._line():  # trailers
                pass
        elif n := int(headers.get(b"content-length", b"0")):
            yield self._take(n)

    def body(self, headers: dict[bytes, bytes]) -> bytes:
        return b"".join(self.chunks(headers))


class LeanApi:
    """The calls the timed spans make (create, exec to its exit line, delete) over
    ``LeanHttp``; same contract as ``Api``'s methods of the same names."""

    def __init__(self, port: int, timeout: float = 120.0):
        self.http = LeanHttp(port, timeout)

    def close(self) -> None:
        self.http.close()

    def create(self, body: dict | None = None) -> dict:
        status, headers = self.http.request("POST", "/api/v1/sandboxes", body or {})
        data = self.http.body(headers)
        if status != 201:
            raise ApiError(f"create: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def exec_until_exit(self, sid: str, cmd: list[str]) -> tuple[dict, Callable[[], None]]:
        status, headers = self.http.request("POST", f"/api/v1/sandboxes/{sid}/exec", {"cmd": cmd})
        if status != 200:
            data = self.http.body(headers)
            raise ApiError(f"exec: HTTP {status}: {data[:300]!r}")
        body = self.http.chunks(headers)

        def drain() -> None:
            for _ in body:
                pass

        pending = b""
        for chunk in body:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                ev = json.loads(line)
                if ev.get("type") == "exit":
                    return ev, drain
                if ev.get("type") == "error":
                    drain()
                    raise ApiError(f"exec: {ev}")
        raise ApiError("exec: stream ended without an exit event")

    def delete(self, sid: str) -> None:
        status, headers = self.http.request("DELETE", f"/api/v1/sandboxes/{sid}")
        data = self.http.body(headers)
        if status not in (204, 404):
            raise ApiError(f"delete: HTTP {status}: {data[:300]!r}")


# ---------------------------------------------------------------- load shape


def run_rounds(cc: int, samples: int, make_worker: Callable[[int], Any],
               timed: Callable[[Any], Any],
               after_sample: Callable[[Any, Any], None] | None = None,
               cleanup: Callable[[Any, Any], None] | None = None,
               between_rounds: Callable[[], None] | None = None) -> tuple[list[float], list[str]]:
    """The load shape of the latency rigs: ceil(samples / cc) rounds; in each, ``cc`` threads
    (each with its own state from ``make_worker(i)``, e.g. a persistent connection) start
    ``timed(state)`` together behind a barrier. Only ``timed`` is timed (wall clock).

    Then, untimed: ``after_sample(state, result)`` right away in the same thread (e.g. drain
    a response); once every thread of the round is done, ``cleanup(state, result)`` in
    parallel on every thread (e.g. DELETE the sandbox, so deletes never overlap a timed span);
    then ``between_rounds()`` (e.g. wait until the pool is full again).
    Returns (latencies in seconds, errors)."""
    rounds = max(1, math.ceil(samples / cc))
    states = [make_worker(i) for i in range(cc)]
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def note(e: BaseException) -> None:
        with lock:
            errors.append(f"{type(e).__name__}: {e}")

    for _ in range(rounds):
        start = threading.Barrier(cc)
        done = threading.Barrier(cc)

        def one(state: Any) -> None:
            start.wait()
            t0 = time.perf_counter()
            res = None
            try:
                res = timed(state)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                if after_sample:
                    after_sample(state, res)
            except Exception as e:  # a failed sample is reported, not timed
                note(e)
            done.wait()
            if cleanup and res is not None:
                try:
                    cleanup(state, res)
                except Exception as e:
                    note(e)

        threads = [threading.Thread(target=one, args=(s,)) for s in states]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if between_rounds:
            between_rounds()
    return lat, errors
