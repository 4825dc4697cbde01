#!/usr/bin/env python3
"""Network policy, end to end: a real daemon, real sandboxes, and a test "world" of network
namespaces that this test creates, so no packet leaves the machine.

World: netns ``cpw-world`` joined to the host by a veth (host 198.51.100.250/31, world .251).
Servers listen there on documentation addresses (198.51.100.10, .20, 203.0.113.20) and on the
cloud metadata address 169.254.169.254. Only the sandboxes' egress is routed into the world:
a policy-routing rule ``iif coppice0 lookup 1088``; the host's own traffic is unaffected
(no host route to those addresses except the /31 of the link).

Checks (IPv4, and IPv6 when the host has it): default policy (internet allowed; metadata, the
host's services and a sibling sandbox
denied); allow/deny by CIDR and port; allow beating deny; explicit allow of metadata and of a
host service; air gap; a live flip cutting a long-lived connection (and its conntrack entry);
a bandwidth cap within 10% each way; policy given at create time; bad policies refused without
changing anything; the policy kept across a daemon restart; domain rules (Coppice's resolver
answering only allowed names and admitting their addresses for the TTL, wildcards, the TLS SNI
/ HTTP Host check, expiry, air gap, no other DNS server, the host's IPv6 nameserver redirected
to the resolver too). Needs root; run it under the host lock:

    flock /tmp/coppice-host.lock python3 runtime/tests/network_policy.py --coppice target/release/coppice
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "rigs"))
from common import Daemon, refuse_if_other_daemon  # noqa: E402
from networld import DNS_SERVER, DNS_SERVER6, DOMAIN_NAMES, REBIND_NAMES, World, sh  # noqa: E402

# Runs in a sandbox: connect, print what came back or why not.
PROBE = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.settimeout(3)
    print("OK", s.recv(200).decode().strip())
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("ERR", e.errno)
"""

# The tail of the stream readers below: read `s` line by line, say when it ends and how
# (ssl.SSLError is an OSError).
READ_TO_END = r"""
n = 0
try:
    while True:
        d = s.recv(100)
        if not d:
            print("END eof", flush=True); break
        n += d.count(b"\n")
        print("TICK", n, flush=True)
except socket.timeout:
    print("END timeout", flush=True)
except OSError as e:
    print("END error", type(e).__name__, e.errno, flush=True)
"""

# Runs in a sandbox: read the stream, say when it ends and how.
STREAM = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(5)
""" + READ_TO_END


# Runs in a sandbox: download N bytes (5001) or upload them (5002); prints bytes per second.
RATE = r"""
import socket, sys, time
host, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, 5001 if mode == "down" else 5002), timeout=10)
s.settimeout(60)
t0 = time.monotonic()
if mode == "down":
    buf = bytearray(1 << 16); got = 0
    while got < n:
        k = s.recv_into(buf)
        if not k: break
        got += k
else:
    chunk = bytes(1 << 16); sent = 0
    while sent < n:
        s.sendall(chunk); sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    got = int(s.makefile().readline().split()[1])
print(got / (time.monotonic() - t0))
"""


# Runs in a sandbox: resolve a name through the system resolver (resolv.conf); IPv4, or IPv6
# (AAAA) when the second argument is "6".
RESOLVE = r"""
import socket, sys
fam = socket.AF_INET6 if sys.argv[2:] == ["6"] else socket.AF_INET
try:
    print("IP", socket.getaddrinfo(sys.argv[1], None, fam)[0][4][0])
except OSError as e:
    print("ERR", type(e).__name__, e)
"""

# Runs in a sandbox: one raw DNS query (A, or the type given third) over UDP to a given server
# (either family);
# prints the rcode and the number of answers.
DNSQ = r"""
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
qtype = int(sys.argv[3]) if len(sys.argv) > 3 else 1
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", qtype, 1)
s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
try:
    s.sendto(q, (server, 53)); r = s.recv(512)
    print("RCODE", r[3] & 15, "ANSWERS", struct.unpack(">H", r[6:8])[0])
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("ERR", e.errno)
"""

# Runs in a sandbox: an HTTP/1.1 request to an address with a given Host header.
HTTP = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 80), timeout=5); s.settimeout(5)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {sys.argv[2]}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            # The world's server answers at once and closes without reading the request.
            if data: break
            raise
        if not d: break
        data += d
    print("OK", data.decode(errors="replace").splitlines()[0] if data else "")
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("ERR", e.errno)
"""

# Runs in a sandbox: a TLS connection to an address with a given SNI (certificate not checked:
# the world's is self-signed; the name check under test is Coppice's).
TLS = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    s = socket.create_connection((sys.argv[1], 443), timeout=5); s.settimeout(5)
    t = ctx.wrap_socket(s, server_hostname=sys.argv[2] or None)
    print("OK", t.recv(200).decode().strip())
except socket.timeout:
    print("TIMEOUT")
except (OSError, ssl.SSLError) as e:
    print("ERR", type(e).__name__)
"""

# Runs in a sandbox: a TLS connection (address, SNI) that asks the world's server for a tick
# every 100 ms, printing each until the connection ends and how.
TLS_STREAM = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((sys.argv[1], 443), timeout=5)
s = ctx.wrap_socket(s, server_hostname=sys.argv[2]); s.settimeout(5)
print("HELLO", s.recv(200).decode().strip(), flush=True)
s.sendall(b"stream\n")
""" + READ_TO_END


class T:
    def __init__(self, coppice: Path, daemon: Daemon) -> None:
        self.coppice = coppice
        self.d = daemon
        self.failures: list[str] = []
        self.passed = 0

    def cli(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.coppice), "--socket", str(self.d.socket), *args],
                           capture_output=True, text=True, input=stdin, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"coppice {' '.join(args)}: {r.returncode}: {r.stderr.strip()}")
        return r

    def create(self, policy: dict | None = None) -> str:
        args = ["sandbox", "create", "--timeout", "600s"]
        if policy is not None:
            args += ["--network-policy", json.dumps(policy)]
        return self.cli(*args).stdout.strip()

    def set(self, sid: str, policy: dict) -> dict:
        return json.loads(self.cli("network", "set", sid, json.dumps(policy), "--json").stdout)

    def probe(self, sid: str, host: str, port: int) -> str:
        return self.cli("exec", sid, "--", "python3", "-c", PROBE, host, str(port), check=False).stdout.strip()

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"  ok   {name}")
        else:
            self.failures.append(f"{name}: {detail}")
            print(f"  FAIL {name}: {detail}")

    def reach(self, sid: str, host: str, port: int, want: bool, name: str) -> None:
        got = self.probe(sid, host, port)
        self.check(f"{name}: {host}:{port} {'reachable' if want else 'denied'}",
                   got.startswith("OK") == want and (want or got.startswith(("ERR", "TIMEOUT"))), got)


def host_server(addr: str) -> tuple[socket.socket, int]:
    """A server on the host itself (its loopback or every address), answering like the world's."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 0))
    s.listen(16)

    def loop() -> None:
        while True:
            try:
                c, _ = s.accept()
                c.sendall(b"hello host\n")
                c.close()
            except OSError:
                return
    threading.Thread(target=loop, daemon=True).start()
    return s, s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coppice", type=Path, default=Path("target/release/coppice"))
    ap.add_argument("--wait-other", type=float, default=600.0,
                    help="seconds to wait for another coppice daemon to stop (one per host)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED: needs root (netns, bridge, nftables)")
        return 0
    refuse_if_other_daemon(args.wait_other)
    coppice = args.coppice.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="coppice-netpol-"))
    daemon = Daemon(coppice, tmp / "state", pool_size=1, no_network=False, log_path=tmp / "daemon.log",
                    env={"COPPICE_DNS_UPSTREAM": f"{DNS_SERVER}:53"})
    world = World()
    t = T(coppice, daemon)
    made: list[Path] = []
    try:
        world.up()
        world.up_domains(tmp)
        made = ipv6_nameserver(world.v6)
        daemon.start()
        run(t, daemon, world.v6, bool(made))
    finally:
        daemon.stop()
        daemon.cleanup()
        world.down()
        for p in made:
            p.unlink() if p.is_file() else p.rmdir()
    print(f"\n{t.passed} passed, {len(t.failures)} failed")
    for f in t.failures:
        print("  FAILED:", f)
    if t.failures:
        print(f"daemon log: {tmp / 'daemon.log'}")
        return 1
    return 0


# Where the daemon also reads the host's nameservers (systemd-resolved's upstream list); this
# host's resolv.conf is left alone.
RESOLVED_CONF = Path("/run/systemd/resolve/resolv.conf")


def ipv6_nameserver(v6: bool) -> list[Path]:
    """Makes the daemon see the world's IPv6 DNS server as one of the host's nameservers, by
    writing RESOLVED_CONF (only where the host has none); returns what it made, to remove in
    this order (empty: not done)."""
    if not v6 or RESOLVED_CONF.exists():
        print("  (no IPv6, or a real systemd-resolved: IPv6 nameserver checks skipped)")
        return []
    made = [RESOLVED_CONF] + [d for d in (RESOLVED_CONF.parent, RESOLVED_CONF.parent.parent) if not d.exists()]
    RESOLVED_CONF.parent.mkdir(parents=True, exist_ok=True)
    RESOLVED_CONF.write_text(f"# coppice network_policy.py test\nnameserver {DNS_SERVER6}\n")
    return made


def run_v6(t: T, a: str, b: str) -> None:
    """IPv6: the same policy, enforced the same way, for the sandboxes' IPv6 addresses."""
    print("IPv6")
    a_info = json.loads(t.cli("sandbox", "info", a, "--json").stdout)
    b_ip6 = json.loads(t.cli("sandbox", "info", b, "--json").stdout).get("ip6")
    t.check("sandbox info reports an IPv6 address", bool(a_info.get("ip6")) and bool(b_ip6), str(a_info))
    t.reach(a, "2001:db8:10::10", 80, True, "v6 internet (default policy)")
    t.reach(a, "fd00:ec2::254", 80, False, "v6 cloud metadata")
    t.cli("exec", b, "--", "bash", "-c",
          "setsid python3 -c 'import socket;s=socket.socket(socket.AF_INET6);s.bind((\"::\",7001));s.listen();"
          "[c.sendall(b\"hi6\\n\") or c.close() for c,_ in iter(s.accept,None)]' >/dev/null 2>&1 &")
    time.sleep(0.5)
    t.reach(b, "::1", 7001, True, "sibling's own v6 server")
    t.reach(a, b_ip6 or "fd88::3", 7001, False, "sibling sandbox over v6")
    t.set(a, {"default": "deny", "allow": [{"cidr": "2001:db8:10::/48", "protocol": "tcp", "ports": [80]}]})
    t.reach(a, "2001:db8:10::10", 80, True, "v6 allowed CIDR and port")
    t.reach(a, "2001:db8:10::10", 8080, False, "v6 allowed CIDR, other port")
    t.reach(a, "2001:db8:20::20", 80, False, "v6 outside the allowed CIDR")
    t.reach(a, "198.51.100.10", 80, False, "v4 under a v6-only allow list")
    t.set(a, {"deny": [{"cidr": "2001:db8:20::20"}]})
    t.reach(a, "2001:db8:20::20", 80, False, "v6 denied address")
    t.reach(a, "2001:db8:10::10", 8080, True, "v6 default allow")
    t.set(a, {"allow": [{"cidr": "2001:db8:20::/48", "ports": [8080]}], "deny": [{"cidr": "::/0"}]})
    t.reach(a, "2001:db8:20::20", 8080, True, "v6 allow beats deny")
    t.reach(a, "2001:db8:20::20", 80, False, "deny ::/0")
    t.reach(a, "198.51.100.10", 80, True, "deny ::/0 leaves v4 alone")
    t.set(a, {"allow": [{"cidr": "::/0"}]})
    t.reach(a, "fd00:ec2::254", 80, False, "::/0 does not open v6 metadata")
    t.reach(a, b_ip6 or "fd88::3", 7001, False, "::/0 does not open a sibling")
    t.set(a, {"allow": [{"cidr": "fd00:ec2::254", "protocol": "tcp", "ports": [80]}]})
    t.reach(a, "fd00:ec2::254", 80, True, "v6 metadata allowed by name")
    t.reach(a, "fd00:ec2::254", 8080, False, "v6 metadata, other port")
    t.set(a, {"air_gapped": True, "allow": [{"cidr": "2001:db8::/32"}]})
    t.reach(a, "2001:db8:10::10", 80, False, "v6 air-gapped")
    t.set(a, {})


SERVE = ("setsid python3 -c 'import socket,sys;s=socket.socket();s.bind((\"0.0.0.0\",int(sys.argv[1])));s.listen();"
         "[c.sendall(b\"port %s\\n\" % sys.argv[1].encode()) or c.close() for c,_ in iter(s.accept,None)]' {} "
         ">/dev/null 2>&1 &")


def connect(host: str, port: int, netns: str | None = None) -> str:
    """What a client on the host (or in `netns`) gets from host:port: 'OK <line>' or why not."""
    code = ("import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3);"
            "s.settimeout(3);print('OK',s.recv(100).decode().strip())\nexcept OSError as e: print('ERR',e)")
    cmd = ["python3", "-c", code, host, str(port)]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_expose(t: T) -> str:
    """Exposed inbound ports; returns the sandbox, still exposing port 8000, for the restart."""
    print("exposed inbound ports")
    e = t.create({"expose": [{"port": 8000}]})
    t.cli("exec", e, "--", "bash", "-c", SERVE.format(8000) + SERVE.format(8001))
    time.sleep(0.5)
    info = json.loads(t.cli("sandbox", "info", e, "--json").stdout)
    got = json.loads(t.cli("network", "get", e, "--json").stdout)["policy"]
    host_port = (got.get("expose") or [{}])[0].get("host_port")
    t.check("get reports the chosen host port", isinstance(host_port, int), str(got))
    t.check("sandbox info reports it", info.get("exposed") == [
        {"port": 8000, "protocol": "tcp", "host": f"127.0.0.1:{host_port}"}], str(info.get("exposed")))
    r = connect("127.0.0.1", host_port)
    t.check("exposed port reachable from the host", r == "OK port 8000", r)
    r = connect(info["ip"], 8001, "cpw-world")
    t.check("unexposed port not reachable from outside", r.startswith("ERR"), r)
    r = connect(info["ip"], 8000, "cpw-world")
    t.check("the exposed port itself only through the daemon", r.startswith("ERR"), r)
    asked = free_port()
    res = t.set(e, {"expose": [{"port": 8000}, {"port": 8001, "host_port": asked}]})["policy"]["expose"]
    t.check("set keeps the chosen port and honours the asked one",
            res == [{"port": 8000, "protocol": "tcp", "host_port": host_port},
                    {"port": 8001, "protocol": "tcp", "host_port": asked}], str(res))
    r = connect("127.0.0.1", asked)
    t.check("port asked for reachable", r == "OK port 8001", r)
    r = t.cli("network", "set", e, json.dumps({"expose": [{"port": 8002, "host_port": host_port}]}), check=False)
    t.check("a host port in use is refused", r.returncode != 0 and "cannot expose" in r.stderr, r.stderr.strip())
    r = connect("127.0.0.1", asked)
    t.check("the refusal changed nothing", r == "OK port 8001", r)
    t.set(e, {"expose": [{"port": 8000}]})
    r = connect("127.0.0.1", asked)
    t.check("removal closes it", r.startswith("ERR") and "refused" in r, r)
    r = t.cli("network", "set", e, '{"expose":[{"port":8000,"protocol":"udp"}]}', check=False)
    t.check("udp refused", r.returncode != 0 and "only tcp" in r.stderr, r.stderr.strip())
    return e


def run(t: T, daemon: Daemon, v6: bool = False, ns6: bool = False) -> None:
    loop_srv, loop_port = host_server("127.0.0.1")
    any_srv, any_port = host_server("0.0.0.0")
    gateway = "10.88.0.1"

    print("default policy")
    a = t.create()
    b = t.create()
    got = json.loads(t.cli("network", "get", a, "--json").stdout)
    t.check("get returns the default policy", got == {"sandbox_id": a, "policy": {"default": "allow"}}, str(got))
    t.reach(a, "198.51.100.10", 80, True, "internet")
    t.reach(a, "203.0.113.20", 8080, True, "internet")
    t.reach(a, "169.254.169.254", 80, False, "cloud metadata")
    t.reach(a, gateway, any_port, False, "host service on the bridge address")
    t.reach(a, "192.0.2.2", any_port, False, "host service on the host's address")
    t.reach(a, "127.0.0.1", loop_port, False, "host loopback service (sandbox loopback is its own)")
    # A sibling's server, up and reachable from inside the sibling itself.
    t.cli("exec", b, "--", "bash", "-c",
          "setsid python3 -c 'import socket;s=socket.socket();s.bind((\"0.0.0.0\",7000));s.listen();"
          "[c.sendall(b\"hi\\n\") or c.close() for c,_ in iter(s.accept,None)]' >/dev/null 2>&1 &")
    time.sleep(0.5)
    t.reach(b, "127.0.0.1", 7000, True, "sibling's own server")
    b_ip = json.loads(t.cli("sandbox", "info", b, "--json").stdout)["ip"]
    t.reach(a, b_ip, 7000, False, "sibling sandbox")
    if v6:
        run_v6(t, a, b)
    else:
        print("  (this host has no IPv6: IPv6 checks skipped)")

    print("allow and deny by CIDR and port")
    t.set(a, {"default": "deny", "allow": [{"cidr": "198.51.100.0/24", "protocol": "tcp", "ports": [80]}]})
    t.reach(a, "198.51.100.10", 80, True, "allowed CIDR and port")
    t.reach(a, "198.51.100.20", 80, True, "allowed CIDR and port")
    t.reach(a, "198.51.100.10", 8080, False, "allowed CIDR, other port")
    t.reach(a, "203.0.113.20", 80, False, "outside the allowed CIDR")
    t.set(a, {"deny": [{"cidr": "198.51.100.20"}]})
    t.reach(a, "198.51.100.20", 80, False, "denied address")
    t.reach(a, "198.51.100.10", 8080, True, "default allow")
    t.set(a, {"allow": [{"cidr": "198.51.100.20", "ports": ["8000-8100"]}], "deny": [{"cidr": "0.0.0.0/0"}]})
    t.reach(a, "198.51.100.20", 8080, True, "allow beats deny")
    t.reach(a, "198.51.100.20", 80, False, "deny 0.0.0.0/0")
    t.reach(a, "198.51.100.10", 8080, False, "deny 0.0.0.0/0")

    print("protected destinations open only when named")
    t.set(a, {"allow": [{"cidr": "0.0.0.0/0"}]})
    t.reach(a, "169.254.169.254", 80, False, "0.0.0.0/0 does not open metadata")
    t.set(a, {"allow": [{"cidr": "169.254.169.254", "protocol": "tcp", "ports": [80]},
                        {"cidr": gateway, "protocol": "tcp", "ports": [any_port]}]})
    t.reach(a, "169.254.169.254", 80, True, "metadata allowed by name")
    t.reach(a, "169.254.169.254", 8080, False, "metadata, other port")
    t.reach(a, gateway, any_port, True, "host service allowed by name")

    print("air gap")
    t.set(a, {"air_gapped": True, "allow": [{"cidr": "198.51.100.0/24"}]})
    t.reach(a, "198.51.100.10", 80, False, "air-gapped")
    dns = t.cli("exec", a, "--", "python3", "-c",
                "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
                "s.connect(('198.51.100.10',53));s.send(b'x');\n"
                "try: s.recv(10); print('GOT')\nexcept OSError as e: print('ERR', e.errno)", check=False).stdout
    t.check("air-gapped: udp refused", dns.strip().startswith("ERR"), dns)

    print("live flip cuts a long-lived connection")
    t.set(a, {})
    proc = subprocess.Popen([str(t.coppice), "--socket", str(daemon.socket), "exec", a, "--",
                             "python3", "-u", "-c", STREAM, "198.51.100.10", "9000"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout
    lines = [proc.stdout.readline().strip() for _ in range(5)]
    t.check("stream flowing before the flip", all(x.startswith("TICK") for x in lines), str(lines))
    a_ip = json.loads(t.cli("sandbox", "info", a, "--json").stdout)["ip"]
    before = sh("conntrack", "-L", "-s", a_ip, "-d", "198.51.100.10", check=False)
    t0 = time.monotonic()
    t.set(a, {"deny": [{"cidr": "198.51.100.10"}]})
    applied = time.monotonic() - t0
    end = ""
    while True:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("END"):
            end = line.strip()
            break
    took = time.monotonic() - t0
    proc.wait(timeout=30)
    # The entry is deleted right after the update returns (off the caller's path).
    deadline = time.monotonic() + 1.0
    while True:
        after = sh("conntrack", "-L", "-s", a_ip, "-d", "198.51.100.10", check=False)
        if "dport=9000" not in after or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(f"       (set took {applied * 1000:.1f} ms; the stream ended {took * 1000:.0f} ms after the call: {end})")
    t.check("stream cut after the flip", end.startswith("END error") or end == "END eof", end)
    t.check("stream cut within a second", took < 1.0 + applied, f"{took:.2f}s")
    t.check("conntrack entry removed", "dport=9000" in before and "dport=9000" not in after,
            f"before={before.strip()[:200]} after={after.strip()[:200]}")
    t.reach(a, "198.51.100.10", 9000, False, "no new connection either")
    t.reach(a, "198.51.100.20", 80, True, "other destinations unaffected")

    print("bandwidth cap (within 10%)")
    cap_mbps = 40
    t.set(a, {"bandwidth_mbps": cap_mbps})
    for mode in ("down", "up"):
        out = t.cli("exec", a, "--", "python3", "-c", RATE, "198.51.100.10", mode, str(24 << 20), check=False)
        rate = float(out.stdout.strip() or "nan") * 8 / 1e6
        print(f"       ({mode}: {rate:.1f} Mbit/s with a {cap_mbps} Mbit/s cap)")
        t.check(f"{mode}load within 10% of the cap", abs(rate - cap_mbps) <= 0.1 * cap_mbps,
                f"{rate:.1f} Mbit/s {out.stderr.strip()[:200]}")
    t.set(a, {})
    out = t.cli("exec", a, "--", "python3", "-c", RATE, "198.51.100.10", "down", str(48 << 20), check=False)
    rate = float(out.stdout.strip() or "nan") * 8 / 1e6
    print(f"       (uncapped: {rate:.0f} Mbit/s)")
    t.check("cap removed", rate > 2 * cap_mbps, f"{rate:.1f} Mbit/s")

    print("policy at create time")
    c = t.create({"default": "deny", "allow": [{"cidr": "203.0.113.16/28", "protocol": "tcp"}],
                  "bandwidth_mbps": 8})
    t.reach(c, "203.0.113.20", 80, True, "allowed at create")
    t.reach(c, "198.51.100.10", 80, False, "denied at create")
    c_info = json.loads(t.cli("sandbox", "info", c, "--json").stdout)
    c_ip, c_ip6 = c_info["ip"], c_info.get("ip6")
    o = [int(x) for x in c_ip.split(".")]
    c_if = f"cps{o[2] * 256 + o[3] - 2}"
    qd = sh("tc", "qdisc", "show", "dev", c_if)
    t.check("cap set at create", "tbf" in qd and "8Mbit" in qd, qd.strip())

    print("bad input changes nothing")
    for bad in ['{"allow":[{"cidr":"10.0.0.0/33"}]}', '{"default":"maybe"}', '{"deny":[{"cidr":"example.com"}]}',
                '{"allow":[{"cidr":"1.2.3.4","ports":["9-1"]}]}', '{"nope":1}']:
        r = t.cli("network", "set", c, bad, check=False)
        t.check(f"refused {bad}", r.returncode != 0 and r.stderr.strip() != "", r.stderr.strip())
    r = t.cli("sandbox", "create", "--network-policy", '{"allow":[{"cidr":"bad"}]}', check=False)
    t.check("create refuses a bad policy", r.returncode != 0 and "not a CIDR" in r.stderr, r.stderr.strip())
    t.reach(c, "203.0.113.20", 80, True, "policy unchanged after refusals")

    e = run_expose(t)
    e_port = json.loads(t.cli("network", "get", e, "--json").stdout)["policy"]["expose"][0]["host_port"]

    print("policy kept across a daemon restart")
    t.set(a, {"deny": [{"cidr": "198.51.100.20"}]})
    want = json.loads(t.cli("network", "get", c, "--json").stdout)
    assert daemon.proc
    daemon.proc.terminate()
    daemon.proc.wait(timeout=30)
    # While the daemon is down the kernel keeps enforcing the policy.
    t.check("enforced while the daemon is down", "sbx" in sh("nft", "list", "map", "inet", "coppice", "sandbox_policy"))
    daemon.start()
    got = json.loads(t.cli("network", "get", c, "--json").stdout)
    t.check("policy read back after restart", got == want, f"{got} != {want}")
    t.reach(c, "203.0.113.20", 80, True, "after restart: allowed")
    t.reach(c, "198.51.100.10", 80, False, "after restart: denied")
    t.reach(a, "198.51.100.20", 80, False, "after restart: the other sandbox's deny")
    t.reach(a, "198.51.100.10", 80, True, "after restart: the other sandbox's default")
    qd = sh("tc", "qdisc", "show", "dev", c_if)
    t.check("cap kept across the restart", "tbf" in qd and "8Mbit" in qd, qd.strip())
    r = connect("127.0.0.1", e_port)
    t.check("exposed port listening again after the restart", r == "OK port 8000", r)
    t.cli("sandbox", "kill", e)
    r = connect("127.0.0.1", e_port)
    t.check("kill closes the exposed port", r.startswith("ERR"), r)

    domain_rules(t, a, v6, ns6)

    print("kill removes the policy")
    t.cli("sandbox", "kill", c)
    m = sh("nft", "list", "map", "inet", "coppice", "sandbox_policy")
    t.check("map entry gone with the sandbox", f"{c_ip} :" not in m, m)
    if v6:
        m6 = sh("nft", "list", "map", "inet", "coppice", "sandbox_policy6")
        t.check("IPv6 map entry gone with the sandbox", f"{c_ip6} :" not in m6 and "sbx" in m6, m6)
    loop_srv.close()
    any_srv.close()


def domain_rules(t: T, plain: str, v6: bool, ns6: bool) -> None:
    """Domains through Coppice's resolver and the SNI / Host check; `plain` has no domain rules.
    The name checks run for IPv4 (A records) and, with IPv6, for IPv6 (AAAA records); `ns6`:
    the daemon's nameservers include DNS_SERVER6, whose queries must reach the resolver too."""
    fams = ["4", "6"] if v6 else ["4"]
    # Per family: the index of the address in DOMAIN_NAMES, the admission set, a label.
    at, admit_set, tag = {"4": 0, "6": 2}, {"4": "domain_admit4", "6": "domain_admit6"}, {"4": "", "6": "v6 "}

    def run(sid: str, script: str, *argv: str) -> str:
        return t.cli("exec", sid, "--", "python3", "-c", script, *argv, check=False).stdout.strip()

    def addr(name: str, fam: str) -> str:
        return {**DOMAIN_NAMES, **REBIND_NAMES}[name][at[fam]]

    def admitted(fam: str) -> str:
        return sh("nft", "list", "set", "inet", "coppice", admit_set[fam])

    print("domain rules")
    t.set(plain, {})
    evil = addr("evil.test", "4")
    got = run(plain, RESOLVE, "evil.test")
    t.check("no domain rules: DNS forwarded as before", got == f"IP {evil}", got)
    got = run(plain, DNSQ, "10.255.255.53", "evil.test", "28")
    t.check("no domain rules: AAAA answered as upstream", got == "RCODE 0 ANSWERS 1", got)
    # The host's nameservers, both families, as the sandbox would ask them.
    nameservers = ["10.255.255.53"] + ([DNS_SERVER6] if ns6 else [])
    if ns6:
        got = run(plain, DNSQ, DNS_SERVER6, "evil.test")
        t.check("no domain rules: the IPv6 nameserver answers", got == "RCODE 0 ANSWERS 1", got)

    policy = {"default": "deny",
              "domains": ["api.allowed.test", "*.wild.test", "short.allowed.test", "inside.allowed.test"]}
    d = t.create(policy)
    d_info = json.loads(t.cli("sandbox", "info", d, "--json").stdout)
    me = {"4": d_info["ip"], "6": d_info.get("ip6")}
    got = json.loads(t.cli("network", "get", d, "--json").stdout)["policy"]
    t.check("domains stored and returned", got.get("domains") == policy["domains"], str(got))
    got = run(d, DNSQ, "10.255.255.53", "api.allowed.test", "28")
    want = "RCODE 0 ANSWERS 1" if v6 else "RCODE 0 ANSWERS 0"
    t.check("allowed name: AAAA answered (withheld only without IPv6)", got == want, got)
    for fam in fams:
        v = tag[fam]
        api, wild, evil = (addr(n, fam) for n in ("api.allowed.test", "x.wild.test", "evil.test"))
        got = run(d, RESOLVE, "api.allowed.test", fam)
        t.check(f"{v}allowed name resolves", got == f"IP {api}", got)
        elems = admitted(fam)
        t.check(f"{v}admitted before the answer", f"{me[fam]} . {api} timeout" in elems, elems.strip()[-300:])
        got = run(d, HTTP, api, "api.allowed.test")
        t.check(f"{v}allowed name: HTTP connects", got == f"OK hello {api}:80", got)
        got = run(d, TLS, api, "api.allowed.test")
        t.check(f"{v}allowed name: TLS connects", got == f"OK hello tls {api} api.allowed.test", got)
        # Only 80 and 443 carry a name to check: other ports of an admitted address need a CIDR rule.
        t.reach(d, api, 8080, False, f"{v}admitted address on a port without a name check")
        got = run(d, RESOLVE, "x.wild.test", fam)
        t.check(f"{v}wildcard name resolves", got == f"IP {wild}", got)
        got = run(d, TLS, wild, "x.wild.test")
        t.check(f"{v}wildcard name: TLS connects", got == f"OK hello tls {wild} x.wild.test", got)
        got = run(d, RESOLVE, "wild.test", fam)
        t.check(f"{v}a wildcard does not cover its base name", got.startswith("ERR"), got)
        got = run(d, RESOLVE, "evil.test", fam)
        t.check(f"{v}denied name does not resolve", got.startswith("ERR"), got)
        t.reach(d, evil, 80, False, f"{v}denied name's address by IP")
        got = run(d, TLS, evil, "evil.test")
        t.check(f"{v}denied name's address by IP (TLS)", got.startswith(("ERR", "TIMEOUT")), got)
        # The same address, another name: the proxy's SNI / Host check refuses it.
        got = run(d, TLS, api, "evil.test")
        t.check(f"{v}admitted address with another SNI refused", got.startswith("ERR"), got)
        got = run(d, TLS, api, "")
        t.check(f"{v}admitted address without SNI refused", got.startswith("ERR"), got)
        got = run(d, HTTP, api, "evil.test")
        t.check(f"{v}admitted address with another Host: 403", got.startswith("OK HTTP/1.1 403"), got)
        # DNS rebinding: an allowed name answering a protected address does not open it.
        inside = addr("inside.allowed.test", fam)
        got = run(d, RESOLVE, "inside.allowed.test", fam)
        t.check(f"{v}protected address in an answer passed on", got == f"IP {inside}", got)
        elems = admitted(fam)
        t.check(f"{v}protected address not admitted", f". {inside}" not in elems, elems.strip()[-300:])
        got = run(d, HTTP, inside, "inside.allowed.test")
        t.check(f"{v}protected address not reachable", got.startswith(("ERR", "TIMEOUT")), got)

    for ns in nameservers:
        # The world's server would answer it: REFUSED comes from Coppice's resolver.
        got = run(d, DNSQ, ns, "evil.test")
        t.check(f"denied name answered REFUSED (nameserver {ns})", got == "RCODE 5 ANSWERS 0", got)
    got = run(d, DNSQ, DNS_SERVER, "api.allowed.test")
    t.check("another DNS server is not reachable", got.startswith(("ERR", "TIMEOUT")), got)

    short = addr("short.allowed.test", "4")
    got = run(d, RESOLVE, "short.allowed.test")
    t.check("short-TTL name resolves", got == f"IP {short}", got)
    t0 = time.monotonic()
    elems = admitted("4")
    t.check("admitted with a timeout", f"{me['4']} . {short} timeout" in elems, elems.strip()[-300:])
    got = run(d, HTTP, short, "short.allowed.test")
    t.check("short-TTL name connects at once", got == f"OK hello {short}:80", got)
    time.sleep(max(0.0, 7.0 - (time.monotonic() - t0)))  # TTL 1 s, admitted for the 5 s minimum
    elems = admitted("4")
    t.check("admitted entry expired after its TTL", f"{me['4']} . {short}" not in elems, elems.strip()[-300:])
    got = run(d, HTTP, short, "short.allowed.test")
    t.check("expired address no longer reachable", got.startswith(("ERR", "TIMEOUT")), got)
    if ns6:
        # Through the IPv6 nameserver: the query reaches the resolver over IPv6, attributed to
        # the sandbox's IPv6 address, and both families' answers are admitted again.
        for qtype, fam in (("1", "4"), ("28", "6")):
            dst = addr("short.allowed.test", fam)
            got = run(d, DNSQ, DNS_SERVER6, "short.allowed.test", qtype)
            t.check(f"IPv6 nameserver: allowed name answered ({'AAAA' if fam == '6' else 'A'})",
                    got == "RCODE 0 ANSWERS 1", got)
            elems = admitted(fam)
            t.check(f"IPv6 nameserver: {dst} admitted", f"{me[fam]} . {dst} timeout" in elems, elems.strip()[-300:])
            got = run(d, HTTP, dst, "short.allowed.test")
            t.check(f"IPv6 nameserver: {dst} connects", got == f"OK hello {dst}:80", got)

    # A connection relayed by the name-checking proxy ends when its name is dropped (one per
    # family, at once), and the name's admissions go with it.
    procs = {}
    for fam in fams:
        procs[fam] = subprocess.Popen([str(t.coppice), "--socket", str(t.d.socket), "exec", d, "--", "python3",
                                       "-u", "-c", TLS_STREAM, addr("api.allowed.test", fam), "api.allowed.test"],
                                      stdout=subprocess.PIPE, text=True)
    for fam, proc in procs.items():
        assert proc.stdout
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        t.check(f"{tag[fam]}proxied stream flowing before the update",
                lines[0].startswith("HELLO hello tls") and all(x.startswith("TICK") for x in lines[1:]), str(lines))
    t0 = time.monotonic()
    t.set(d, {"default": "deny", "domains": ["*.wild.test"]})
    for fam, proc in procs.items():
        v = tag[fam]
        assert proc.stdout
        end = ""
        for line in proc.stdout:
            if line.startswith("END"):
                end = line.strip()
                break
        took = time.monotonic() - t0
        proc.wait(timeout=30)
        print(f"       ({v or 'v4 '}proxied stream ended {took * 1000:.0f} ms after the call: {end})")
        t.check(f"{v}proxied stream cut when its name is dropped", end.startswith(("END error", "END eof")), end)
        t.check(f"{v}proxied stream cut within a second", took < 1.0, f"{took:.2f}s")
    for fam in fams:
        v, api, wild = tag[fam], addr("api.allowed.test", fam), addr("x.wild.test", fam)
        got = run(d, RESOLVE, "api.allowed.test", fam)
        t.check(f"{v}live update: name no longer allowed", got.startswith("ERR"), got)
        elems = admitted(fam)
        t.check(f"{v}live update: its admission deleted", f"{me[fam]} . {api}" not in elems
                and f"{me[fam]} . {wild}" in elems, elems.strip()[-300:])
        got = run(d, HTTP, api, "api.allowed.test")
        t.check(f"{v}live update: its admitted address dropped", got.startswith(("ERR", "TIMEOUT")), got)
        got = run(d, TLS, wild, "x.wild.test")
        t.check(f"{v}live update: still-allowed name kept", got.startswith("OK hello tls"), got)

    e = t.create({"air_gapped": True, "domains": ["api.allowed.test"]})
    got = run(e, RESOLVE, "api.allowed.test")
    t.check("air-gapped: no DNS", got.startswith("ERR"), got)
    for ns in nameservers:
        got = run(e, DNSQ, ns, "api.allowed.test")
        t.check(f"air-gapped: resolver unreachable (nameserver {ns})", got.startswith(("ERR", "TIMEOUT")), got)

    r = t.cli("network", "set", d, '{"domains":["Bad.Example"]}', check=False)
    t.check("bad domain refused", r.returncode != 0 and "must be written 'bad.example'" in r.stderr, r.stderr.strip())
    t.cli("sandbox", "kill", d)
    t.cli("sandbox", "kill", e)
    for fam in fams:
        elems = admitted(fam)
        t.check(f"{tag[fam]}kill removes admitted entries", f"{me[fam]} ." not in elems, elems.strip()[-300:])

if __name__ == "__main__":
    sys.exit(main())
