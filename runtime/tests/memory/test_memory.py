"""Memory snapshots and memory forks against a real daemon, real CRIU and real kernels.

A sandbox with a code-kernel variable, a background counter and a listening HTTP server is
memory-snapshotted; ten forks each resume all three (the kernel's variable, the counter going
on from where it was, the server answering at the fork's own address) with identities of
their own; a write in one fork is seen by nobody else. A restore in place resumes the
snapshot's processes in the same sandbox. A process CRIU cannot dump fails the
snapshot with CRIU's own reason and leaves the sandbox running. Without CRIU (the daemon
pointed at a missing one) a memory snapshot is refused with the reason.

Pause (docs/decisions/0013-durable-pause.md): a memory pause resumes from memory at once; left
paused past `pause_in_memory_secs` its processes leave memory and a resume restores them from
the checkpoint; a memory pause survives `kill -9` of the daemon together with the loss of its
processes (as in a host reboot); a filesystem pause stops the processes and a resume boots
afresh on the kept files. A template warmed by the config (`[warm]`) starts every sandbox
from a checkpoint whose kernel already ran the warm code; each fork has its own uid range.

Needs root and CRIU (scripts/install-criu.sh, run by setup.sh). `COPPICE_BIN` picks the binary.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "rigs"))
from common import (  # noqa: E402
    Daemon, any_procs, auth, kill_sandboxes, refuse_if_other_daemon, sandbox_cgroup_dirs,
)

BINARY = Path(os.environ.get("COPPICE_BIN", REPO / "target/release/coppice"))


@contextlib.contextmanager
def daemon_with(name: str, config_text: str):
    """A private daemon with this config (temp state dir), stopped and cleaned up after."""
    refuse_if_other_daemon(wait_s=float(os.environ.get("COPPICE_WAIT_OTHER", "300")))
    tmp = Path(tempfile.mkdtemp(prefix=f"coppice-memory-{name}-"))
    config = tmp / "coppice.toml"
    config.write_text(config_text)
    d = Daemon(BINARY, tmp / "state", pool_size=0, no_network=False, log_path=tmp / "daemon.log",
               config=config).start()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()


@contextlib.contextmanager
def other_daemon(module_daemon: Daemon, name: str, config_text: str):
    """A daemon of its own config in place of the module's (one daemon per host): the
    module's stops first and starts again after."""
    module_daemon.stop()
    try:
        with daemon_with(name, config_text) as d:
            yield d
    finally:
        module_daemon.start()


class Client:
    def __init__(self, d: Daemon):
        self.port = d.port

    def call(self, method: str, path: str, body=None, expect: int | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json", **auth(self.port)})
        r = c.getresponse()
        data = r.read()
        c.close()
        if expect is not None:
            assert r.status == expect, f"{method} {path}: HTTP {r.status} {data[:600]!r}"
        return r.status, json.loads(data) if data else None

    def create(self) -> dict:
        return self.call("POST", "/api/v1/sandboxes", {"timeout_secs": 900}, expect=201)[1]

    def sh(self, sid: str, script: str) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request("POST", f"/api/v1/sandboxes/{sid}/exec", body=json.dumps({"cmd": ["bash", "-c", script]}),
                  headers={"Content-Type": "application/json", **auth(self.port)})
        r = c.getresponse()
        assert r.status == 200, r.read()
        out, code = b"", None
        for line in r:
            ev = json.loads(line)
            if ev["type"] == "stdout":
                out += base64.b64decode(ev["data"])
            elif ev["type"] == "exit":
                code = ev["exit_code"]
        c.close()
        assert code == 0, f"{script!r} exited {code}: {out!r}"
        return out.decode()

    def run_code(self, sid: str, code: str) -> str:
        """The main result's text (or stdout) of `code` in the sandbox's default kernel."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request("POST", f"/api/v1/sandboxes/{sid}/envd/execute", body=json.dumps({"code": code}),
                  headers={"Content-Type": "application/json", **auth(self.port)})
        r = c.getresponse()
        data = r.read()
        c.close()
        assert r.status == 200, data[:400]
        lines = [json.loads(x) for x in data.splitlines()]
        errors = [x for x in lines if x.get("type") == "error"]
        assert not errors, errors
        main = [x["text"] for x in lines if x.get("type") == "result" and x.get("is_main_result")]
        out = "".join(x.get("text", "") for x in lines if x.get("type") == "stdout")
        return main[0] if main else out

    def memory_snapshot(self, sid: str, expect: int = 201):
        return self.call("POST", f"/api/v1/sandboxes/{sid}/snapshots", {"kind": "memory"}, expect=expect)[1]

    def fork(self, snap: str, count: int) -> dict:
        return self.call("POST", f"/api/v1/snapshots/{snap}/fork", {"count": count}, expect=200)[1]


def host_uid(pid: int) -> int:
    """The host uid of a sandbox's agent (its uid range's first id)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


@pytest.fixture(scope="module")
def daemon():
    # A memory pause leaves memory after 2 s here (600 by default), so the test sees it.
    with daemon_with("module", "pause_in_memory_secs = 2\n") as d:
        yield d


def test_forks_resume_kernel_processes_and_listeners(daemon):
    api = Client(daemon)
    parent = api.create()
    sid = parent["id"]
    assert api.run_code(sid, "x = 41\nx") == "41"
    api.sh(sid, "mkdir -p /tmp/www && echo served-by-parent > /tmp/www/marker && "
                "cd /tmp/www && (nohup python3 -m http.server 8000 >/dev/null 2>&1 &) && "
                "(nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' "
                ">/dev/null 2>&1 &)")
    # The server listens before the snapshot is taken.
    for _ in range(100):
        if "8000" in api.sh(sid, "cat /proc/net/tcp /proc/net/tcp6 | awk '$4==\"0A\"{print $2}' | "
                                 "sed 's/.*://' | while read p; do echo $((16#$p)); done"):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    snap = api.memory_snapshot(sid)
    assert snap["kind"] == "memory", snap
    assert int(snap["metadata"]["coppice.memory_bytes"]) > 1 << 20, snap
    assert snap["size_bytes"] >= int(snap["metadata"]["coppice.memory_bytes"]), snap
    count_at_snapshot = int(api.sh(sid, "cat /tmp/count"))
    listed = api.call("GET", f"/api/v1/snapshots/{snap['snapshot_id']}", expect=200)[1]
    assert listed["kind"] == "memory"

    res = api.fork(snap["snapshot_id"], 10)
    assert res["created"] == 10 and res["failed"] == 0, res
    forks = [f["sandbox"] for f in res["forks"]]
    assert len({f["id"] for f in forks}) == 10
    assert len({f["ip"] for f in forks} | {parent["ip"]}) == 11, "forks share an address"
    assert len({f["hostname"] for f in forks} | {parent["hostname"]}) == 11

    # Each fork in a host uid range of its own.
    assert len({host_uid(f["pid"]) for f in forks} | {host_uid(parent["pid"])}) == 11
    for f in forks:
        # The kernel's variable, intact.
        assert api.run_code(f["id"], "x + 1") == "42", f
        # Its own identity, seen from inside.
        assert api.sh(f["id"], "hostname").strip() == f["hostname"]
        assert f["ip"] in api.sh(f["id"], "hostname -I")
    # The counter resumed where it was (not from 1) and goes on.
    a = int(api.sh(forks[0]["id"], "cat /tmp/count"))
    time.sleep(0.5)
    b = int(api.sh(forks[0]["id"], "cat /tmp/count"))
    assert b > a, (a, b)
    assert a >= count_at_snapshot - 20, (a, count_at_snapshot)
    # The listener listens again, at the fork's own address.
    with urllib.request.urlopen(f"http://{forks[3]['ip']}:8000/marker", timeout=10) as r:
        assert r.read() == b"served-by-parent\n"

    # A write in one fork is nobody else's.
    assert api.run_code(forks[0]["id"], "x = 100\nx") == "100"
    api.sh(forks[0]["id"], "echo mine > /tmp/www/marker; echo mine > /home/user/f0")
    assert api.run_code(forks[1]["id"], "x") == "41"
    assert api.run_code(sid, "x") == "41"
    assert api.sh(forks[1]["id"], "cat /tmp/www/marker") == "served-by-parent\n"
    assert api.sh(sid, "cat /tmp/www/marker; ls /home/user/f0 2>&1 || true").startswith("served-by-parent\n")

    # A fork's agent has no token of its parent's: the host's calls go through unasked.
    for f in forks:
        api.call("DELETE", f"/api/v1/sandboxes/{f['id']}", expect=204)
    # Deleting the snapshot removes its images.
    api.call("DELETE", f"/api/v1/snapshots/{snap['snapshot_id']}", expect=204)
    images = daemon.state_dir / "memory" / snap["snapshot_id"]
    for _ in range(50):
        if not images.exists():
            break
        time.sleep(0.1)
    assert not images.exists(), f"{images} left behind"
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


def test_restore_in_place_resumes_the_snapshots_processes(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "v = 1\nv") == "1"
    snap = api.memory_snapshot(sid)
    assert api.run_code(sid, "v = 2\nv") == "2"
    api.sh(sid, "echo later > /home/user/later")
    back = api.call("POST", f"/api/v1/sandboxes/{sid}/restore", {"snapshot_id": snap["snapshot_id"]},
                    expect=200)[1]
    assert sid in (back.get("id"), back.get("sandbox_id")), back
    # Same sandbox, the kernel as it was at the snapshot, the files too.
    assert api.run_code(sid, "v") == "1"
    assert api.sh(sid, "ls /home/user/later 2>&1 || true").startswith("ls:")
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)
    api.call("DELETE", f"/api/v1/snapshots/{snap['snapshot_id']}", expect=204)


def test_a_memory_fork_is_memory_snapshotted_and_forked_in_turn(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "g = 1\ng") == "1"
    first = api.fork(api.memory_snapshot(sid)["snapshot_id"], 1)["forks"][0]["sandbox"]
    assert api.run_code(first["id"], "g = g + 1\ng") == "2"
    # The fork's processes were restored by CRIU (their memory maps belong to it): they are
    # dumped again all the same, and their fork resumes them.
    second = api.fork(api.memory_snapshot(first["id"])["snapshot_id"], 1)["forks"][0]["sandbox"]
    assert api.run_code(second["id"], "g + 1") == "3"
    for s in (second["id"], first["id"], sid):
        api.call("DELETE", f"/api/v1/sandboxes/{s}", expect=204)


def test_a_tree_criu_cannot_dump_fails_with_its_reason_and_keeps_running(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    # A deleted file still open, larger than the ghost limit: CRIU refuses to dump it.
    api.sh(sid, "(nohup python3 -c \"import os,time\nf=open('/home/user/big','wb'); "
                "f.write(b'x'*(100<<20)); f.flush(); os.unlink('/home/user/big'); "
                "open('/tmp/ready','w').close(); time.sleep(3600)\" >/dev/null 2>&1 &); "
                "while [ ! -e /tmp/ready ]; do sleep 0.05; done")
    status, body = api.call("POST", f"/api/v1/sandboxes/{sid}/snapshots", {"kind": "memory"})
    assert status == 400 and "ghost file" in body["message"], body
    assert api.call("GET", f"/api/v1/snapshots?sandbox_id={sid}", expect=200)[1] == []
    assert list((daemon.state_dir / "memory").glob("*")) == [] or all(
        p.name != sid for p in (daemon.state_dir / "memory").glob("*"))
    # Untouched: running, not frozen.
    assert api.sh(sid, "echo alive") == "alive\n"
    assert api.call("GET", f"/api/v1/sandboxes/{sid}", expect=200)[1]["state"] == "running"
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


# ---------------------------------------------------------------- pause (decision 0013)


def pause(api: Client, sid: str, kind: str | None = None) -> dict:
    body = {} if kind is None else {"kind": kind}
    return api.call("POST", f"/api/v1/sandboxes/{sid}/pause", body, expect=200)[1]


def resume(api: Client, sid: str) -> dict:
    return api.call("POST", f"/api/v1/sandboxes/{sid}/resume", {"timeout_secs": 900}, expect=200)[1]


def events(api: Client, sid: str) -> list[tuple[str, str]]:
    evs = api.call("GET", f"/api/v1/sandboxes/{sid}/events", expect=200)[1]
    return [(e["kind"], e["detail"]) for e in evs]


def start_counter(api: Client, sid: str) -> int:
    api.sh(sid, "(nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' "
                ">/dev/null 2>&1 &); while [ ! -s /tmp/count ]; do sleep 0.05; done; sleep 0.5")
    return int(api.sh(sid, "cat /tmp/count"))


def thaw_and_kill(sid: str) -> None:
    """What a host reboot does to a frozen sandbox: its processes are gone."""
    for d in sandbox_cgroup_dirs(sid):
        for f, v in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            if (d / f).exists():
                (d / f).write_text(v)
    kill_sandboxes([sid])


def test_a_memory_pause_resumes_from_memory_at_once(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "z = 5\nz") == "5"
    before = start_counter(api, sid)
    pid = api.call("GET", f"/api/v1/sandboxes/{sid}", expect=200)[1]["pid"]
    assert pause(api, sid)["state"] == "paused"
    assert api.call("POST", f"/api/v1/sandboxes/{sid}/pause", {})[0] == 409
    kind, detail = events(api, sid)[-1]
    assert kind == "paused" and detail.startswith("memory, checkpoint "), detail
    back = resume(api, sid)
    assert back["resumed"] == "thawed" and back["state"] == "running", back
    assert back["pid"] == pid, "the same processes, thawed"
    assert api.run_code(sid, "z") == "5"
    assert int(api.sh(sid, "cat /tmp/count")) >= before
    # The checkpoint a thaw made useless is removed.
    snap = detail.removeprefix("memory, checkpoint ")
    for _ in range(100):
        if api.call("GET", f"/api/v1/snapshots/{snap}")[0] == 404:
            break
        time.sleep(0.1)
    assert api.call("GET", f"/api/v1/snapshots/{snap}")[0] == 404
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


def test_a_durable_pause_survives_a_daemon_kill_and_the_loss_of_its_processes(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "y = 7\ny") == "7"
    api.sh(sid, "echo kept > /home/user/kept; mkdir -p /tmp/www && echo served > /tmp/www/m && "
                "cd /tmp/www && (nohup python3 -m http.server 8000 >/dev/null 2>&1 &)")
    boot_id = api.sh(sid, "cat /proc/sys/kernel/random/boot_id")
    before = start_counter(api, sid)
    ip = api.call("GET", f"/api/v1/sandboxes/{sid}", expect=200)[1]["ip"]
    with urllib.request.urlopen(f"http://{ip}:8000/m", timeout=10) as r:
        assert r.read() == b"served\n"
    pause(api, sid)
    # The daemon dies hard, and so do the sandbox's processes (as in a host reboot).
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.proc = None
    thaw_and_kill(sid)
    daemon.start()
    api = Client(daemon)
    info = api.call("GET", f"/api/v1/sandboxes/{sid}", expect=200)[1]
    assert info["state"] == "paused", info
    back = resume(api, sid)
    assert back["resumed"] == "restored" and back["state"] == "running", back
    # Its processes came back from the checkpoint: the kernel's variable, the counter going
    # on from where it was, the files, the same boot.
    assert api.run_code(sid, "y + 1") == "8"
    a = int(api.sh(sid, "cat /tmp/count"))
    assert before <= a <= before + 30, (before, a)
    time.sleep(0.5)
    assert int(api.sh(sid, "cat /tmp/count")) > a
    assert api.sh(sid, "cat /home/user/kept") == "kept\n"
    assert api.sh(sid, "cat /proc/sys/kernel/random/boot_id") == boot_id
    # Its server listens again and answers at its address.
    with urllib.request.urlopen(f"http://{ip}:8000/m", timeout=10) as r:
        assert r.read() == b"served\n"
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


def test_a_long_memory_pause_leaves_memory_and_resumes_from_disk(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "w = 3\nw") == "3"
    pause(api, sid)
    # The module's daemon keeps a pause in memory for 2 s (pause_in_memory_secs).
    for _ in range(150):
        if events(api, sid)[-1][0] == "paused-to-disk":
            break
        time.sleep(0.1)
    assert events(api, sid)[-1][0] == "paused-to-disk", events(api, sid)
    assert not any_procs(sid), "still in memory"
    assert api.call("GET", f"/api/v1/sandboxes/{sid}", expect=200)[1]["state"] == "paused"
    back = resume(api, sid)
    assert back["resumed"] == "restored", back
    assert api.run_code(sid, "w * 2") == "6"
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


def test_a_filesystem_pause_stops_processes_and_boots_afresh_on_the_files(daemon):
    api = Client(daemon)
    sid = api.create()["id"]
    assert api.run_code(sid, "v = 9\nv") == "9"
    api.sh(sid, "echo kept > /home/user/kept")
    boot_id = api.sh(sid, "cat /proc/sys/kernel/random/boot_id")
    pause(api, sid, "filesystem")
    assert not any_procs(sid), "a filesystem pause keeps no processes"
    back = resume(api, sid)
    assert back["resumed"] == "restored" and back["id"] == sid, back
    assert api.sh(sid, "cat /home/user/kept") == "kept\n"
    assert api.sh(sid, "cat /proc/sys/kernel/random/boot_id") != boot_id, "a fresh boot"
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=120)
    c.request("POST", f"/api/v1/sandboxes/{sid}/envd/execute", body=json.dumps({"code": "v"}),
              headers={"Content-Type": "application/json", **auth(api.port)})
    out = c.getresponse().read().decode()
    assert "NameError" in out, out
    api.call("DELETE", f"/api/v1/sandboxes/{sid}", expect=204)


def test_a_warm_template_starts_with_its_kernel_prepared(daemon):
    with other_daemon(daemon, "warm", '[warm]\ndefault = "import json\\nwarm_marker = 6 * 7"\n') as d:
        api = Client(d)
        # The daemon makes the checkpoint in the background once it is up.
        deadline = time.monotonic() + 120
        while not [s for s in api.call("GET", "/api/v1/snapshots", expect=200)[1]
                   if s["metadata"].get("coppice.implicit") == "warm"]:
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.3)
        warm = [s for s in api.call("GET", "/api/v1/snapshots", expect=200)[1]
                if s["metadata"].get("coppice.implicit") == "warm"][0]
        a, b = api.create(), api.create()
        # The kernel ran the warm code before either was asked anything.
        for sbx in (a, b):
            assert api.run_code(sbx["id"], "warm_marker") == "42"
        assert api.run_code(a["id"], "warm_marker = 0\nwarm_marker") == "0"
        assert api.run_code(b["id"], "warm_marker") == "42"
        # Each is a sandbox of its own: address, hostname, uid range, boot.
        assert a["ip"] != b["ip"] and a["hostname"] != b["hostname"]
        assert api.sh(a["id"], "hostname").strip() == a["hostname"]
        assert host_uid(a["pid"]) != host_uid(b["pid"])
        boot = "cat /proc/sys/kernel/random/boot_id"
        assert api.sh(a["id"], boot) != api.sh(b["id"], boot)
        lineage = api.call("GET", f"/api/v1/lineage/{a['id']}", expect=200)[1]
        assert lineage["node"]["parent"] == warm["snapshot_id"], lineage
        # The checkpoint cannot be deleted while sandboxes stand on it.
        status, _ = api.call("DELETE", f"/api/v1/snapshots/{warm['snapshot_id']}")
        assert status == 400, "deleted while sandboxes stand on it"


def test_without_criu_a_memory_snapshot_is_refused_with_the_reason(daemon):
    with other_daemon(daemon, "nocriu", '[linux]\ncriu = "/nonexistent/criu"\n') as d:
        api = Client(d)
        sid = api.create()["id"]
        status, body = api.call("POST", f"/api/v1/sandboxes/{sid}/snapshots", {"kind": "memory"})
        assert status == 400, body
        assert "memory snapshots are unavailable" in body["message"], body
        assert "CRIU is not installed at /nonexistent/criu" in body["message"], body
        assert api.call("GET", f"/api/v1/snapshots?sandbox_id={sid}", expect=200)[1] == []
        # Files-only snapshots still work.
        api.call("POST", f"/api/v1/sandboxes/{sid}/snapshots", {}, expect=201)

