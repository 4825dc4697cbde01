"""The unmodified E2B Python SDK (PyPI `e2b`, pinned in scripts/setup.sh), sync and async,
against a real Coppice daemon: the only change an E2B user makes is `E2B_API_URL`,
`E2B_SANDBOX_URL` and the API key (see conftest.py).

Run (root, under the host lock):
    flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_e2b_sdk.py
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from common import auth  # noqa: E402  (conftest puts rigs/ on the path)
import pytest
from e2b.exceptions import SandboxNotRunningException
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileType,
    FileNotFoundException,
    InvalidArgumentException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)

from conftest import API_KEY

JS_TEST = Path(__file__).resolve().parent / "js_sdk.cjs"
E2B_CLIENTS = Path(os.environ.get("COPPICE_E2B_CLIENTS", "/opt/coppice-e2b-clients"))


@pytest.fixture
def sbx(daemon):
    s = Sandbox.create(timeout=120)
    yield s
    s.kill()


# ---------------------------------------------------------------- lifecycle


def test_create_get_info_and_kill(daemon):
    s = Sandbox.create("base", timeout=60, metadata={"suite": "e2b"}, envs={"E": "1"})
    info = s.get_info()
    assert info.sandbox_id == s.sandbox_id
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"suite": "e2b"}
    assert info.envd_version == "0.6.4"
    assert info.end_at > info.started_at
    assert s.is_running()
    assert s.kill() is True
    assert s.kill() is False, "a second kill finds nothing"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(s.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(s.sandbox_id)
    assert not s.is_running()


def test_code_interpreter_template_name_and_unknown_template(daemon):
    s = Sandbox.create("code-interpreter-v1", timeout=30)
    try:
        assert s.commands.run("echo ok").stdout == "ok\n"
    finally:
        s.kill()
    with pytest.raises(SandboxException):
        Sandbox.create("no-such-template-" + uuid.uuid4().hex[:6])


def test_set_timeout_moves_the_end(sbx):
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    after = sbx.get_info().end_at
    assert (after - before).total_seconds() > 400


def test_set_timeout_zero_ends_the_running_time(daemon):
    s = Sandbox.create(timeout=120)
    s.set_timeout(0)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(s.sandbox_id)
    # A sandbox whose timeout pauses is paused at once instead, and can be resumed.
    p = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause"})
    try:
        p.files.write("kept.txt", "kept")
        p.set_timeout(0)
        assert Sandbox.get_info(p.sandbox_id).state == SandboxState.PAUSED
        p.set_timeout(0)  # already paused: stays paused
        assert Sandbox.get_info(p.sandbox_id).state == SandboxState.PAUSED
        resumed = Sandbox.connect(p.sandbox_id)
        assert resumed.files.read("kept.txt") == "kept"
    finally:
        p.kill()


def test_a_killed_sandbox_ends_its_command_streams(daemon):
    s = Sandbox.create(timeout=120)
    h = s.commands.run("sleep 60", background=True)
    t0 = time.monotonic()
    Sandbox.kill(s.sandbox_id)
    with pytest.raises(SandboxNotRunningException) as e:
        h.wait()
    assert time.monotonic() - t0 < 20, "ended at once, not by a timeout"
    assert "was not found" in str(e.value)


def test_timeout_kills_the_sandbox(daemon):
    s = Sandbox.create(timeout=2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            Sandbox.get_info(s.sandbox_id)
        except SandboxNotFoundException:
            return
        time.sleep(0.5)
    pytest.fail("the sandbox outlived its timeout")


def test_list_filters_and_pages(daemon):
    tag = uuid.uuid4().hex[:8]
    made = [Sandbox.create(timeout=120, metadata={"tag": tag, "n": str(i)}) for i in range(3)]
    try:
        q = SandboxQuery(metadata={"tag": tag})
        pager = Sandbox.list(query=q, limit=2)
        first = pager.next_items()
        assert len(first) == 2 and pager.has_next
        second = pager.next_items()
        assert len(second) == 1 and not pager.has_next
        ids = {i.sandbox_id for i in first + second}
        assert ids == {m.sandbox_id for m in made}
        # Newest first, as E2B lists: the first page of one holds the last one made.
        newest = Sandbox.list(query=q, limit=1).next_items()
        assert [i.sandbox_id for i in newest] == [made[2].sandbox_id]
        assert [i.sandbox_id for i in first + second] == [m.sandbox_id for m in reversed(made)]
        one = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "n": "1"})).next_items()
        assert [i.sandbox_id for i in one] == [made[1].sandbox_id]
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        assert Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, started_after=future)).next_items() == []
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        assert len(Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, started_after=past)).next_items()) == 3
        made[0].pause()
        paused = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED])).next_items()
        assert [i.sandbox_id for i in paused] == [made[0].sandbox_id]
        running = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING])).next_items()
        assert {i.sandbox_id for i in running} == {made[1].sandbox_id, made[2].sandbox_id}
    finally:
        for m in made:
            m.kill()


def test_pause_resume_keeps_processes_and_memory(sbx):
    sbx.files.write("state.txt", "kept on disk")
    # A process holding state in memory only: a counter that keeps counting.
    h = sbx.commands.run(
        "python3 -c 'import time,sys\nn=0\nwhile True:\n n+=1; print(n, flush=True); time.sleep(0.05)'",
        background=True,
    )
    time.sleep(0.5)
    assert sbx.pause() is True
    assert sbx.pause() is False, "pausing a paused sandbox reports False (409)"
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    # A paused sandbox is not reaped by time and does not answer traffic.
    assert not sbx.is_running()
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    assert resumed.files.read("state.txt") == "kept on disk"
    procs = resumed.commands.list()
    assert h.pid in [p.pid for p in procs], "the process survived the pause"
    out = resumed.commands.run(f"cat /proc/{h.pid}/status | grep State").stdout
    assert "stopped" not in out.lower() and "T (" not in out
    resumed.commands.kill(h.pid)
    # The lifecycle shows in the sandbox's logs (v1 and v2 routes).
    url, key = os.environ["E2B_API_URL"], {"X-API-Key": API_KEY}
    lines = [entry["line"] for entry in httpx.get(f"{url}/sandboxes/{sbx.sandbox_id}/logs", headers=key).json()["logs"]]
    assert any(x.startswith("sandbox paused: memory") for x in lines), lines
    assert "sandbox resumed: from memory" in lines, lines
    v2 = httpx.get(f"{url}/v2/sandboxes/{sbx.sandbox_id}/logs", headers=key).json()["logs"]
    assert [e["fields"]["event"] for e in v2][-2:] == ["paused", "resumed"]


def test_metrics_and_unknown_routes(sbx):
    m = sbx.get_metrics()
    assert len(m) == 1
    assert m[0].mem_used > 0 and m[0].mem_total == 512 * 1024 * 1024
    assert m[0].cpu_count >= 1


def test_api_key_is_required(daemon):
    url = os.environ["E2B_API_URL"]
    r = httpx.get(f"{url}/v2/sandboxes", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["code"] == 401
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="wrong-key")
    r = httpx.get(f"{url}/v2/sandboxes", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200


def test_bad_create_input_is_400(daemon):
    url = os.environ["E2B_API_URL"]
    h = {"X-API-Key": API_KEY}
    r = httpx.post(f"{url}/v2/sandboxes", headers=h, json={"timeout": 10})
    assert r.status_code == 400 and "templateID" in r.json()["message"]
    r = httpx.post(f"{url}/v2/sandboxes", headers=h, content=b"{not json")
    assert r.status_code == 400
    r = httpx.post(f"{url}/v2/sandboxes", headers=h, json={"templateID": "base", "timeout": 10**9})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.post(f"{url}/v2/sandboxes", headers=h,
                   json={"templateID": "base", "network": {"egressProxy": {"address": "x:1"}}})
    assert r.status_code == 400, "unsupported options are refused, not ignored"
    assert "egressProxy" in r.json()["message"]
    r = httpx.post(f"{url}/v2/sandboxes", headers=h,
                   json={"templateID": "base", "network": {"denyOut": ["example.com"]}})
    assert r.status_code == 400 and "domain" in r.json()["message"], "names only in allowOut"
    r = httpx.get(f"{url}/v2/sandboxes?state=sleeping", headers=h)
    assert r.status_code == 400
    # Routes this daemon does not serve answer in E2B's JSON shape.
    r = httpx.get(f"{url}/volumes", headers=h)
    assert r.status_code == 404 and "not supported" in r.json()["message"]
    r = httpx.post(f"{url}/sandboxes/nosuch/snapshots", headers=h, json={})
    assert r.status_code == 404 and r.json()["code"] == 404
    r = httpx.post(f"{url}/sandboxes/nosuch/fork", headers=h, json={})
    assert r.status_code == 404 and r.json()["code"] == 404


# ---------------------------------------------------------------- access token


def test_access_token_is_enforced(sbx):
    url = os.environ["E2B_SANDBOX_URL"]
    hdr = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    # No token: envd's 401.
    r = httpx.post(f"{url}/filesystem.Filesystem/Stat", headers={**hdr, "Content-Type": "application/json"},
                   json={"path": "/home/user"})
    assert r.status_code == 401
    r = httpx.get(f"{url}/files", params={"path": "/etc/hostname"}, headers=hdr)
    assert r.status_code == 401
    # /health stays open.
    assert httpx.get(f"{url}/health", headers=hdr).status_code == 204
    r = httpx.get(f"{url}/files", params={"path": "/etc/hostname"}, headers={**hdr, "X-Access-Token": "wrong"})
    assert r.status_code == 401
    # Signed URLs work without the header, and only for what they sign: through host routing
    # (`{port}-{id}.{domain}`), as on E2B itself, and as the SDK builds them, on
    # E2B_SANDBOX_URL, which names no sandbox (the signature tells which one).
    host = {"Host": f"49983-{sbx.sandbox_id}.sandbox.localhost"}
    sbx.files.write("signed.txt", "signed body")
    dl = sbx.download_url("signed.txt")
    r = httpx.get(dl, headers=host)
    assert r.status_code == 200 and r.text == "signed body"
    up = sbx.upload_url("up.txt")
    r = httpx.post(up, headers=host, files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sbx.files.read("up.txt") == "uploaded"
    tampered = dl.replace("signed.txt", "up.txt")
    assert httpx.get(tampered, headers=host).status_code == 401
    assert httpx.get(dl.split("&signature")[0], headers=host).status_code == 401
    # As built, no routing header at all.
    assert dl.startswith(url), dl
    r = httpx.get(dl)
    assert r.status_code == 200 and r.text == "signed body", (r.status_code, r.text)
    up2 = sbx.upload_url("up2.txt")
    r = httpx.post(up2, files={"file": ("up2.txt", b"uploaded too")})
    assert r.status_code == 200, r.text
    assert sbx.files.read("up2.txt") == "uploaded too"
    r = httpx.get(tampered)
    assert r.status_code == 401 and "signature" in r.json()["message"], r.text
    expiring = sbx.download_url("signed.txt", use_signature_expiration=1)
    assert httpx.get(expiring).text == "signed body"
    time.sleep(2.1)
    r = httpx.get(expiring)
    assert r.status_code == 401 and "expired" in r.json()["message"], r.text
    # Unknown sandbox: the proxy's 502.
    r = httpx.get(f"{url}/health", headers={**hdr, "E2b-Sandbox-Id": "nosuchsandbox"})
    assert r.status_code == 502


def test_half_routed_traffic_is_refused(daemon):
    url = os.environ["E2B_SANDBOX_URL"]
    r = httpx.get(f"{url}/health", headers={"E2b-Sandbox-Id": "abc"})
    assert r.status_code == 400


# ---------------------------------------------------------------- commands


def test_commands_run_env_cwd_user(daemon):
    s = Sandbox.create(timeout=60, envs={"SANDBOX_WIDE": "yes"})
    try:
        r = s.commands.run("echo $SANDBOX_WIDE $PER_CALL; pwd; id -un; echo $HOME; echo $0",
                           envs={"PER_CALL": "call"}, cwd="/tmp")
        assert r.stdout == "yes call\n/tmp\nuser\n/home/user\n/bin/bash\n"
        assert s.commands.run("id -un", user="root").stdout == "root\n"
        # Create-time env vars reach every process, including ones started by others.
        assert s.commands.run("bash -c 'cat /proc/$$/environ | tr \"\\0\" \"\\n\" | grep SANDBOX_WIDE'").stdout.strip() == "SANDBOX_WIDE=yes"
        with pytest.raises(InvalidArgumentException):
            s.commands.run("true", cwd="/no/such/dir")
    finally:
        s.kill()


def test_userland_promise(sbx):
    r = sbx.commands.run("sudo -n id -u; python3 -c 'print(6*7)'; python -c 'print(7*8)'; "
                         "grep -E 'NoNewPrivs|Seccomp:' /proc/self/status")
    lines = r.stdout.split("\n")
    assert lines[0] == "0", "passwordless sudo"
    assert lines[1] == "42", "python3"
    assert lines[2] == "56", "python, as in E2B's base template"
    assert "Seccomp:\t2" in r.stdout, "the seccomp profile stays on"
    sbx.files.write("rel/x.txt", "x")
    assert sbx.files.exists("/home/user/rel/x.txt"), "relative paths are under /home/user"


def test_each_sandbox_has_its_own_boot_id(sbx):
    read = "cat /proc/sys/kernel/random/boot_id"
    mine = sbx.commands.run(read).stdout.strip()
    host = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert len(mine) == 36 and mine[14] == "4" and mine != host, (mine, host)
    assert sbx.commands.run(read).stdout.strip() == mine, "stable while the sandbox runs"
    other = Sandbox.create(timeout=60)
    try:
        assert other.commands.run(read).stdout.strip() not in (mine, host)
    finally:
        other.kill()
    with pytest.raises(Exception, match="boot_id"):  # the SDK raises on a non-zero exit
        sbx.commands.run("echo x > /proc/sys/kernel/random/boot_id", user="root")
    assert sbx.commands.run(read).stdout.strip() == mine


def test_nonzero_exit_and_timeout(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert e.value.exit_code == 3 and e.value.stdout == "out\n" and e.value.stderr == "err\n"
    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 20


def test_background_wait_stdin_kill(sbx):
    h = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello\n")
    assert h.wait().stdout == "got:hello\n"
    h2 = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h2.pid, "abc")
    sbx.commands.close_stdin(h2.pid)
    assert h2.wait().stdout == "abc"
    h3 = sbx.commands.run("sleep 600", background=True)
    assert h3.kill() is True
    with pytest.raises(CommandExitException):
        h3.wait()
    assert sbx.commands.kill(999999) is False


def test_process_listed_and_connected_from_second_client(sbx):
    h = sbx.commands.run("for i in $(seq 1 30); do echo line$i; sleep 0.1; done", background=True)
    other = Sandbox.connect(sbx.sandbox_id)
    procs = other.commands.list()
    mine = [p for p in procs if p.pid == h.pid]
    assert mine and mine[0].cmd == "/bin/bash"
    joined = other.commands.connect(h.pid)
    res = joined.wait()
    assert res.exit_code == 0 and "line30\n" in res.stdout


def test_pty(sbx):
    def output(h) -> str:
        got = bytearray()
        for _, _, pty in h:
            if pty:
                got.extend(pty)
        return got.decode(errors="replace")

    h = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(h.pid, b"stty size; echo pty-$((6*7)); exit\n")
    text = output(h)
    assert "pty-42" in text and "24 80" in text
    # Resized before the command runs: it sees the new size.
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(h.pid, PtySize(rows=40, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size; exit\n")
    assert "40 100" in output(h)


def test_an_e2b_pty_is_a_terminal_a_person_can_watch(daemon, sbx):
    """A PTY an agent opened through E2B's SDK shows among the sandbox's terminals: a person
    attached to it (WebSocket) sees the agent's output, and what the person types reaches the
    agent's PTY handle."""
    import json as _json
    import threading

    from websockets.sync.client import connect

    h = sbx.pty.create(PtySize(rows=30, cols=90), timeout=0)
    seen = bytearray()
    reader = threading.Thread(target=lambda: [seen.extend(p) for _, _, p in h if p], daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{daemon.port}/api/v1/sandboxes/{sbx.sandbox_id}/terminals"
    listed = httpx.get(base, headers=auth(daemon.port)).json()
    mine = [t for t in listed if t["pid"] == h.pid]
    assert mine and mine[0]["id"].startswith("pty-") and (mine[0]["cols"], mine[0]["rows"]) == (90, 30), listed
    tid = mine[0]["id"]
    ws = connect(f"ws://127.0.0.1:{daemon.port}/api/v1/sandboxes/{sbx.sandbox_id}/terminals/{tid}/ws",
                 additional_headers=auth(daemon.port))
    ws.send(_json.dumps({"type": "hello", "name": "person"}))
    sbx.pty.send_stdin(h.pid, b"echo agent-$((20+1))\n")
    got = bytearray()
    deadline = time.monotonic() + 20
    while b"agent-21" not in got:
        assert time.monotonic() < deadline, f"the watcher did not see the agent's output: {bytes(got)!r}"
        m = ws.recv(timeout=20)
        if isinstance(m, bytes):
            got += m[8:]
    ws.send(b"echo person-$((30+3))\n")
    deadline = time.monotonic() + 20
    while b"person-33" not in seen:
        assert time.monotonic() < deadline, f"the E2B handle did not see the person's input: {bytes(seen)!r}"
        time.sleep(0.05)
    ws.close()
    sbx.pty.kill(h.pid)


# ---------------------------------------------------------------- files


def test_directory_info_reports_its_st_size(sbx):
    sbx.files.make_dir("sized")
    for i in range(20):
        sbx.files.write(f"sized/file-with-a-long-name-{i}.txt", "x")
    size = int(sbx.commands.run("stat -c %s sized").stdout)
    assert size > 0 and sbx.files.get_info("sized").size == size


def test_files_whose_stat_size_is_not_their_length_are_read_to_their_end(sbx):
    # procfs says 0 bytes, sysfs a page: the body is what `cat` reads.
    for path in ("/proc/sys/kernel/hostname", "/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"):
        want = sbx.commands.run(f"cat {path}").stdout
        got = sbx.files.read(path)
        assert got and (got == want or path == "/proc/self/status"), (path, got, want)
    assert sbx.files.read("/proc/sys/kernel/hostname").strip() == sbx.commands.run("hostname").stdout.strip()


def test_file_metadata_is_kept_in_e2b_xattrs_and_replaced_on_overwrite(sbx):
    sbx.files.write("meta.txt", "one", metadata={"Owner": "alice", "stage": "draft"})
    assert sbx.files.get_info("meta.txt").metadata == {"owner": "alice", "stage": "draft"}
    names = sbx.commands.run("python3 -c \"import os; print(sorted(os.listxattr('meta.txt')))\"").stdout
    assert names.strip() == "['user.e2b.owner', 'user.e2b.stage']", names
    # An xattr of the user's own, outside E2B's namespace, is neither shown nor touched.
    sbx.commands.run("python3 -c \"import os; os.setxattr('meta.txt', 'user.mine', b'x')\"")
    assert sbx.files.get_info("meta.txt").metadata == {"owner": "alice", "stage": "draft"}
    # An overwrite with metadata replaces the whole set; one without clears it.
    sbx.files.write("meta.txt", "two", metadata={"stage": "final"})
    assert sbx.files.get_info("meta.txt").metadata == {"stage": "final"}
    sbx.files.write("meta.txt", "three")
    assert not sbx.files.get_info("meta.txt").metadata
    kept = sbx.commands.run("python3 -c \"import os; print(os.getxattr('meta.txt', 'user.mine'))\"").stdout
    assert kept.strip() == "b'x'", kept


def test_files_roundtrip(sbx):
    info = sbx.files.write("/home/user/a.txt", "hello file")
    assert info.path == "/home/user/a.txt"
    assert sbx.files.read("/home/user/a.txt") == "hello file"
    data = bytes(range(256)) * 4
    sbx.files.write("bin.dat", data)
    assert bytes(sbx.files.read("bin.dat", format="bytes")) == data
    sbx.files.write_files([{"path": "multi/one.txt", "data": "1"}, {"path": "multi/two.txt", "data": "2"}])
    names = sorted(e.name for e in sbx.files.list("multi"))
    assert names == ["one.txt", "two.txt"]
    assert sbx.files.make_dir("d1/d2") is True
    assert sbx.files.make_dir("d1/d2") is False
    deep = {e.path for e in sbx.files.list("d1", depth=2)}
    assert "/home/user/d1/d2" in deep
    st = sbx.files.get_info("a.txt")
    assert st.type == FileType.FILE and st.size == len("hello file")
    moved = sbx.files.rename("a.txt", "b.txt")
    assert moved.path == "/home/user/b.txt"
    assert not sbx.files.exists("a.txt") and sbx.files.exists("b.txt")
    sbx.files.remove("b.txt")
    assert not sbx.files.exists("b.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.read("nope.txt")


def test_watch_dir_sync(sbx):
    sbx.files.make_dir("w")
    handle = sbx.files.watch_dir("w")
    sbx.files.write("w/new.txt", "x")
    events = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e.name == "new.txt" for e in events):
        events += handle.get_new_events()
        time.sleep(0.2)
    handle.stop()
    assert any(e.name == "new.txt" for e in events)


NESTED_EVENTS = [
    # (what the SDK call does, the events envd reports for it)
    ("make_dir", "rw/a/b", [("a/b", "CREATE"), ("a/b", "CHMOD")]),
    ("write", "rw/a/b/f.txt", [("a/b/f.txt", "CREATE"), ("a/b/f.txt", "CHMOD"), ("a/b/f.txt", "WRITE")]),
    ("rename", "rw/a/b/f.txt", [("a/b/f.txt", "RENAME"), ("a/g.txt", "CREATE")]),
    ("remove", "rw/a/g.txt", [("a/g.txt", "REMOVE")]),
]


def nested_steps(files):
    """The calls of NESTED_EVENTS on a (sync) files API."""
    return {
        "make_dir": lambda p: files.make_dir(p),
        "write": lambda p: files.write(p, "data"),
        "rename": lambda p: files.rename(p, "rw/a/g.txt"),
        "remove": lambda p: files.remove(p),
    }


def test_watch_dir_recursive_reports_envd_events_in_nested_directories(sbx):
    sbx.files.make_dir("rw/a")
    handle = sbx.files.watch_dir("rw", recursive=True)
    steps = nested_steps(sbx.files)
    seen: set[tuple[str, str]] = set()
    for call, path, want in NESTED_EVENTS:
        steps[call](path)
        deadline = time.monotonic() + 10
        while not set(want) <= seen and time.monotonic() < deadline:
            seen |= {(e.name, e.type.name) for e in handle.get_new_events()}
            time.sleep(0.05)
        assert set(want) <= seen, (call, want, seen)
    handle.stop()


def test_watch_dir_recursive_stream_reports_envd_events_in_nested_directories(daemon):
    async def main():
        s = await AsyncSandbox.create(timeout=60)
        try:
            await s.files.make_dir("rw/a")
            seen: set[tuple[str, str]] = set()
            handle = await s.files.watch_dir("rw", on_event=lambda e: seen.add((e.name, e.type.name)),
                                             recursive=True)
            steps = {
                "make_dir": lambda p: s.files.make_dir(p),
                "write": lambda p: s.files.write(p, "data"),
                "rename": lambda p: s.files.rename(p, "rw/a/g.txt"),
                "remove": lambda p: s.files.remove(p),
            }
            for call, path, want in NESTED_EVENTS:
                await steps[call](path)
                for _ in range(200):
                    if set(want) <= seen:
                        break
                    await asyncio.sleep(0.05)
                assert set(want) <= seen, (call, want, seen)
            await handle.stop()
        finally:
            await s.kill()

    asyncio.run(main())


def test_large_upload_download(sbx):
    data = os.urandom(50 * 1024 * 1024)
    sbx.files.write("big.bin", data)
    assert sbx.commands.run("stat -c %s big.bin").stdout.strip() == str(len(data))
    back = bytes(sbx.files.read("big.bin", format="bytes"))
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


# ---------------------------------------------------------------- async client


def test_async_client(daemon):
    async def main():
        s = await AsyncSandbox.create(timeout=60, envs={"A": "async"})
        try:
            r = await s.commands.run("echo $A")
            assert r.stdout == "async\n"
            await s.files.write("async.txt", "async data")
            assert await s.files.read("async.txt") == "async data"
            seen = []
            await s.files.make_dir("aw")
            wh = await s.files.watch_dir("aw", on_event=lambda e: seen.append(e.name))
            await s.files.write("aw/f.txt", "1")
            for _ in range(50):
                if "f.txt" in seen:
                    break
                await asyncio.sleep(0.1)
            await wh.stop()
            assert "f.txt" in seen
            with pytest.raises(CommandExitException):
                await s.commands.run("exit 2")
            assert (await s.get_info()).state == SandboxState.RUNNING
            assert await s.pause() is True
            s2 = await AsyncSandbox.connect(s.sandbox_id)
            assert await s2.files.read("async.txt") == "async data"
            # A filesystem pause: the files stay, the processes boot afresh.
            h = await s2.commands.run("sleep 600", background=True)
            assert await s2.pause(mode="filesystem") is True
            s3 = await AsyncSandbox.connect(s.sandbox_id)
            assert await s3.files.read("async.txt") == "async data"
            assert h.pid not in [p.pid for p in await s3.commands.list()]
            lst = await AsyncSandbox.list(query=SandboxQuery(metadata={})).next_items()
            assert s.sandbox_id in [i.sandbox_id for i in lst]
        finally:
            assert await s.kill() is True
        with pytest.raises(SandboxNotFoundException):
            await AsyncSandbox.get_info(s.sandbox_id)

    asyncio.run(main())


def test_async_sdk_fidelity(daemon):
    """The fidelity items through the async SDK: newest first, directory size, signed URLs,
    metadata, pause kinds with set_timeout(0), boot ids, autoResume, `python`, and a resume of
    a sandbox killed meanwhile."""
    async def main():
        tag = uuid.uuid4().hex
        a = await AsyncSandbox.create(timeout=120, metadata={"afid": tag})
        b = await AsyncSandbox.create(timeout=120, metadata={"afid": tag},
                                      lifecycle={"on_timeout": "pause", "auto_resume": True})
        try:
            first = await AsyncSandbox.list(query=SandboxQuery(metadata={"afid": tag}), limit=1).next_items()
            assert [i.sandbox_id for i in first] == [b.sandbox_id], "newest first"
            await a.files.make_dir("d")
            for i in range(20):
                await a.files.write(f"d/long-file-name-{i}.txt", "x")
            size = int((await a.commands.run("stat -c %s d")).stdout)
            assert (await a.files.get_info("d")).size == size > 0
            await a.files.write("m.txt", "1", metadata={"k": "v"})
            assert (await a.files.get_info("m.txt")).metadata == {"k": "v"}
            await a.files.write("m.txt", "2")
            assert not (await a.files.get_info("m.txt")).metadata
            url = a.download_url("m.txt")
            async with httpx.AsyncClient() as c:
                assert (await c.get(url)).text == "2"
                assert (await c.get(url.replace("m.txt", "d"))).status_code == 401
            assert (await a.commands.run("python -c 'print(6*7)'")).stdout == "42\n"
            boot = (await a.commands.run("cat /proc/sys/kernel/random/boot_id")).stdout
            assert boot != (await b.commands.run("cat /proc/sys/kernel/random/boot_id")).stdout
            # set_timeout(0) pauses b (its timeout pauses); traffic (an SDK call) resumes it.
            await b.set_timeout(0)
            assert (await AsyncSandbox.get_info(b.sandbox_id)).state == SandboxState.PAUSED
            assert (await b.commands.run("echo back")).stdout == "back\n"
            assert (await AsyncSandbox.get_info(b.sandbox_id)).state == SandboxState.RUNNING
            # A filesystem pause of a: its resume boots afresh (a new boot id).
            assert await a.pause(mode="filesystem") is True
            a2 = await AsyncSandbox.connect(a.sandbox_id, timeout=60)
            assert (await a2.commands.run("cat /proc/sys/kernel/random/boot_id")).stdout != boot
            # Resuming a sandbox killed meanwhile: not found.
            assert await a2.pause() is True
            await AsyncSandbox.kill(a.sandbox_id)
            with pytest.raises(SandboxNotFoundException):
                await AsyncSandbox.connect(a.sandbox_id, timeout=60)
        finally:
            for s in (a, b):
                try:
                    await AsyncSandbox.kill(s.sandbox_id)
                except SandboxException:
                    pass

    asyncio.run(main())


# ---------------------------------------------------------------- JS SDK


def test_js_sdk(daemon):
    node = E2B_CLIENTS / "node_modules/.bin/node"
    if not node.exists():
        pytest.fail(f"{node} missing: run scripts/setup.sh (installs the pinned npm e2b SDK)")
    env = dict(os.environ, NODE_PATH=str(E2B_CLIENTS / "node_modules"))
    r = subprocess.run([str(node), str(JS_TEST)], env=env, capture_output=True, text=True, timeout=240,
                       cwd=E2B_CLIENTS)
    print(r.stdout)
    print(r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "js e2b sdk: all ok" in r.stdout


# ---------------------------------------------------------------- other ports


def test_other_ports_are_proxied_into_the_sandbox(sbx):
    sbx.files.write("site/index.html", "<h1>from the sandbox</h1>")
    sbx.commands.run("cd site && exec python3 -m http.server 8080 --bind 0.0.0.0", background=True)
    url = os.environ["E2B_SANDBOX_URL"]
    hdr = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8080"}
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{url}/index.html", headers=hdr)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.text == "<h1>from the sandbox</h1>"
    # The same by Host, the form of E2B preview URLs (`{port}-{id}.{domain}`).
    r = httpx.get(f"{url}/index.html", headers={"Host": f"8080-{sbx.sandbox_id}.sandbox.localhost"})
    assert r.status_code == 200 and r.text == "<h1>from the sandbox</h1>"
    # A closed port: E2B's 502.
    r = httpx.get(f"{url}/", headers={**hdr, "E2b-Sandbox-Port": "8081"})
    assert r.status_code == 502 and "8081" in r.json()["message"]


# A WebSocket echo server on the sandbox's Python standard library alone (RFC 6455: the
# handshake, then text frames; the sandbox's Debian python has no websockets package).
WS_ECHO_SERVER = """
import base64, hashlib, socketserver, struct

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        key = ""
        while (line := self.rfile.readline().decode()) not in ("\\r\\n", ""):
            if line.lower().startswith("sec-websocket-key:"):
                key = line.split(":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
                         b"Connection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
        while True:
            head = self.rfile.read(2)
            if len(head) < 2 or head[0] & 0x0F == 8:
                return
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            out = b"echo: " + data
            size = bytes([len(out)]) if len(out) < 126 else b"\\x7e" + struct.pack(">H", len(out))
            self.wfile.write(b"\\x81" + size + out)

socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 8765), Echo).serve_forever()
"""


def test_websockets_reach_a_sandbox_port(sbx):
    """A preview URL carries WebSocket upgrades: an echo server in the sandbox answers."""
    from websockets.sync.client import connect

    sbx.files.write("echo.py", WS_ECHO_SERVER)
    sbx.commands.run("exec python3 echo.py", background=True)
    url = os.environ["E2B_SANDBOX_URL"].replace("http://", "ws://")
    hdr = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8765"}
    deadline = time.monotonic() + 20
    while True:
        try:
            ws = connect(url + "/", additional_headers=hdr, open_timeout=5)
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with ws:
        for text in ("one", "two" * 1000):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo: " + text


def test_auto_pause_at_timeout_then_connect_resumes(daemon):
    s = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        s.files.write("kept.txt", "still here")
        assert s.get_info().lifecycle["on_timeout"] == "pause"
        deadline = time.monotonic() + 30
        while Sandbox.get_info(s.sandbox_id).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "not paused at its timeout"
            time.sleep(0.3)
        # Paused, so no longer on a clock: still there well after the timeout.
        time.sleep(3)
        assert Sandbox.get_info(s.sandbox_id).state == SandboxState.PAUSED
        back = Sandbox.connect(s.sandbox_id, timeout=60)
        assert back.files.read("kept.txt") == "still here"
        assert Sandbox.get_info(s.sandbox_id).state == SandboxState.RUNNING
    finally:
        s.kill()


def test_a_filesystem_pause_keeps_the_files_and_boots_afresh(daemon):
    s = Sandbox.create(timeout=120)
    try:
        s.files.write("kept.txt", "on disk")
        boot_id = s.commands.run("cat /proc/sys/kernel/random/boot_id").stdout
        h = s.commands.run("sleep 600", background=True)
        assert s.pause(mode="filesystem") is True
        assert Sandbox.get_info(s.sandbox_id).state == SandboxState.PAUSED
        back = Sandbox.connect(s.sandbox_id, timeout=120)
        assert back.files.read("kept.txt") == "on disk"
        assert h.pid not in [p.pid for p in back.commands.list()], "its processes did not survive"
        assert back.commands.run("cat /proc/sys/kernel/random/boot_id").stdout != boot_id, "a new boot"
        # The deprecated spelling is the same pause.
        assert back.pause(keep_memory=False) is True
        assert Sandbox.connect(s.sandbox_id, timeout=120).files.read("kept.txt") == "on disk"
    finally:
        s.kill()


def test_a_filesystem_pause_at_the_timeout(daemon):
    s = Sandbox.create(timeout=2, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    try:
        s.files.write("kept.txt", "still here")
        deadline = time.monotonic() + 30
        while Sandbox.get_info(s.sandbox_id).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "not paused at its timeout"
            time.sleep(0.3)
        back = Sandbox.connect(s.sandbox_id, timeout=60)
        assert back.files.read("kept.txt") == "still here"
        url, key = os.environ["E2B_API_URL"], {"X-API-Key": API_KEY}
        lines = [e["line"] for e in httpx.get(f"{url}/sandboxes/{s.sandbox_id}/logs", headers=key).json()["logs"]]
        assert any(x.startswith("sandbox paused: timeout; files only") for x in lines), lines
    finally:
        s.kill()


def test_auto_resume_wakes_a_paused_sandbox_for_its_traffic(daemon):
    s = Sandbox.create(timeout=3, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        assert s.get_info().lifecycle["auto_resume"] is True
        s.files.write("site/index.html", "awake")
        s.commands.run("cd site && exec python3 -m http.server 8080 --bind 0.0.0.0", background=True)

        def wait_paused():
            deadline = time.monotonic() + 30
            while Sandbox.get_info(s.sandbox_id).state != SandboxState.PAUSED:
                assert time.monotonic() < deadline, "not paused at its timeout"
                time.sleep(0.2)

        wait_paused()
        # An SDK call is traffic: it resumes the sandbox and is answered.
        assert s.commands.run("echo awake").stdout == "awake\n"
        assert Sandbox.get_info(s.sandbox_id).state == SandboxState.RUNNING
        wait_paused()
        # So is a request to one of its ports.
        url = os.environ["E2B_SANDBOX_URL"]
        r = httpx.get(f"{url}/index.html", headers={"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": "8080"},
                      timeout=60)
        assert r.status_code == 200 and r.text == "awake", r.text
    finally:
        s.kill()


def test_auto_resume_rules(daemon):
    # Without it, traffic to a paused sandbox is refused and does not wake it.
    s = Sandbox.create(timeout=120)
    try:
        assert s.get_info().lifecycle["auto_resume"] is False
        s.pause()
        assert not s.is_running()
        assert Sandbox.get_info(s.sandbox_id).state == SandboxState.PAUSED
    finally:
        s.kill()
    # E2B's own rules, checked by the server too (raw requests, as other clients send them).
    url, key = os.environ["E2B_API_URL"], {"X-API-Key": API_KEY}
    for body, why in (
        ({"templateID": "base", "autoResume": {"enabled": True}}, "autoPause"),
        ({"templateID": "base", "autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}},
         "autoPauseMemory"),
        ({"templateID": "base", "autoPause": True, "autoResume": True}, "object"),
    ):
        r = httpx.post(f"{url}/sandboxes", headers=key, json=body)
        assert r.status_code == 400 and why in r.json()["message"], r.text


# ---------------------------------------------------------------- snapshots, fork, network


def native_policy(sandbox_id: str) -> dict:
    """The policy in force, through Coppice's own API (with the daemon's bearer token)."""
    port = int(os.environ["E2B_API_URL"].rsplit(":", 1)[1])
    r = httpx.get(f"{os.environ['E2B_API_URL']}/api/v1/sandboxes/{sandbox_id}/network", headers=auth(port))
    assert r.status_code == 200, r.text
    return r.json()["policy"]


def test_snapshot_create_list_restore_delete(daemon):
    s = Sandbox.create(timeout=120)
    child = None
    try:
        s.files.write("/home/user/snap.txt", "from parent")
        name = "snap-" + uuid.uuid4().hex[:8]
        snap = s.create_snapshot(name=name)
        assert snap.snapshot_id and snap.names == [name]
        s.files.write("/home/user/snap.txt", "changed after the snapshot")
        second = s.create_snapshot(mode="filesystem")
        assert second.names == []
        # E2B's default is a full snapshot (memory too, where the host has CRIU).
        port = int(os.environ["E2B_API_URL"].rsplit(":", 1)[1])
        kinds = [httpx.get(f"{os.environ['E2B_API_URL']}/api/v1/snapshots/{i}", headers=auth(port)).json()["kind"]
                 for i in (snap.snapshot_id, second.snapshot_id)]
        assert kinds == ["memory", "filesystem"], kinds

        mine = Sandbox.list_snapshots(sandbox_id=s.sandbox_id)
        ids = [i.snapshot_id for i in mine.next_items()]
        assert ids == [snap.snapshot_id, second.snapshot_id], "oldest first"
        pager = Sandbox.list_snapshots(sandbox_id=s.sandbox_id, limit=1)
        assert [i.snapshot_id for i in pager.next_items()] == [snap.snapshot_id]
        assert pager.has_next
        assert [i.snapshot_id for i in pager.next_items()] == [second.snapshot_id]
        assert not pager.has_next
        by_name = Sandbox.list_snapshots(name=name).next_items()
        assert [i.snapshot_id for i in by_name] == [snap.snapshot_id]

        # Sandbox.create(snapshot): the snapshot's files, a working envd (access token).
        child = Sandbox.create(name, timeout=120)
        assert child.sandbox_id != s.sandbox_id
        assert child.files.read("/home/user/snap.txt") == "from parent"
        assert child.commands.run("cat /home/user/snap.txt").stdout == "from parent"
        by_id = Sandbox.create(second.snapshot_id, timeout=60)
        try:
            assert by_id.files.read("/home/user/snap.txt") == "changed after the snapshot"
        finally:
            by_id.kill()

        # mode="full" (memory and files, CRIU): a sandbox made from it resumes the processes.
        s.commands.run("(nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; "
                       "sleep 0.1; done' >/dev/null 2>&1 &)")
        time.sleep(0.5)
        full = s.create_snapshot(mode="full")
        resumed = Sandbox.create(full.snapshot_id, timeout=60)
        try:
            first = int(resumed.files.read("/tmp/n"))
            time.sleep(0.5)
            assert int(resumed.files.read("/tmp/n")) > first > 1, "the counter did not go on"
            assert resumed.commands.run("echo ok").stdout == "ok\n"
        finally:
            resumed.kill()
        assert Sandbox.delete_snapshot(full.snapshot_id) is True

        # Refused while a sandbox stands on it; the refusal names it.
        with pytest.raises(SandboxException) as e:
            Sandbox.delete_snapshot(snap.snapshot_id)
        assert child.sandbox_id in str(e.value)
        child.kill()
        child = None
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        assert Sandbox.delete_snapshot(second.snapshot_id) is True
        assert Sandbox.list_snapshots(sandbox_id=s.sandbox_id).next_items() == []
        with pytest.raises(SandboxException):
            Sandbox.create(name)
    finally:
        if child is not None:
            child.kill()
        s.kill()


def test_fork_sees_parent_files_and_writes_are_isolated(daemon):
    parent = Sandbox.create(timeout=120)
    forks = []
    try:
        parent.files.write("/home/user/p.txt", "parent data")
        forks = parent.fork(count=2, timeout=90)
        assert len(forks) == 2
        for f in forks:
            assert isinstance(f, Sandbox), f
            assert f.sandbox_id != parent.sandbox_id
            assert f.files.read("/home/user/p.txt") == "parent data"
        a, b = forks
        a.files.write("/home/user/p.txt", "written in fork a")
        assert a.commands.run("cat /home/user/p.txt").stdout == "written in fork a"
        assert b.files.read("/home/user/p.txt") == "parent data"
        assert parent.files.read("/home/user/p.txt") == "parent data"
        end = a.get_info().end_at - a.get_info().started_at
        assert 60 < end.total_seconds() <= 95, end
        # The API's range for count is 1..20 (the SDK checks it too).
        r = httpx.post(f"{os.environ['E2B_API_URL']}/sandboxes/{parent.sandbox_id}/fork",
                       headers={"X-API-Key": API_KEY}, json={"count": 21})
        assert r.status_code == 400 and r.json()["code"] == 400
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
        parent.kill()


def test_network_policy_at_create_and_update(daemon):
    offline = Sandbox.create(timeout=60, allow_internet_access=False)
    default = Sandbox.create(timeout=60)
    ruled = Sandbox.create(timeout=60, network={"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"]})
    try:
        p = native_policy(offline.sandbox_id)
        assert p["air_gapped"] is True and p["default"] == "deny"
        p = native_policy(default.sandbox_id)
        assert p["default"] == "allow" and not p.get("air_gapped") and not p.get("deny")
        p = native_policy(ruled.sandbox_id)
        assert [r["cidr"] for r in p["allow"]] and "1.1.1.1" in p["allow"][0]["cidr"]
        assert [r["cidr"] for r in p["deny"]] == ["0.0.0.0/0"]
        assert default.commands.run("echo up").stdout == "up\n"

        default.update_network({"deny_out": ["10.0.0.0/8"]})
        p = native_policy(default.sandbox_id)
        assert [r["cidr"] for r in p["deny"]] == ["10.0.0.0/8"] and p["default"] == "allow"
        default.update_network({"allow_internet_access": False})
        p = native_policy(default.sandbox_id)
        assert p["air_gapped"] is True and p["default"] == "deny"
        Sandbox.update_network(default.sandbox_id, {})
        assert native_policy(default.sandbox_id)["default"] == "allow", "omitted fields are cleared"
        default.update_network({"allow_out": ["example.com", "*.pypi.org"], "deny_out": ["0.0.0.0/0"]})
        p = native_policy(default.sandbox_id)
        assert p["domains"] == ["example.com", "*.pypi.org"] and [r["cidr"] for r in p["deny"]] == ["0.0.0.0/0"]
        with pytest.raises(SandboxException) as e:
            default.update_network({"deny_out": ["example.com"]})
        assert "domain" in str(e.value)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.update_network("nosuch", {"deny_out": ["10.0.0.0/8"]})
    finally:
        for s in (offline, default, ruled):
            s.kill()
