#!/usr/bin/env python3
"""Coppice's MCP surface driven by clients nobody here wrote, against ONE private daemon.

- **SSH** (as Claude Code launches a remote stdio server): a private `sshd` from Debian's
  openssh-server on a free loopback port, with its own config, host key, authorized key and
  pid file (the system sshd and /etc/ssh/sshd_config are never touched). The Python `mcp`
  client starts
      ssh -T -o BatchMode=yes ... root@127.0.0.1 env COPPICE_SOCKET=<sock> <coppice-mcp>
  and runs a full tool sequence; a raw probe checks that nothing but MCP reaches stdout and
  that the remote server exits when ssh's stdin closes.
- **MCP Inspector CLI** (npm, on Node 22 from npm): `tools/list` and `tools/call` over stdio
  and over streamable HTTP (legacy and 2026-07-28 eras).
- **The official conformance suite** (`@modelcontextprotocol/conformance`) against `/mcp`,
  the requirement sets of both eras (2025-11-25 and 2026-07-28). Only the checks listed in
  mcp/tests/conformance-expected-failures.yml may fail (each needs the suite's reference
  fixture's own tool/prompt/resource names); any other failure, or a listed check that now
  passes (stale entry), fails the test.

Why the ssh login is root: the daemon's control socket is root-only (0600), and that is what
`coppice-mcp` joins. Logging in as root is what a real deployment of
`ssh HOST /usr/local/bin/coppice-mcp` does too (or as a user the operator granted the socket).
Here it is confined to this test's sshd: loopback only, `PermitRootLogin prohibit-password`,
`AllowUsers root`, one throwaway ed25519 key listed in an AuthorizedKeysFile inside this
test's temp dir (root's own ~/.ssh is not read or written), no password or keyboard auth,
and the sshd is killed at the end. No system account is created, so nothing is left in
/etc/passwd if the test is killed. The login's HOME is set (sshd `SetEnv`) to a home in
the temp dir whose ~/.bashrc is Debian's skeleton plus a greeting in its interactive part
and whose ~/.profile prints too, as real homes do: bash run by sshd sources ~/.bashrc even
for a command, so the test proves that a normal rc file keeps stdout clean, and a second
port whose ~/.bashrc prints *above* the "not interactive" guard proves the probe would
catch pollution (the reason README tells operators to keep rc files silent).
`-T` (never a pty: a pty turns \\n into \\r\\n and merges stderr into stdout) and `env K=V`
on the remote command line (Claude Code's `--env` only reaches the local ssh) are what the
README documents.

The token: the daemon runs with COPPICE_MCP_TOKEN as in test_mcp.py, so every HTTP route
needs `Authorization: Bearer`. The Inspector passes it with `--header`; the conformance suite
has no header option, so a Node preload (`--import`) adds the header to each of its requests
and changes nothing else (Host and Origin still reach the daemon's own checks). A proxy was
tried first and broke keep-alive reuse after 403s, failing a DNS-rebinding check wrongly.

Usage: python3 mcp/tests/test_clients.py [--coppice target/release/coppice] [--only ssh|inspector|conformance]
Needs root, scripts/setup.sh's installs (openssh-server, /opt/coppice-test-clients) and no
other `coppice serve` on the host (it waits for one to end). Ends with "N passed, M failed".
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "rigs"))
import common  # noqa: E402  (the rigs' private-daemon harness)
from common import Daemon, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
EXPECTED_FAILURES = HERE / "conformance-expected-failures.yml"
CLIENTS = Path(os.environ.get("COPPICE_TEST_CLIENTS", "/opt/coppice-test-clients"))
TOKEN = "test-" + uuid.uuid4().hex
SEQUENCE_TOOLS = {"sandbox_create", "commands_run", "files_write", "files_read", "sandbox_kill"}

import cases  # noqa: E402
from cases import case, check, failed  # noqa: E402


# ------------------------------------------------------------------ the daemon


class TokenDaemon(Daemon):
    """common.Daemon whose readiness probe sends the bearer token (with a token set, the
    daemon guards every route of its listener, /health included)."""

    def start(self) -> "TokenDaemon":
        cmd = [str(self.binary), "--socket", str(self.socket), "serve", "--state-dir", str(self.state_dir),
               "--listen", self.listen, "--pool-size", str(self.pool_size)]
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== {common.now_iso()} {' '.join(cmd)}\n".encode())
        self._log.flush()
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coppice serve exited with {self.proc.returncode} while starting;"
                                   f" log tail:\n{self.log_tail()}")
            try:
                status, _ = api(self, "GET", "/health")
                if status < 300 and self.socket.exists():
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"coppice serve not ready after {self.ready_timeout:.0f}s; log tail:\n{self.log_tail()}")

    def delete_all_visible(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            status, body = api(self, "GET", "/api/v1/sandboxes")
            for sb in json.loads(body) if status == 200 else []:
                api(self, "DELETE", f"/api/v1/sandboxes/{sb['id']}")
        except Exception as e:  # noqa: BLE001 - teardown goes on
            print(f"warning: deleting sandboxes through the API: {e}", file=sys.stderr)


def api(daemon: Daemon, method: str, path: str) -> tuple[int, bytes]:
    """One request to the daemon's native API, with the token."""
    c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def kill_sandbox(daemon: Daemon, sid: str) -> None:
    status, body = api(daemon, "DELETE", f"/api/v1/sandboxes/{sid}")
    check(status in (204, 404), f"DELETE {sid}: {status} {body[:200]!r}")


# ------------------------------------------------------------------ raw stdio probe


def rpc_lines(era: str) -> list[dict]:
    """Requests of a short session: handshake (legacy) or discover (2026), then tools/list."""
    if era == "legacy":
        return [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "probe", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
        ]
    raise ValueError(era)


def probe_stdio(cmd: list[str], timeout: float = 60) -> dict:
    """Runs a stdio MCP server command (e.g. ssh ... coppice-mcp): one short session, then
    closes stdin. Returns the stdout lines, whether each is JSON-RPC, the replies by id,
    stderr, and how long the command took to exit after stdin closed."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = io.BytesIO()
    t_err = threading.Thread(target=lambda: err.write(p.stderr.read()), daemon=True)
    t_err.start()
    lines: list[bytes] = []
    replies: dict = {}
    try:
        p.stdin.write("".join(json.dumps(m) + "\n" for m in rpc_lines("legacy")).encode())
        p.stdin.flush()
        deadline = time.monotonic() + timeout
        while 2 not in replies and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            try:
                msg = json.loads(line)
                if isinstance(msg, dict) and "id" in msg:
                    replies[msg["id"]] = msg
            except ValueError:
                pass
        t0 = time.monotonic()
        p.stdin.close()
        try:
            rest = p.stdout.read()  # until the server (and ssh) close stdout
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"{cmd[0]} did not exit after stdin EOF")
        exit_s = time.monotonic() - t0
        lines.extend(rest.splitlines(keepends=True))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    t_err.join(5)

    def is_jsonrpc(line: bytes) -> bool:
        try:
            m = json.loads(line)
        except ValueError:
            return False
        return isinstance(m, dict) and m.get("jsonrpc") == "2.0"

    return {"lines": lines, "bad": [x for x in lines if not is_jsonrpc(x)], "replies": replies,
            "stderr": err.getvalue().decode(errors="replace"), "exit_s": exit_s, "code": p.returncode}


# ------------------------------------------------------------------ SSH


class PrivateSshd:
    """A private sshd on loopback: own config, host key, authorized key, pid file, log."""

    def __init__(self, mcp_bin: Path, socket_path: Path):
        self.mcp_bin = mcp_bin
        self.socket_path = socket_path
        # Under /run (root-owned 0755 all the way up), so sshd's StrictModes accepts the
        # authorized_keys file in it; /tmp is world-writable and would be refused.
        self.dir = Path(tempfile.mkdtemp(prefix="coppice-ssh-test-", dir="/run"))
        self.port = free_port()
        self.noisy_port = free_port()
        while self.noisy_port == self.port:
            self.noisy_port = free_port()
        self.key = self.dir / "client_key"
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "sshd.log"

    def start(self) -> "PrivateSshd":
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"coppice-ssh-test-{name}",
                            "-f", str(d / name)], check=True)
        pub = (d / "client_key.pub").read_text().strip()
        # restrict = no forwarding of any kind; pty re-allowed so the client's -T is what
        # keeps the session pty-less, as with a real host.
        (d / "authorized_keys").write_text(f'restrict,pty,from="127.0.0.1" {pub}\n')
        (d / "authorized_keys").chmod(0o600)
        (d / "banner").write_text("coppice-ssh-test banner: goes to ssh's stderr, never stdout\n")
        skel = Path("/etc/skel/.bashrc")
        bashrc = skel.read_text() if skel.exists() else "case $- in\n    *i*) ;;\n      *) return;;\nesac\n"
        for home, rc in (("home", bashrc + '\necho "welcome back, $USER (interactive shells only)"\n'),
                         ("noisy-home", 'echo "rc noise above the interactive guard"\n' + bashrc)):
            h = d / home
            h.mkdir(mode=0o700)
            (h / ".bashrc").write_text(rc)
            (h / ".profile").write_text('echo "login-shell noise from ~/.profile"\n. "$HOME/.bashrc"\n')
        (d / "sshd_config").write_text(f"""\
# coppice test sshd: loopback only, key only, this test's files only.
Port {self.port}
Port {self.noisy_port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AuthorizedPrincipalsFile none
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes yes
PermitUserEnvironment no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PrintMotd yes
PrintLastLog no
Banner {d}/banner
ClientAliveInterval 15
ClientAliveCountMax 3
LogLevel VERBOSE
SetEnv HOME={d}/home
Match LocalPort {self.noisy_port}
    SetEnv HOME={d}/noisy-home
""")
        # sshd needs its privilege-separation directory; Debian's service creates it at
        # boot, a host whose sshd never ran may lack it (created, never removed).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        subprocess.run([sshd, "-t", "-f", str(d / "sshd_config")], check=True)
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 10
        while True:
            try:
                for port in (self.port, self.noisy_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"private sshd did not start:\n{self.log.read_text()}")
                time.sleep(0.05)

    def ssh_command(self, noisy: bool = False) -> list[str]:
        """What Claude Code runs for `claude mcp add coppice -- ssh -T -o BatchMode=yes HOST
        env COPPICE_SOCKET=... /path/coppice-mcp`, plus this test's key and throwaway host
        key handling. The remote command goes through the login shell, so it is quoted."""
        remote = ["env", f"COPPICE_SOCKET={self.socket_path}", str(self.mcp_bin)]
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                "-i", str(self.key), "-p", str(self.noisy_port if noisy else self.port), "root@127.0.0.1",
                " ".join(shlex.quote(a) for a in remote)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def cleanup(self, keep: bool) -> None:
        if keep:
            print(f"private sshd files kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


async def t_ssh_stdout_clean(sshd: PrivateSshd) -> None:
    r = probe_stdio(sshd.ssh_command())
    check(r["code"] == 0, f"ssh exited {r['code']}: {r['stderr'][-500:]}")
    check(not r["bad"], f"non-MCP bytes on stdout: {r['bad'][:3]}")
    init = r["replies"].get(1, {}).get("result", {})
    check("Connected to the Coppice daemon" in (init.get("instructions") or ""),
          f"did not join the test daemon: {init.get('instructions')!r}")
    tools = {t["name"] for t in r["replies"].get(2, {}).get("result", {}).get("tools", [])}
    check(SEQUENCE_TOOLS <= tools, f"tools over ssh: {sorted(tools)}")
    check("banner" in r["stderr"], f"sshd's banner goes to ssh's stderr: {r['stderr'][-300:]!r}")
    check(r["exit_s"] < 3, f"remote coppice-mcp took {r['exit_s']:.2f}s to end after stdin EOF")


async def t_ssh_noisy_rc_detected(sshd: PrivateSshd) -> None:
    r = probe_stdio(sshd.ssh_command(noisy=True))
    check(any(b"rc noise" in x for x in r["bad"]),
          f"an rc file printing above the interactive guard was expected on stdout: {r['lines'][:3]}")
    check(2 in r["replies"], "the session still worked past the noise line")


async def t_ssh_sequence(sshd: PrivateSshd, daemon: Daemon, mode: str) -> None:
    cmd = sshd.ssh_command()
    params = StdioServerParameters(command=cmd[0], args=cmd[1:])
    junk: list[BaseException] = []

    async def on_message(msg) -> None:
        if isinstance(msg, Exception):
            junk.append(msg)

    errlog = open(sshd.dir / f"ssh-client-{mode}.stderr", "w")
    sid = None
    try:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, message_handler=on_message,
                          read_timeout_seconds=120) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            check(SEQUENCE_TOOLS <= names, f"tools: {sorted(names)}")
            r = await c.call_tool("sandbox_create", {"timeout_secs": 120, "metadata": {"via": "ssh"}})
            check(not r.is_error, f"sandbox_create: {r.content}")
            sid = r.structured_content["sandbox_id"]
            # The sandbox lives in the test daemon (the one the socket leads to).
            status, body = api(daemon, "GET", f"/api/v1/sandboxes/{sid}")
            check(status == 200, f"sandbox made over ssh not in the daemon: {status} {body[:200]!r}")
            r = await c.call_tool("commands_run", {"sandbox_id": sid, "cmd": "echo over-ssh; echo err >&2; exit 4"})
            sc = r.structured_content
            check(not r.is_error and sc["stdout"] == "over-ssh\n" and sc["stderr"] == "err\n" and sc["exit_code"] == 4,
                  f"commands_run: {sc or r.content}")
            body_text = "line one\nline two\n" + "x" * 1000 + "\n"
            r = await c.call_tool("files_write", {"sandbox_id": sid, "path": "ssh/notes.txt", "content": body_text})
            check(not r.is_error and r.structured_content["bytes"] == len(body_text), f"files_write: {r.content}")
            r = await c.call_tool("files_read", {"sandbox_id": sid, "path": "ssh/notes.txt"})
            check(not r.is_error and r.structured_content["text"] == body_text, f"files_read: {r.content}")
            r = await c.call_tool("commands_run", {"sandbox_id": sid, "cmd": "wc -l < ssh/notes.txt"})
            check(r.structured_content["stdout"].strip() == "3", f"file seen by commands: {r.structured_content}")
            r = await c.call_tool("sandbox_kill", {"sandbox_id": sid})
            check(not r.is_error and r.structured_content["killed"], f"sandbox_kill: {r.content}")
            status, _ = api(daemon, "GET", f"/api/v1/sandboxes/{sid}")
            check(status == 404, f"killed sandbox still there: {status}")
            sid = None
            r = await c.call_tool("sandbox_info", {"sandbox_id": "doesnotexist"})
            check(r.is_error, "a missing sandbox is an isError result over ssh too")
    finally:
        errlog.close()
        if sid:
            kill_sandbox(daemon, sid)
    check(not junk, f"the client saw non-MCP input: {junk[:3]}")


# ------------------------------------------------------------------ MCP Inspector CLI


def client_env(home: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{CLIENTS / 'node_modules/.bin'}:{env.get('PATH', '')}"
    env["HOME"] = str(home)  # the Inspector keeps a catalog and OAuth state under ~/.mcp-inspector
    env.pop("NODE_OPTIONS", None)
    return env


def inspector(home: Path, target: list[str], *flags: str) -> dict:
    cmd = [str(CLIENTS / "node_modules/.bin/inspector"), "--cli", *target, *flags, "--format", "json"]
    r = subprocess.run(cmd, env=client_env(home), capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    check(r.returncode == 0, f"inspector exited {r.returncode}: {r.stderr[-800:]} {r.stdout[-300:]}")
    try:
        out = json.loads(r.stdout)
        return out.get("result", out)  # --format json prints {"result": ...}
    except ValueError:
        raise AssertionError(f"inspector printed no JSON: {r.stdout[-500:]!r}")


def tool_names(out: dict) -> set[str]:
    return {t["name"] for t in out.get("tools", [])}


def call_result(out: dict) -> dict:
    check(not out.get("isError"), f"tools/call isError: {out}")
    sc = out.get("structuredContent")
    check(isinstance(sc, dict), f"no structuredContent: {out}")
    return sc


async def t_inspector_stdio(home: Path, mcp_bin: Path, daemon: Daemon) -> None:
    target = [str(mcp_bin), "-e", f"COPPICE_SOCKET={daemon.socket}"]
    names = tool_names(inspector(home, target, "--method", "tools/list"))
    check(SEQUENCE_TOOLS <= names, f"tools/list over stdio: {sorted(names)}")
    out = inspector(home, target, "--method", "tools/call", "--tool-name", "commands_run",
                    "--tool-args-json", json.dumps({"cmd": "echo inspector-stdio; uname -s"}))
    sc = call_result(out)
    kill_sandbox(daemon, sc["sandbox_id"])
    check(sc["stdout"] == "inspector-stdio\nLinux\n" and sc["exit_code"] == 0, f"tools/call over stdio: {sc}")
    return names


async def t_inspector_http(home: Path, daemon: Daemon, era: str) -> None:
    target = [f"http://127.0.0.1:{daemon.port}/mcp", "--transport", "http",
              "--header", f"Authorization: Bearer {TOKEN}", "--stored-auth-only", "--protocol-era", era]
    names = tool_names(inspector(home, target, "--method", "tools/list"))
    check(SEQUENCE_TOOLS <= names, f"tools/list over HTTP: {sorted(names)}")
    out = inspector(home, target, "--method", "tools/call", "--tool-name", "commands_run",
                    "--tool-args-json", json.dumps({"cmd": f"echo inspector-{era}"}))
    sc = call_result(out)
    kill_sandbox(daemon, sc["sandbox_id"])
    check(sc["stdout"] == f"inspector-{era}\n", f"tools/call over HTTP ({era}): {sc}")
    # Without the token: refused, and the Inspector says so (exit 3 = auth required).
    cmd = [str(CLIENTS / "node_modules/.bin/inspector"), "--cli", f"http://127.0.0.1:{daemon.port}/mcp",
           "--transport", "http", "--stored-auth-only", "--protocol-era", era, "--method", "tools/list",
           "--format", "json"]
    r = subprocess.run(cmd, env=client_env(home), capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    check(r.returncode != 0, f"no token should fail: {r.stdout[-300:]}")


# ------------------------------------------------------------------ conformance


# Node preload for the conformance suite: adds `Authorization: Bearer <token>` to every
# request it makes, through undici's global dispatcher (its `request` and Node's fetch) and
# node:http (raw requests with hand-made headers). Nothing else is changed, so Host and
# Origin still reach the daemon's own checks.
AUTH_PRELOAD = r"""
import http from "node:http";
import { createRequire } from "node:module";
const require = createRequire(process.env.COPPICE_UNDICI_FROM);
const { Agent, setGlobalDispatcher } = require("undici");
const auth = `Bearer ${process.env.COPPICE_TEST_TOKEN}`;
function withAuth(h) {
  if (h == null) return { authorization: auth };
  if (Array.isArray(h)) {
    for (let i = 0; i < h.length; i += 2) if (String(h[i]).toLowerCase() === "authorization") return h;
    return [...h, "authorization", auth];
  }
  if (typeof h[Symbol.iterator] === "function" && h.constructor !== Object) {
    const o = {};
    for (const [k, v] of h) o[k] = v;
    h = o;
  }
  for (const k of Object.keys(h)) if (k.toLowerCase() === "authorization") return h;
  return { ...h, authorization: auth };
}
setGlobalDispatcher(new Agent().compose((dispatch) => (opts, handler) =>
  dispatch({ ...opts, headers: withAuth(opts.headers) }, handler)));
const request = http.request;
http.request = function (...args) {
  const req = request.apply(this, args);
  try { if (!req.getHeader("authorization")) req.setHeader("authorization", auth); } catch {}
  return req;
};
"""


def read_checks(outdir: Path) -> list[tuple[str, str, str, str]]:
    """(scenario, check id, status, message) of every check the suite wrote."""
    rows = []
    for f in sorted(outdir.rglob("checks.json")):
        # server-<scenario>-<timestamp>
        scen = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$", "", f.parent.name).removeprefix("server-")
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        for c in data if isinstance(data, list) else data.get("checks", []):
            rows.append((scen, c.get("id", "?"), c.get("status", "?"), (c.get("errorMessage") or
                                                                       c.get("message") or "")[:160]))
    return rows


async def t_conformance(home: Path, daemon: Daemon, revision: str, tmp: Path) -> None:
    outdir = tmp / f"conformance-{revision}"
    preload = tmp / "auth-preload.mjs"
    preload.write_text(AUTH_PRELOAD)
    env = client_env(home)
    env.update({"NODE_OPTIONS": f"--import={preload}", "COPPICE_TEST_TOKEN": TOKEN,
                "COPPICE_UNDICI_FROM": str(CLIENTS / "node_modules/@modelcontextprotocol/conformance/package.json")})
    cmd = [str(CLIENTS / "node_modules/.bin/conformance"), "server",
           "--url", f"http://127.0.0.1:{daemon.port}/mcp", "--requirements", revision,
           "--expected-failures", str(EXPECTED_FAILURES), "-o", str(outdir)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    log = tmp / f"conformance-{revision}.log"
    log.write_text(r.stdout + "\n--- stderr\n" + r.stderr)
    rows = read_checks(outdir)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    total = [ln for ln in plain.splitlines() if ln.startswith("Total:")]
    verdict = plain[plain.find("Unexpected failures"):] if "Unexpected failures" in plain else ""
    stale = [ln for ln in plain.splitlines() if "stale" in ln.lower()]
    print(f"     conformance {revision}: {len(rows)} checks; {total[-1] if total else '?'}; failures outside "
          f"{EXPECTED_FAILURES.name} fail this case; full log: {log}")
    for ln in (verdict.splitlines()[:30] + stale[:10]):
        if ln.strip():
            print(f"       {ln}")
    for scen, cid, status, msg in rows:
        if status not in ("SUCCESS", "INFO", "SKIPPED") and scen in verdict:
            print(f"       {status.lower()}: {scen}:{cid}: {msg}")
    check(rows, f"the suite wrote no checks.json (exit {r.returncode}): {r.stderr[-800:]}")
    check(r.returncode == 0, f"conformance {revision} exited {r.returncode}: an unexpected failure or a stale"
          f" expected-failures entry (listed above; stderr tail: {r.stderr[-400:]!r})")


# ------------------------------------------------------------------ main


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coppice", default=str(REPO / "target/release/coppice"))
    ap.add_argument("--only", default="", help="ssh, inspector or conformance")
    ap.add_argument("--wait-other", type=float, default=600, help="seconds to wait for another daemon")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = ap.parse_args()
    coppice = Path(args.coppice).resolve()
    mcp_bin = coppice.parent / "coppice-mcp"
    for need, what in ((CLIENTS / "node_modules/.bin/node", "Node 22 from npm"),
                       (CLIENTS / "node_modules/.bin/inspector", "the MCP Inspector"),
                       (CLIENTS / "node_modules/.bin/conformance", "the conformance suite")):
        if not need.exists():
            sys.exit(f"{what} is missing ({need}): run scripts/setup.sh")
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        sys.exit("sshd is missing (Debian's openssh-server): run scripts/setup.sh")
    common.refuse_if_other_daemon(args.wait_other)
    tmp = Path(tempfile.mkdtemp(prefix="coppice-clients-test-"))
    home = tmp / "home"
    home.mkdir()
    daemon = TokenDaemon(coppice, common.make_state_dir("coppice-clients-state-"), pool_size=1,
                         no_network=False, log_path=tmp / "daemon.log", env={"COPPICE_MCP_TOKEN": TOKEN})
    sshd = None
    daemon.start()
    try:
        if args.only in ("", "ssh"):
            try:
                sshd = PrivateSshd(mcp_bin, daemon.socket).start()
            except Exception as e:  # noqa: BLE001
                failed.append("private sshd")
                print(f"FAIL private sshd: {e!r}", flush=True)
            if sshd:
                await case("ssh -T: stdout is MCP only, joined the daemon, exits at EOF",
                           t_ssh_stdout_clean, sshd)
                await case("ssh: an rc file printing above the guard is caught (negative control)",
                           t_ssh_noisy_rc_detected, sshd)
                for mode in ("auto", "legacy"):
                    await case(f"ssh: Python mcp ({mode}) runs create/run/write/read/kill",
                               t_ssh_sequence, sshd, daemon, mode)
        if args.only in ("", "inspector"):
            await case("Inspector CLI over stdio: tools/list, tools/call", t_inspector_stdio, home, mcp_bin, daemon)
            for era in ("legacy", "modern"):
                await case(f"Inspector CLI over HTTP ({era}): tools/list, tools/call, no token refused",
                           t_inspector_http, home, daemon, era)
        if args.only in ("", "conformance"):
            for revision in ("2025-11-25", "2026-07-28"):
                await case(f"conformance suite, requirements {revision}", t_conformance, home, daemon, revision, tmp)
    finally:
        if sshd:
            sshd.stop()
            sshd.cleanup(keep=args.keep or any(f.startswith("ssh") or "sshd" in f for f in failed))
        if failed:
            print(f"daemon log tail:\n{daemon.log_tail(40)}")
        daemon.stop()
        daemon.cleanup()
        if failed or args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{cases.passed} passed, {len(failed)} failed")
    if failed:
        print("failed: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
