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

Domain rules (``up_domains``): a DNS server on 198.51.100.251:53 (and 2001:db8:ffff::2:53
with IPv6) for the names in
DOMAIN_NAMES (A and AAAA records) and REBIND_NAMES, TLS servers on 443 of their addresses, and
host routes to 198.51.100.40/29 and 2001:db8:10::28/125 (the daemon's SNI / Host check proxy
connects there on the sandboxes' behalf).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

WORLD = "cpw-world"
HOST_IF, WORLD_IF = "cpwh0", "cpww0"
HOST_LINK, WORLD_LINK = "198.51.100.250", "198.51.100.251"
TABLE, PREF = "1088", "1088"
WORLD_ADDRS = ["198.51.100.10", "198.51.100.20", "203.0.113.20", "169.254.169.254"]
# Domain rules: the world's DNS server (on the link address, which the host reaches directly,
# as the daemon's resolver must) answers these names; TLS servers listen on 443 of each address.
# The host gets a route to DOMAIN_NET: the daemon's SNI / Host check proxy connects there
# for the sandboxes, like a host reaching the internet.
DNS_SERVER = WORLD_LINK
DOMAIN_NET = "198.51.100.40/29"
DOMAIN_NET6 = "2001:db8:10::28/125"
DOMAIN_NAMES = {  # name: (address, TTL, IPv6 address)
    "api.allowed.test": ("198.51.100.41", 300, "2001:db8:10::29"),
    "x.wild.test": ("198.51.100.42", 300, "2001:db8:10::2a"),
    "evil.test": ("198.51.100.43", 300, "2001:db8:10::2b"),
    "short.allowed.test": ("198.51.100.44", 1, "2001:db8:10::2c"),
}
# Names whose answers are protected addresses (the metadata ones, which the world serves on
# port 80): DNS rebinding, which must not open them.
REBIND_NAMES = {"inside.allowed.test": ("169.254.169.254", 300, "fd00:ec2::254")}
DOMAIN_ADDRS = sorted({a for a, _, _ in DOMAIN_NAMES.values()})
DOMAIN_ADDRS6 = sorted({a for _, _, a in DOMAIN_NAMES.values()})
ROUTED = ["198.51.100.0/24", "203.0.113.16/28", "169.254.169.254/32"]  # never .80 (the mirror)
# IPv6: the link is 2001:db8:ffff::/64 (host ::1, world ::2); servers on 2001:db8:10::10,
# 2001:db8:20::20 and the IPv6 metadata address fd00:ec2::254.
HOST_LINK6, WORLD_LINK6 = "2001:db8:ffff::1", "2001:db8:ffff::2"
WORLD_ADDRS6 = ["2001:db8:10::10", "2001:db8:20::20", "fd00:ec2::254"]
# The same DNS server over IPv6, for a host whose resolv.conf lists an IPv6 nameserver.
DNS_SERVER6 = WORLD_LINK6
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


# DNS (UDP and TCP, A and AAAA records; other names NXDOMAIN, other types an empty answer) and
# TLS servers ("hello tls <addr> <sni>" after the handshake, then a "tick" line every 100 ms
# for a client that sends "stream"). argv: cert key tls-addr,... dns-addr,... name=addr/ttl/addr6...
DOMAIN_SERVER = r"""
import socket, ssl, struct, sys, threading, time
cert, key, tls_addrs, dns_addrs = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
names = {}
for spec in sys.argv[5:]:
    n, rest = spec.split("=")
    a, ttl, a6 = rest.split("/")
    names[n] = (a, int(ttl), a6)
def answer(q):
    qid, flags, qd = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    name = ".".join(labels).lower()
    hit = names.get(name)
    rcode = 0 if hit else 3
    an = b""
    if hit and qtype == 1:
        a, ttl, _ = hit
        an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + socket.inet_aton(a)
    if hit and qtype == 28:
        _, ttl, a6 = hit
        an = b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, ttl, 16) + socket.inet_pton(socket.AF_INET6, a6)
    head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, 1 if an else 0, 0, 0)
    return head + question + an
def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET
def udp(addr):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        q, peer = s.recvfrom(4096)
        try: s.sendto(answer(q), peer)
        except Exception: pass
def tcp_conn(c):
    try:
        while True:
            h = c.recv(2)
            if len(h) < 2: break
            q = c.recv(struct.unpack(">H", h)[0])
            r = answer(q); c.sendall(struct.pack(">H", len(r)) + r)
    except OSError: pass
    c.close()
def tcp(addr):
    s = socket.socket(fam(addr)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 53)); s.listen(16)
    while True:
        c, _ = s.accept(); threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
def tls(addr):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    s = socket.socket(fam(addr))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 443)); s.listen(16)
    def one(c):
        seen = []
        ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx2.load_cert_chain(cert, key)
        ctx2.sni_callback = lambda sock, name, _c: seen.append(name)
        try:
            t = ctx2.wrap_socket(c, server_side=True)
            t.sendall(f"hello tls {addr} {seen[0] if seen else '-'}\n".encode())
            # A client that asks for it within 0.3 s gets a line every 100 ms until it goes.
            t.settimeout(0.3)
            try: wants = t.recv(16).startswith(b"stream")
            except Exception: wants = False
            t.settimeout(None)
            while wants:
                t.sendall(b"tick\n"); time.sleep(0.1)
            t.close()
        except Exception: c.close()
    while True:
        c, _ = s.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
for a in dns_addrs:
    threading.Thread(target=udp, args=(a,), daemon=True).start()
    threading.Thread(target=tcp, args=(a,), daemon=True).start()
for a in tls_addrs:
    threading.Thread(target=tls, args=(a,), daemon=True).start()
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
        self.dproc: subprocess.Popen | None = None
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
        for a in WORLD_ADDRS + DOMAIN_ADDRS:
            sh(*w, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        sh(*w, "ip", "route", "add", "default", "via", HOST_LINK)
        for net in ROUTED:
            sh("ip", "route", "add", net, "via", WORLD_LINK, "dev", HOST_IF, "table", TABLE)
        sh("ip", "rule", "add", "iif", "coppice0", "lookup", TABLE, "pref", PREF)
        self.v6 = self._up_v6(w)
        addrs = WORLD_ADDRS + DOMAIN_ADDRS + (WORLD_ADDRS6 + DOMAIN_ADDRS6 if self.v6 else [])
        self.proc = subprocess.Popen(w + ["python3", "-c", WORLD_SERVER, *addrs],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def up_domains(self, tmp: Path) -> None:
        """Adds the DNS server, the TLS servers (self-signed certificate made here with
        openssl) and the host's route to the domain addresses. After up()."""
        w = ["ip", "netns", "exec", WORLD]
        sh("ip", "route", "add", DOMAIN_NET, "via", WORLD_LINK, "dev", HOST_IF)
        if self.v6:
            sh("ip", "-6", "route", "add", DOMAIN_NET6, "via", WORLD_LINK6, "dev", HOST_IF)
        cert, key = tmp / "world-cert.pem", tmp / "world-key.pem"
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=world.test",
           "-keyout", str(key), "-out", str(cert), "-addext",
           "subjectAltName=" + ",".join(f"DNS:{n}" for n in DOMAIN_NAMES))
        specs = [f"{n}={a}/{ttl}/{a6}" for n, (a, ttl, a6) in {**DOMAIN_NAMES, **REBIND_NAMES}.items()]
        tls = ",".join(DOMAIN_ADDRS + (DOMAIN_ADDRS6 if self.v6 else []))
        dns = ",".join([DNS_SERVER] + ([DNS_SERVER6] if self.v6 else []))
        self.dproc = subprocess.Popen(w + ["python3", "-c", DOMAIN_SERVER, str(cert), str(key), tls, dns, *specs],
                                      stdout=subprocess.PIPE, text=True)
        assert self.dproc.stdout and self.dproc.stdout.readline().strip() == "ready"

    def _up_v6(self, w: list[str]) -> bool:
        """The world's IPv6 half; False (IPv4 only) on a host without IPv6."""
        if not Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").exists():
            return False
        sh("ip", "addr", "add", f"{HOST_LINK6}/64", "dev", HOST_IF, "nodad")
        sh(*w, "ip", "addr", "add", f"{WORLD_LINK6}/64", "dev", WORLD_IF, "nodad")
        for a in WORLD_ADDRS6 + DOMAIN_ADDRS6:
            sh(*w, "ip", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        sh(*w, "ip", "-6", "route", "add", "default", "via", HOST_LINK6)
        for net in ROUTED6:
            sh("ip", "-6", "route", "add", net, "via", WORLD_LINK6, "dev", HOST_IF, "table", TABLE)
        sh("ip", "-6", "rule", "add", "iif", "coppice0", "lookup", TABLE, "pref", PREF)
        return True

    def down(self) -> None:
        for p in (self.proc, self.dproc):
            if p:
                p.kill()
                p.wait()
        self.proc = self.dproc = None
        sh("ip", "rule", "del", "pref", PREF, check=False)
        sh("ip", "-6", "rule", "del", "pref", PREF, check=False)
        sh("ip", "-6", "route", "flush", "table", TABLE, check=False)
        sh("ip", "route", "flush", "table", TABLE, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", WORLD, check=False)
