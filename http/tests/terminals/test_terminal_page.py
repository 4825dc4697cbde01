"""The terminal page in a real headless Chromium, driven over the DevTools protocol, beside an
agent on MCP (the Python `mcp` client over streamable HTTP): what a person types in the page
the agent reads on the screen model, what the agent types the page's xterm shows, and a
read-only viewer's keys go nowhere."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from websockets.sync.client import connect

from conftest import auth

CHROMIUM = shutil.which("chromium")


class Page:
    """One Chromium tab over CDP (the few methods the test needs)."""

    def __init__(self, ws_url: str):
        self.ws = connect(ws_url, max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv(timeout=30))
            if m.get("id") == i:
                assert "error" not in m, f"{method}: {m['error']}"
                return m.get("result", {})

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(expr)
            if v:
                return v
            assert time.monotonic() < deadline, f"page: {expr} stayed falsy; buffer:\n{self.buffer()}"
            time.sleep(0.1)

    def buffer(self) -> str:
        return self.eval("(() => { const b = coppice.term.buffer.active; const out = [];"
                         " for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
                         " return out.join('\\n'); })()")

    def type(self, text: str) -> None:
        self.eval("coppice.term.focus()")
        self.call("Input.insertText", text=text)

    def enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                      windowsVirtualKeyCode=13, nativeVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    profile = tempfile.mkdtemp(prefix="coppice-chromium-")
    p = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.monotonic() + 60
    while port is None and time.monotonic() < deadline:
        line = p.stderr.readline()
        m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if m:
            port = int(m.group(1))
    assert port, "chromium did not start its DevTools endpoint"
    try:
        yield port
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(cdp_port: int, url: str) -> Page:
    req = urllib.request.Request(f"http://127.0.0.1:{cdp_port}/json/new?{url}", method="PUT")
    target = json.load(urllib.request.urlopen(req, timeout=30))
    page = Page(target["webSocketDebuggerUrl"])
    page.wait("window.coppice && window.coppice.connected")
    return page


async def call(c: Client, tool: str, args: dict) -> dict:
    r = await c.call_tool(tool, args)
    text = " ".join(getattr(x, "text", "") for x in r.content)
    assert not r.is_error, f"{tool}({args}): {text}"
    return r.structured_content


def test_a_person_in_the_browser_and_an_agent_on_mcp_share_a_terminal(daemon, browser):
    async def run():
        hc = httpx2.AsyncClient(headers=auth(daemon.port), timeout=120)
        async with Client(streamable_http_client(f"http://127.0.0.1:{daemon.port}/mcp", http_client=hc)) as c:
            t = await call(c, "terminal_open", {"cmd": "PS1='$ ' exec bash --norc --noprofile", "cols": 100, "rows": 30})
            sid, tid = t["sandbox_id"], t["id"]
            await call(c, "terminal_wait_for", {"terminal_id": tid, "pattern": r"^\$$"})
            writer = await call(c, "terminal_share", {"terminal_id": tid, "role": "writer"})
            viewer = await call(c, "terminal_share", {"terminal_id": tid})
            assert viewer["role"] == "viewer" and writer["token"] != viewer["token"]
            assert writer["url"].startswith(f"http://127.0.0.1:{daemon.port}/terminals/{tid}?token=")
            page = await asyncio.to_thread(open_page, browser, writer["url"])
            # The person types in the page; the agent reads it off the screen model.
            await asyncio.to_thread(page.type, "echo hi-from-$((0+1))-browser")
            await asyncio.to_thread(page.enter)
            found = await call(c, "terminal_wait_for", {"terminal_id": tid, "pattern": "hi-from-1-browser"})
            assert "hi-from-1-browser" in found["screen"]["text"]
            # The agent types; the page's xterm shows it.
            await call(c, "terminal_send", {"terminal_id": tid, "text": "printf 'hi-from-%s\\n' agent", "keys": ["Enter"]})
            await asyncio.to_thread(page.wait, "(() => { const b = coppice.term.buffer.active; for (let i = 0; i < b.length; i++)"
                                    " if (b.getLine(i).translateToString(true) === 'hi-from-agent') return true; return false; })()")
            # A viewer's page: it sees the same screen, who is attached, and its keys go nowhere.
            vpage = await asyncio.to_thread(open_page, browser, f"http://127.0.0.1:{daemon.port}{viewer['page_path']}")
            await asyncio.to_thread(vpage.wait, "document.getElementById('clients').textContent.startsWith('2 attached')")
            assert "read-only" in await asyncio.to_thread(vpage.eval, "document.getElementById('role').textContent")
            await asyncio.to_thread(vpage.wait, "coppice.term.buffer.active.getLine(0) !== undefined")
            await asyncio.to_thread(vpage.type, "echo viewer-typed")
            await asyncio.to_thread(vpage.enter)
            await call(c, "terminal_send", {"terminal_id": tid, "text": "echo done-$((3*3))", "keys": ["Enter"]})
            await call(c, "terminal_wait_for", {"terminal_id": tid, "pattern": "done-9"})
            screen = await call(c, "terminal_read", {"terminal_id": tid})
            assert "viewer-typed" not in screen["text"], screen["text"]
            vbuf = await asyncio.to_thread(vpage.buffer)
            assert "hi-from-agent" in vbuf and "done-9" in vbuf, vbuf
            listed = await call(c, "terminal_list", {})
            mine = [x for x in listed["terminals"] if x["id"] == tid][0]
            assert sorted(x["role"] for x in mine["clients"]) == ["viewer", "writer"], mine
            # A wait that times out says so and shows the screen's last lines.
            r = await c.call_tool("terminal_wait_for", {"terminal_id": tid, "pattern": "never-shows", "timeout_secs": 1})
            text = " ".join(getattr(x, "text", "") for x in r.content)
            assert r.is_error and "did not show" in text and "done-9" in text, text
            # Raw output since an offset, and closing.
            raw = await call(c, "terminal_read", {"terminal_id": tid, "mode": "output", "since": 0})
            assert "hi-from-agent" in raw["text"] and raw["next_offset"] == mine["output_offset"] or raw["next_offset"] >= mine["output_offset"]
            await call(c, "terminal_close", {"terminal_id": tid})
            await asyncio.to_thread(page.wait, "coppice.exit !== null")
            r = await c.call_tool("terminal_send", {"terminal_id": tid, "text": "x"})
            assert r.is_error and "ended" in " ".join(getattr(x, "text", "") for x in r.content)
            r = await c.call_tool("terminal_read", {"terminal_id": "term-missing", "sandbox_id": sid})
            assert r.is_error and "term-missing" in " ".join(getattr(x, "text", "") for x in r.content)
    asyncio.run(run())
