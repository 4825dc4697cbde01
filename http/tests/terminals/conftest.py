"""A private Coppice daemon for the terminal tests, and small clients for its terminal REST API
and WebSocket (docs/terminals.md). Needs root (real sandboxes and PTYs).

`COPPICE_BIN` picks the binary (default target/release/coppice).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "rigs"))
from common import Daemon, auth, refuse_if_other_daemon  # noqa: E402


def start_daemon() -> Daemon:
    refuse_if_other_daemon(wait_s=float(os.environ.get("COPPICE_WAIT_OTHER", "300")))
    binary = Path(os.environ.get("COPPICE_BIN", REPO / "target/release/coppice"))
    tmp = Path(tempfile.mkdtemp(prefix="coppice-terminals-"))
    d = Daemon(binary, tmp / "state", pool_size=1, no_network=True, log_path=tmp / "daemon.log")
    return d.start()


@pytest.fixture(scope="module")
def daemon():
    d = start_daemon()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()


class Rest:
    """The daemon's JSON API with its bearer token."""

    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, body=None, expect: int | None = None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Content-Type": "application/json", **auth(self.port)}
        h.update(headers or {})
        c.request(method, path, body=None if body is None else json.dumps(body), headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        if expect is not None:
            assert r.status == expect, f"{method} {path}: HTTP {r.status} {data[:400]!r}"
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, data

    def sandbox(self) -> str:
        return self.call("POST", "/api/v1/sandboxes", {"timeout_secs": 600}, expect=201)[1]["id"]

    def open(self, sid: str, **body) -> dict:
        return self.call("POST", f"/api/v1/sandboxes/{sid}/terminals", body, expect=201)[1]

    def send(self, sid: str, tid: str, text: str = "", keys=()):
        self.call("POST", f"/api/v1/sandboxes/{sid}/terminals/{tid}/input",
                  {"text": text, "keys": list(keys)}, expect=204)

    def screen(self, sid: str, tid: str) -> dict:
        return self.call("GET", f"/api/v1/sandboxes/{sid}/terminals/{tid}/screen", expect=200)[1]

    def output(self, sid: str, tid: str, since: int = 0, max_bytes: int = 1 << 20) -> dict:
        path = f"/api/v1/sandboxes/{sid}/terminals/{tid}/screen?mode=output&since={since}&max_bytes={max_bytes}"
        return self.call("GET", path, expect=200)[1]

    def info(self, sid: str, tid: str) -> dict:
        return self.call("GET", f"/api/v1/sandboxes/{sid}/terminals/{tid}", expect=200)[1]

    def wait_screen(self, sid: str, tid: str, needle: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen(sid, tid)
            if needle in s["text"]:
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not on screen after {timeout}s:\n{s['text']}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def rest(daemon) -> Rest:
    return Rest(daemon.port)


class Client:
    """One WebSocket client of a terminal: collects output by offset and control messages."""

    def __init__(self, port: int, sid: str, tid: str, token: str | None = None, since: int | None = None,
                 size: tuple[int, int] | None = None, name: str = "test", bearer: bool = True, query: str = ""):
        path = f"/api/v1/sandboxes/{sid}/terminals/{tid}/ws"
        params = [p for p in (f"token={token}" if token else "", query) if p]
        if params:
            path += "?" + "&".join(params)
        headers = auth(port) if bearer and not token else {}
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, max_size=None)
        hello = {"type": "hello", "since": since, "name": name}
        if size:
            hello.update(cols=size[0], rows=size[1])
        self.ws.send(json.dumps(hello))
        self.control: list[dict] = []
        self.data = bytearray()
        self.end = 0
        self.hello = self._next_control("hello")
        self.end = self.hello["offset"]
        self.start = self.end  # offset of data[0]

    def _take(self, m) -> None:
        if isinstance(m, bytes):
            offset = int.from_bytes(m[:8], "big")
            assert offset == self.end, f"output frame at {offset}, expected {self.end} (a gap or a duplicate)"
            self.data += m[8:]
            self.end = offset + len(m) - 8
        else:
            msg = json.loads(m)
            self.control.append(msg)
            if msg["type"] == "gap":
                self.end = msg["to"]
                self.data.clear()
                self.start = self.end
            if msg["type"] == "seed":
                self.end = msg["offset"]
                self.start = self.end

    def _next_control(self, kind: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.control:
                if m["type"] == kind:
                    self.control.remove(m)
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind!r} message within {timeout}s; got {self.control}")
            try:
                self._take(self.ws.recv(timeout=left))
            except TimeoutError:
                pass

    def pump(self, timeout: float = 0.3) -> None:
        """Takes what arrives until nothing has for `timeout` seconds."""
        while True:
            try:
                self._take(self.ws.recv(timeout=timeout))
            except TimeoutError:
                return

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not received in {timeout}s; tail {bytes(self.data[-300:])!r}")
            try:
                self._take(self.ws.recv(timeout=left))
            except TimeoutError:
                pass

    def wait_control(self, kind: str, timeout: float = 20.0) -> dict:
        return self._next_control(kind, timeout)

    def close(self) -> None:
        self.ws.close()
