"""Collaborative terminals against a real daemon: real PTYs in real sandboxes, the REST API,
the WebSocket protocol (docs/terminals.md) with several clients, reconnects by offset, roles,
slow clients, the screen model on full-screen programs, and a daemon restart."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import Client, Rest


@pytest.fixture(scope="module")
def sid(rest: Rest) -> str:
    return rest.sandbox()


def shell(rest: Rest, sid: str, **kw) -> str:
    """A terminal running bash with a plain prompt, ready for input."""
    t = rest.open(sid, cmd="PS1='$ ' exec bash --norc --noprofile", **kw)
    rest.wait_screen(sid, t["id"], "$")
    return t["id"]


def alternate(rest: Rest, sid: str, tid: str, on: bool, needle: str = "", timeout: float = 20.0) -> dict:
    """Waits until the terminal is (or is no longer) on the alternate screen, showing `needle`."""
    deadline = time.monotonic() + timeout
    while True:
        s = rest.screen(sid, tid)
        if s["alternate_screen"] == on and needle in s["text"]:
            return s
        assert time.monotonic() < deadline, f"alternate_screen={on} with {needle!r} not reached:\n{s['text']}"
        time.sleep(0.1)


def test_objects_lifecycle_and_bad_input(rest: Rest, sid: str):
    t = rest.open(sid)  # the user's login shell
    assert t["running"] and (t["cols"], t["rows"]) == (80, 24) and t["cmd"] == "login shell"
    tid = t["id"]
    rest.send(sid, tid, "echo lifecycle-$((6*7))", ["Enter"])
    s = rest.wait_screen(sid, tid, "lifecycle-42")
    assert "user@" in s["text"], s["text"]  # a login shell's prompt
    listed = rest.call("GET", f"/api/v1/sandboxes/{sid}/terminals", expect=200)[1]
    assert tid in [x["id"] for x in listed]
    # Resize: the program sees it (SIGWINCH) and the screen model follows.
    rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/resize", {"cols": 101, "rows": 33}, expect=200)
    rest.send(sid, tid, "echo cols=$(tput cols) rows=$(tput lines)", ["Enter"])
    s = rest.wait_screen(sid, tid, "cols=101 rows=33")
    assert (s["cols"], s["rows"]) == (101, 33)
    # Bad input: clear errors, nothing lost.
    st, body = rest.call("GET", f"/api/v1/sandboxes/{sid}/terminals/term-nope")
    assert st == 404 and "term-nope" in body["message"], body
    st, body = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/resize", {"cols": 0, "rows": 10})
    assert st == 400 and "out of range" in body["message"], body
    st, body = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/input", {"keys": ["Hyper"]})
    assert st == 400 and "unknown key" in body["message"], body
    st, body = rest.call("POST", "/api/v1/sandboxes/nosuchsandbox/terminals", {})
    assert st == 404, body
    assert "lifecycle-42" in rest.screen(sid, tid)["text"]
    # Kill: the terminal shows how it ended, input is refused with a reason.
    rest.call("DELETE", f"/api/v1/sandboxes/{sid}/terminals/{tid}", expect=204)
    deadline = time.monotonic() + 10
    while rest.info(sid, tid)["running"]:
        assert time.monotonic() < deadline, "killed terminal still running"
        time.sleep(0.1)
    info = rest.info(sid, tid)
    assert info["exit"]["exit_code"] == -1 and "signal" in info["exit"]["status"], info
    st, body = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/input", {"text": "x"})
    assert st == 400 or st == 409, body
    assert "ended" in body["message"], body


def test_many_clients_roles_and_size_rule(daemon, rest: Rest, sid: str):
    tid = shell(rest, sid)
    writer = Client(daemon.port, sid, tid, size=(90, 30), name="alice")
    viewer_token = rest.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/share", {"role": "viewer"}, expect=200)[1]
    assert viewer_token["role"] == "viewer" and viewer_token["token"] in viewer_token["ws_path"]
    viewer = Client(daemon.port, sid, tid, token=viewer_token["token"], size=(40, 10), name="bob")
    assert viewer.hello["role"] == "viewer"
    # A viewer never sets the size: the writer's 90x30 holds.
    assert (viewer.hello["cols"], viewer.hello["rows"]) == (90, 30)
    names = {c["name"]: c["role"] for c in viewer.hello["clients"]}
    assert names == {"alice": "writer", "bob": "viewer"}, names
    assert writer.wait_control("joined")["client"]["name"] == "bob"
    # The writer types; both see it.
    writer.ws.send(b"echo from-$((40+2))-writer\r")
    writer.wait_for(b"from-42-writer")
    viewer.wait_for(b"from-42-writer")
    # The viewer's input and resize are refused; its connection stays.
    viewer.ws.send(b"echo viewer-typed\r")
    assert "read-only" in viewer.wait_control("error")["message"]
    viewer.ws.send(json.dumps({"type": "resize", "cols": 20, "rows": 5}))
    assert "read-only" in viewer.wait_control("error")["message"]
    writer.ws.send(b"echo still-$((1+1))\r")
    viewer.wait_for(b"still-2")
    assert b"viewer-typed" not in viewer.data
    # A second, smaller writer shrinks the terminal (smallest writer); when it leaves, it grows back.
    writer.pump()
    writer.control = [m for m in writer.control if m["type"] != "resize"]
    small = Client(daemon.port, sid, tid, size=(70, 20), name="carol")
    assert writer.wait_control("resize") == {"type": "resize", "cols": 70, "rows": 20}
    small.close()
    assert writer.wait_control("resize") == {"type": "resize", "cols": 90, "rows": 30}
    writer.ws.send(b"tput cols\r")
    writer.wait_for(b"\r90\r\n")
    # A wrong token is refused before the upgrade.
    with pytest.raises(InvalidStatus) as e:
        Client(daemon.port, sid, tid, token="0" * 40)
    assert e.value.response.status_code == 403
    # Malformed control: an error, the connection stays.
    writer.ws.send("{not json")
    assert "bad control message" in writer.wait_control("error")["message"]
    writer.ws.send(b"echo after-$((2+3))\r")
    writer.wait_for(b"after-5")
    # An oversized frame (over 1 MiB) closes that client (1009) and nothing else.
    big = Client(daemon.port, sid, tid, name="big")
    with pytest.raises(ConnectionClosed) as closed:
        big.ws.send(b"x" * (2 << 20))
        big.pump(timeout=5)
        big.ws.recv(timeout=5)
    # The close frame says 1009 unless the kernel's reset (the server closed with the rest of
    # the message unread) overtook it.
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009, closed.value
    writer.ws.send(b"echo survived-$((3+4))\r")
    writer.wait_for(b"survived-7")
    viewer.wait_for(b"survived-7")
    writer.close()
    viewer.close()


def test_reconnect_gets_exactly_what_it_missed(daemon, rest: Rest, sid: str):
    tid = shell(rest, sid)
    a = Client(daemon.port, sid, tid, size=(80, 24))
    a.ws.send(b"echo first-part\r")
    a.wait_for(b"first-part\r\n")
    a.pump()
    last = a.end
    a.close()
    # Output while it is away.
    rest.send(sid, tid, "for i in $(seq 1 200); do echo line-$i; done; echo away-done", ["Enter"])
    rest.wait_screen(sid, tid, "away-done\n$")
    b = Client(daemon.port, sid, tid, since=last)
    b.wait_for(b"away-done")
    b.pump()
    missed = rest.output(sid, tid, since=last)
    assert missed["offset"] == last and missed["skipped_bytes"] == 0
    # Byte for byte what the ring holds from `last`: no gap, no duplicate.
    assert bytes(b.data).decode() == missed["text"], (bytes(b.data)[:200], missed["text"][:200])
    assert b.data.count(b"line-200\r\n") == 1 and b"first-part" not in b.data
    b.close()
    # Past the ring: a gap marker says how much is gone, then the stream goes on.
    rest.send(sid, tid, "head -c 1500000 /dev/zero | tr '\\0' z; echo; echo big-$((1+1))-done", ["Enter"])
    rest.wait_screen(sid, tid, "big-2-done", timeout=60)
    c = Client(daemon.port, sid, tid, since=0)
    gap = c.wait_control("gap")
    info = rest.info(sid, tid)
    assert gap["from"] == 0 and gap["to"] == info["ring_start"] > 0, (gap, info)
    c.wait_for(b"big-2-done")
    c.close()


def test_a_stalled_client_does_not_stall_the_terminal_or_others(daemon, rest: Rest, sid: str):
    tid = shell(rest, sid)
    stalled = Client(daemon.port, sid, tid)  # attaches, then never reads again
    fast = Client(daemon.port, sid, tid)
    t0 = time.monotonic()
    rest.send(sid, tid, "head -c 8000000 /dev/urandom | base64 -w 200; echo flood-$((5*5))", ["Enter"])
    fast.wait_for(b"flood-25", timeout=120)
    elapsed = time.monotonic() - t0
    # The terminal went on: its output passed the ring many times over.
    info = rest.info(sid, tid)
    assert info["output_offset"] > 10_000_000 and info["running"], info
    # The stalled client is behind (it gets a gap marker or is dropped), never in the way.
    assert elapsed < 120
    stalled.ws.close()
    fast.close()


def test_screen_model_reads_full_screen_programs(rest: Rest, sid: str):
    tid = shell(rest, sid, cols=100, rows=30)
    rest.send(sid, tid, "printf 'wide: \\u65e5\\u672c\\u8a9e|\\n'; printf '\\xe6\\x97'; sleep 0.3; printf '\\xa5-split\\n'", ["Enter"])
    s = rest.wait_screen(sid, tid, "\u65e5-split")
    assert "wide: 日本語|" in s["text"] and "日-split" in s["text"], s["text"]
    # vim: the alternate screen, its status line, typed text, then back to the shell.
    rest.send(sid, tid, "vim -u NONE -N /tmp/notes.txt", ["Enter"])
    s = alternate(rest, sid, tid, True, "/tmp/notes.txt")
    assert s["text"].count("\n~") >= 20 and "$ vim" not in s["text"], s["text"]
    rest.send(sid, tid, "ihello from vim", ["Escape"])
    s = rest.wait_screen(sid, tid, "hello from vim")
    assert s["text"].splitlines()[0] == "hello from vim", s["text"]
    rest.send(sid, tid, ":wq", ["Enter"])
    alternate(rest, sid, tid, False)
    rest.send(sid, tid, "cat /tmp/notes.txt", ["Enter"])
    rest.wait_screen(sid, tid, "hello from vim\n$")
    # top: its header and process table, read from the screen model.
    rest.send(sid, tid, "top -d 1", ["Enter"])
    s = rest.wait_screen(sid, tid, "load average")
    s = rest.wait_screen(sid, tid, "COMMAND")
    assert "PID USER" in s["text"] and "Tasks:" in s["text"] and "$ top" not in s["text"], s["text"]
    rest.send(sid, tid, "q")
    # Keys typed before top has exited would be read (and dropped) by top: wait for the prompt.
    deadline = time.monotonic() + 10
    while not rest.screen(sid, tid)["text"].endswith("\n$"):
        assert time.monotonic() < deadline, "top did not quit"
        time.sleep(0.1)
    rest.send(sid, tid, "echo top-$((2+2))-quit", ["Enter"])
    rest.wait_screen(sid, tid, "top-4-quit")


def test_attach_to_a_full_screen_program_is_seeded_from_the_screen(daemon, rest: Rest, sid: str):
    tid = shell(rest, sid)
    rest.send(sid, tid, "vim -u NONE -N /tmp/seeded.txt", ["Enter"])
    alternate(rest, sid, tid, True, "/tmp/seeded.txt")
    rest.send(sid, tid, "iseeded text", ["Escape"])
    rest.wait_screen(sid, tid, "seeded text")
    c = Client(daemon.port, sid, tid)
    seed = c.wait_control("seed")
    assert "seeded text" in seed["data"] and "\x1b[?1049h" in seed["data"], seed["data"][:200]
    c.close()
    rest.send(sid, tid, ":q!", ["Enter"])


def test_terminals_survive_a_daemon_restart(daemon, rest: Rest, sid: str):
    tid = shell(rest, sid)
    rest.send(sid, tid, "export MARK=before-restart", ["Enter"])
    daemon.proc.terminate()
    daemon.proc.wait(timeout=60)
    daemon.start()
    listed = rest.call("GET", f"/api/v1/sandboxes/{sid}/terminals", expect=200)[1]
    assert tid in [t["id"] for t in listed], listed
    # The same shell (its environment kept), driven through the restarted daemon.
    rest.send(sid, tid, "echo mark=$MARK", ["Enter"])
    rest.wait_screen(sid, tid, "mark=before-restart")


def test_cli_new_ls_attach_resize_detach_and_exit_status(daemon, rest: Rest, sid: str):
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import subprocess
    import termios

    cli = [str(daemon.binary), "--socket", str(daemon.socket)]
    tid = subprocess.run(cli + ["terminal", "new", sid, "--cmd", "PS1='$ ' exec bash --norc --noprofile"],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert tid.startswith("term-"), tid
    ls = subprocess.run(cli + ["terminal", "ls", sid], check=True, capture_output=True, text=True).stdout
    assert tid in ls and "80x24" in ls, ls

    def set_size(fd: int, cols: int, rows: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def run_attached(keys_then_wait: list[tuple[bytes, bytes]], resize_to=None) -> tuple[int, bytes]:
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(cli[0], cli + ["terminal", "attach", sid, tid])
        set_size(fd, 100, 40)
        os.kill(pid, signal.SIGWINCH)
        seen = b""
        for keys, wait in keys_then_wait:
            if keys:
                os.write(fd, keys)
            deadline = time.monotonic() + 20
            while wait not in seen:
                assert time.monotonic() < deadline, f"{wait!r} not seen; got {seen[-400:]!r}"
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    try:
                        seen += os.read(fd, 65536)
                    except OSError:
                        break
            if resize_to and keys is keys_then_wait[0][0]:
                set_size(fd, *resize_to)
                os.kill(pid, signal.SIGWINCH)
        _, status = os.waitpid(pid, 0)
        while True:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        os.close(fd)
        return os.waitstatus_to_exitcode(status), seen

    # Attach, type, resize the local window (the terminal follows), detach with Ctrl-].
    code, seen = run_attached([(b"echo cli-$((2*21))\r", b"cli-42"),
                               (b"tput cols\r", b"\r123\r\n"),
                               (b"\x1d", b"detached")], resize_to=(123, 30))
    assert code == 0, seen
    assert "cli-42" in rest.screen(sid, tid)["text"]
    assert rest.info(sid, tid)["running"]
    # Attach again (the terminal kept running) and end its program: attach exits with its status.
    code, seen = run_attached([(b"exit 3\r", b"")])
    assert code == 3, (code, seen[-300:])
    # kill on an unknown terminal: a clear error and a non-zero exit.
    r = subprocess.run(cli + ["terminal", "kill", sid, "term-nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "term-nope" in r.stderr, r
