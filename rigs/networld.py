"""A test "world" of network namespaces for network policy tests and rigs (stdlib only).

netns ``cpw-world`` is joined to the host by a veth (host 198.51.100.250/31, world .251).
Servers listen there on documentation addresses (198.51.100.10, .20, 203.0.113.20) and on the
cloud metadata address 169.254.169.254. Only the sandboxes' egress is routed into the world,
by a policy-routing rule ``iif coppice0 lookup 1088``: the host's own traffic is unaffected
(it has no route to those addresses except the /31 of the link), and 203.0.113.80 (this
host's Debian mirror) is not part of the world. Nothing leaves the machine.

IPv6 (when the host has it): 2001:db8:10::10, 2001:db8:20::20 and fd00:ec2::254, routed the same
way by `ip -6 rule iif coppice0 lookup 1088`.

Servers: "hello <addr>:<port>" on 80 and 8080 of every address; 198.51.100.10:9000 streams a
line every 100 ms for as long as the connection lives; 198.51.100.10:5001 sends zeros until
the client closes, and :5002 reads until EOF then answers "done <bytes>" (throughput).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

WORLD = "cpw-world"
HOST_IF, WORLD_IF = "cpwh0", "cpww0"
HOST_LINK, WORLD_LINK = "198.51.100.250", "198.51.100.251"
TABLE, PREF = "1088", "1088"
WORLD_ADDRS = ["198.51.100.10", "198.51.100.20", "203.0.113.20", "169.254.169.254"]
ROUTED = ["198.51.100.0/24", "203.0.113.16/28", "169.254.169.254/32"]  # never .80 (the mirror)
# IPv6: the link is 2001:db8:ffff::/64 (host ::1, world ::2); servers on 2001:db8:10::10,
# 2001:db8:20::20 and the IPv6 metadata address fd00:ec2::254.
HOST_LINK6, WORLD_LINK6 = "2001:db8:ffff::1", "2001:db8:ffff::2"
WORLD_ADDRS6 = ["2001:db8:10::10", "2001:db8:20::20", "fd00:ec2::254"]
ROUTED6 = ["2001:db8:10::/48", "2001:db8:20::/48", "fd00:ec2::254/128"]

WORLD_SERVER = r"""
import socket, sys, threading, time
def listener(addr, port):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    return s
def hello(addr, port):
    s = listener(addr, port)
    while True:
        c, _ = s.accept()
        try: c.sendall(f"hello {addr}:{port}\n".encode())
        except OSError: pass
        c.close()
def per_conn(addr, port, serve):
    s = listener(addr, port)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
def ticks(c):
    try:
        while True:
            c.sendall(b"tick\n"); time.sleep(0.1)
    except OSError: pass
def zeros(c):
    buf = bytes(1 << 16)
    try:
        while True: c.sendall(buf)
    except OSError: pass
    c.close()
for a in sys.argv[1:]:
    for p in (80, 8080):
        threading.Thread(target=hello, args=(a, p), daemon=True).start()
threading.Thread(target=per_conn, args=("198.51.100.10", 9000, ticks), daemon=True).start()
threading.Thread(target=per_conn, args=("198.51.100.10", 5001, zeros), daemon=True).start()
def sink(c):
    n = 0
    try:
        while True:
            d = c.recv(1 << 16)
            if not d: break
            n += len(d)
        c.sendall(f"done {n}\n".encode())
    except OSError: pass
    c.close()
threading.Thread(target=per_conn, args=("198.51.100.10", 5002, sink), daemon=True).start()
time.sleep(0.3)
print("ready", flush=True)
threading.Event().wait()
"""


def sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.returncode}: {r.stderr.strip()}")
    return r.stdout


class World:
    """Call up() before the daemon creates sandboxes (or any time), down() at the end."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.v6 = False

    def up(self) -> None:
        self.down()
        sh("ip", "netns", "add", WORLD)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", WORLD_IF)
        sh("ip", "link", "set", WORLD_IF, "netns", WORLD)
        sh("ip", "addr", "add", f"{HOST_LINK}/31", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        w = ["ip", "netns", "exec", WORLD]
        sh(*w, "ip", "addr", "add", f"{WORLD_LINK}/31", "dev", WORLD_IF)
        sh(*w, "ip", "link", "set", WORLD_IF, "up")
        sh(*w, "ip", "link", "set", "lo", "up")
        for a in WORLD_ADDRS:
            sh(*w, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        sh(*w, "ip", "route", "add", "default", "via", HOST_LINK)
        for net in ROUTED:
            sh("ip", "route", "add", net, "via", WORLD_LINK, "dev", HOST_IF, "table", TABLE)
        sh("ip", "rule", "add", "iif", "coppice0", "lookup", TABLE, "pref", PREF)
        self.v6 = self._up_v6(w)
        addrs = WORLD_ADDRS + (WORLD_ADDRS6 if self.v6 else [])
        self.proc = subprocess.Popen(w + ["python3", "-c", WORLD_SERVER, *addrs],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def _up_v6(self, w: list[str]) -> bool:
        """The world's IPv6 half; False (IPv4 only) on a host without IPv6."""
        if not Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").exists():
            return False
        sh("ip", "addr", "add", f"{HOST_LINK6}/64", "dev", HOST_IF, "nodad")
        sh(*w, "ip", "addr", "add", f"{WORLD_LINK6}/64", "dev", WORLD_IF, "nodad")
        for a in WORLD_ADDRS6:
            sh(*w, "ip", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        sh(*w, "ip", "-6", "route", "add", "default", "via", HOST_LINK6)
        for net in ROUTED6:
            sh("ip", "-6", "route", "add", net, "via", WORLD_LINK6, "dev", HOST_IF, "table", TABLE)
        sh("ip", "-6", "rule", "add", "iif", "coppice0", "lookup", TABLE, "pref", PREF)
        return True

    def down(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        sh("ip", "rule", "del", "pref", PREF, check=False)
        sh("ip", "-6", "rule", "del", "pref", PREF, check=False)
        sh("ip", "-6", "route", "flush", "table", TABLE, check=False)
        sh("ip", "route", "flush", "table", TABLE, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", WORLD, check=False)
