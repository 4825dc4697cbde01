#!/usr/bin/env python3
"""End-to-end tests of the browser tools: a real headless Chromium inside a real sandbox,
driven over MCP with the official Python client (stdio, `coppice-mcp` joining the daemon).

The pages are served inside the sandbox by Python's http.server on localhost:8000 (the browser
runs in the sandbox and sees its servers there): a form with every input kind, dialogs, a file
input, a second page, console messages, requests, a hover and a drag target. Then bad input: a
stale ref, an unresolvable name, a script that never returns, a crashed renderer. Then an
external Playwright (PyPI `playwright`, no browser download) attaching over the daemon's CDP
endpoint to the same in-sandbox browser.

Usage: python3 mcp/tests/test_browser.py [--coppice target/release/coppice]
Needs root and no other `coppice serve` on the host. Ends with "N passed, M failed".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from mcp import Client
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "rigs"))
from common import Daemon  # noqa: E402

import cases  # noqa: E402
from cases import case, check, failed  # noqa: E402

SITE = "/home/user/site"
BASE = "http://localhost:8000"

INDEX = """<!doctype html>
<html><head><title>Coppice test page</title></head><body>
<h1>Browser test</h1>
<a href="/second.html">Second page</a>
<p id="out">nothing yet</p>
<button onclick="document.getElementById('out').textContent='clicked ' + (++window.n || (window.n=1))">Press me</button>
<button onclick="alert('hello from the page')">Alert</button>
<button onclick="document.getElementById('out').textContent='prompted ' + prompt('Your name?')">Ask</button>
<div id="hover" onmouseover="this.textContent='hovered'" style="width:200px;height:30px">hover here</div>
<div id="src" draggable="true" ondragstart="event.dataTransfer.setData('text/plain','moved')" style="width:100px;height:30px;background:#ccc">drag me</div>
<div id="dst" ondragover="event.preventDefault()" ondrop="event.preventDefault();this.textContent='dropped ' + event.dataTransfer.getData('text/plain')" style="width:100px;height:30px;background:#eee">drop here</div>
<form onsubmit="event.preventDefault(); document.getElementById('out').textContent='submitted ' + document.getElementById('name').value">
  <label>Name <input id="name" type="text"></label>
  <label>Notes <textarea id="notes"></textarea></label>
  <label><input id="agree" type="checkbox"> Agree</label>
  <label><input id="red" type="radio" name="color" value="red"> Red</label>
  <label><input id="blue" type="radio" name="color" value="blue"> Blue</label>
  <label>Size <select id="size"><option value="s">Small</option><option value="m">Medium</option><option value="l">Large</option></select></label>
  <label>Level <input id="level" type="range" min="0" max="10" value="2"></label>
  <label>Upload <input id="file" type="file"></label>
  <button type="submit">Send</button>
</form>
<script>
console.log('page ready');
console.warn('a warning');
console.error('an error');
fetch('/missing.json');
setTimeout(() => { const p = document.createElement('p'); p.textContent = 'late arrival'; document.body.appendChild(p); }, 1500);
</script>
</body></html>
"""

SECOND = """<!doctype html><html><head><title>Second</title></head><body>
<h1>Second page</h1><a href="/index.html">Back home</a></body></html>
"""


def text_of(r) -> str:
    return "\n".join(getattr(c, "text", "") for c in r.content)


async def ok(c: Client, tool: str, args: dict) -> str:
    r = await c.call_tool(tool, args)
    text = text_of(r)
    check(not r.is_error, f"{tool}({args}) failed: {text}")
    return text


async def err(c: Client, tool: str, args: dict) -> str:
    r = await c.call_tool(tool, args)
    text = text_of(r)
    check(bool(r.is_error), f"{tool}({args}) should have failed, got: {text[:500]}")
    return text


def ref(snapshot: str, pattern: str) -> str:
    """The ref of the first snapshot line matching `pattern` (a regex)."""
    for line in snapshot.splitlines():
        if re.search(pattern, line):
            m = re.search(r"\[ref=(e\d+)\]", line)
            if m:
                return m.group(1)
    raise AssertionError(f"no line matching {pattern!r} with a ref in:\n{snapshot}")


async def evaluate(c: Client, sid: str, function: str) -> object:
    text = await ok(c, "browser_evaluate", {"sandbox_id": sid, "function": function})
    m = re.search(r"### Result\n(.*?)\n\n###", text, re.S)
    check(m is not None, f"no result section in {text[:300]}")
    return json.loads(m.group(1))


async def t_tools_listed(c: Client, sid: str) -> None:
    names = {t.name for t in (await c.list_tools()).tools}
    want = {"browser_navigate", "browser_navigate_back", "browser_snapshot", "browser_find",
            "browser_click", "browser_hover", "browser_drag", "browser_type", "browser_fill_form",
            "browser_select_option", "browser_press_key", "browser_file_upload",
            "browser_handle_dialog", "browser_evaluate", "browser_take_screenshot",
            "browser_console_messages", "browser_network_requests", "browser_wait_for",
            "browser_resize", "browser_tabs", "browser_close", "browser_mouse_click_xy",
            "browser_mouse_move_xy", "browser_mouse_drag_xy", "browser_mouse_down",
            "browser_mouse_up", "browser_mouse_wheel", "browser_pdf_save"}
    check(want <= names, f"missing: {sorted(want - names)}")


async def t_navigate_and_snapshot(c: Client, sid: str) -> None:
    text = await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/index.html"})
    check(f"- Page URL: {BASE}/index.html" in text, text[:400])
    r = await c.call_tool("browser_snapshot", {"sandbox_id": sid})
    sc = r.structured_content
    check(sc["sandbox_id"] == sid and sc["url"] == f"{BASE}/index.html" and "heading" in sc["snapshot"], f"{sc}")
    check("- Page Title: Coppice test page" in text, text[:400])
    check(re.search(r'- heading "Browser test" \[level=1\] \[ref=e\d+\]', text) is not None, text)
    check(re.search(r'- link "Second page" \[ref=e\d+\]:\n\s+- /url: http://localhost:8000/second.html', text)
          is not None, text)
    check(re.search(r'- checkbox "Agree" \[ref=e\d+\]', text) is not None, text)
    check("- Console: 1 errors, 1 warnings" in text or "- Console: 2 errors, 1 warnings" in text, text[:600])
    # Refs are stable from one snapshot to the next.
    again = await ok(c, "browser_snapshot", {"sandbox_id": sid})
    check(ref(text, r'button "Press me"') == ref(again, r'button "Press me"'), "refs changed")
    sub = await ok(c, "browser_snapshot", {"sandbox_id": sid, "target": ref(again, r"- form")})
    check("Browser test" not in sub.split("### Snapshot")[1] and "textbox" in sub, sub)
    found = await ok(c, "browser_find", {"sandbox_id": sid, "text": "press ME"})
    check('button "Press me"' in found, found)


async def t_click_and_hover(c: Client, sid: str) -> None:
    snap = await ok(c, "browser_snapshot", {"sandbox_id": sid})
    text = await ok(c, "browser_click", {"sandbox_id": sid, "element": "Press me button",
                                         "target": ref(snap, r'button "Press me"')})
    check("clicked 1" in text, text)
    text = await ok(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'button "Press me"'),
                                         "doubleClick": True})
    check("clicked 3" in text, text)
    text = await ok(c, "browser_hover", {"sandbox_id": sid, "target": ref(snap, r"hover here")})
    check("hovered" in text, text)
    text = await ok(c, "browser_drag", {"sandbox_id": sid, "startTarget": ref(snap, r"drag me"),
                                        "endTarget": ref(snap, r"drop here")})
    check("dropped moved" in text, text)


async def t_forms(c: Client, sid: str) -> None:
    snap = await ok(c, "browser_snapshot", {"sandbox_id": sid})
    await ok(c, "browser_fill_form", {"sandbox_id": sid, "fields": [
        {"name": "Notes", "type": "textbox", "target": ref(snap, r'textbox "Notes"'), "value": "two\nlines"},
        {"name": "Agree", "type": "checkbox", "target": ref(snap, r'checkbox "Agree"'), "value": "true"},
        {"name": "Blue", "type": "radio", "target": ref(snap, r'radio "Blue"'), "value": "true"},
        {"name": "Size", "type": "combobox", "target": ref(snap, r'combobox "Size"'), "value": "Large"},
        {"name": "Level", "type": "slider", "target": ref(snap, r'slider "Level"'), "value": "7"},
    ]})
    values = await evaluate(c, sid, "() => [notes.value, agree.checked, blue.checked, size.value, level.value]")
    check(values == ["two\nlines", True, True, "l", "7"], f"{values}")
    text = await ok(c, "browser_select_option", {"sandbox_id": sid, "target": ref(snap, r'combobox "Size"'),
                                                 "values": ["m"]})
    check(await evaluate(c, sid, "() => size.value") == "m", text)
    text = await ok(c, "browser_type", {"sandbox_id": sid, "target": ref(snap, r'textbox "Name"'),
                                        "text": "Ada", "submit": True})
    check("submitted Ada" in text, text)
    await ok(c, "browser_type", {"sandbox_id": sid, "target": ref(snap, r'textbox "Name"'),
                                 "text": "Bob", "slowly": True})
    # Key by key appends, as playwright-mcp's pressSequentially does.
    check(await evaluate(c, sid, "() => document.getElementById('name').value") == "AdaBob", "slowly")
    await ok(c, "browser_press_key", {"sandbox_id": sid, "key": "Backspace"})
    await ok(c, "browser_press_key", {"sandbox_id": sid, "key": "x"})
    check(await evaluate(c, sid, "() => document.getElementById('name').value") == "AdaBox", "keys")
    await ok(c, "browser_press_key", {"sandbox_id": sid, "key": "Control+a"})
    await ok(c, "browser_press_key", {"sandbox_id": sid, "key": "Z"})
    check(await evaluate(c, sid, "() => document.getElementById('name').value") == "Z", "chord")
    e = await err(c, "browser_press_key", {"sandbox_id": sid, "key": "Hyper+q"})
    check("unknown modifier" in e, e)


async def t_dialogs_and_files(c: Client, sid: str) -> None:
    snap = await ok(c, "browser_snapshot", {"sandbox_id": sid})
    text = await ok(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'button "Alert"')})
    check('["alert" dialog with message "hello from the page"]' in text, text)
    e = await err(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'button "Press me"')})
    check("browser_handle_dialog" in e, e)
    text = await ok(c, "browser_handle_dialog", {"sandbox_id": sid, "accept": True})
    check("### Snapshot" in text and "Modal state" not in text, text[:500])
    await ok(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'button "Ask"')})
    text = await ok(c, "browser_handle_dialog", {"sandbox_id": sid, "accept": True, "promptText": "Grace"})
    check("prompted Grace" in text, text)
    # A file chooser: the path is the sandbox's.
    await ok(c, "files_write", {"sandbox_id": sid, "path": "/home/user/upload.txt", "content": "hi"})
    text = await ok(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'Upload')})
    check("[File chooser]" in text, text)
    e = await err(c, "browser_file_upload", {"sandbox_id": sid, "paths": ["/home/user/nope.txt"]})
    check("nope.txt" in e, e)
    await ok(c, "browser_file_upload", {"sandbox_id": sid, "paths": ["/home/user/upload.txt"]})
    check(await evaluate(c, sid, "() => document.getElementById('file').files[0].name") == "upload.txt", "file")
    e = await err(c, "browser_file_upload", {"sandbox_id": sid, "paths": ["/home/user/upload.txt"]})
    check("no file chooser" in e, e)


async def t_console_network_wait(c: Client, sid: str) -> None:
    text = await ok(c, "browser_console_messages", {"sandbox_id": sid, "level": "warning"})
    check("[ERROR] an error" in text and "[WARNING] a warning" in text and "page ready" not in text, text)
    text = await ok(c, "browser_console_messages", {"sandbox_id": sid})
    check("[INFO] page ready" in text, text)
    text = await ok(c, "browser_network_requests", {"sandbox_id": sid})
    check(f"[GET] {BASE}/index.html => [200]" in text, text)
    check(f"[GET] {BASE}/missing.json => [404]" in text, text)
    text = await ok(c, "browser_network_requests", {"sandbox_id": sid, "filter": "missing"})
    check("index.html" not in text.split("### Page")[0], text)
    await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/index.html"})
    text = await ok(c, "browser_wait_for", {"sandbox_id": sid, "text": "late arrival", "time": 10})
    check("late arrival" in text, text)
    e = await err(c, "browser_wait_for", {"sandbox_id": sid, "text": "never there", "time": 1})
    check("did not appear" in e, e)


async def t_screenshot_pdf_resize(c: Client, sid: str) -> None:
    r = await c.call_tool("browser_take_screenshot", {"sandbox_id": sid})
    check(not r.is_error, text_of(r))
    images = [x for x in r.content if getattr(x, "type", "") == "image"]
    check(len(images) == 1 and getattr(images[0], "mime_type", getattr(images[0], "mimeType", None)) == "image/png", f"{r.content}")
    check(base64.b64decode(images[0].data)[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    snap = await ok(c, "browser_snapshot", {"sandbox_id": sid})
    r = await c.call_tool("browser_take_screenshot", {"sandbox_id": sid, "type": "jpeg",
                                                       "target": ref(snap, r'button "Press me"')})
    data = base64.b64decode([x for x in r.content if getattr(x, "type", "") == "image"][0].data)
    check(data[:2] == b"\xff\xd8", "not a JPEG")
    text = await ok(c, "browser_pdf_save", {"sandbox_id": sid, "filename": "/tmp/page.pdf"})
    check("/tmp/page.pdf" in text, text)
    head = await ok(c, "commands_run", {"sandbox_id": sid, "cmd": "head -c 5 /tmp/page.pdf"})
    check("%PDF-" in head, head)
    await ok(c, "browser_resize", {"sandbox_id": sid, "width": 800, "height": 600})
    check(await evaluate(c, sid, "() => [innerWidth, innerHeight]") == [800, 600], "resize")
    # Coordinates: click the button where it is drawn.
    box = await evaluate(c, sid, "() => { const r = document.querySelector('button').getBoundingClientRect();"
                                 " return [r.x + r.width / 2, r.y + r.height / 2]; }")
    before = await evaluate(c, sid, "() => document.getElementById('out').textContent")
    await ok(c, "browser_mouse_click_xy", {"sandbox_id": sid, "x": box[0], "y": box[1]})
    after = await evaluate(c, sid, "() => document.getElementById('out').textContent")
    check(after.startswith("clicked") and after != before, f"{before} -> {after}")
    await ok(c, "browser_mouse_wheel", {"sandbox_id": sid, "deltaX": 0, "deltaY": 300})


async def t_tabs_and_history(c: Client, sid: str) -> None:
    snap = await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/index.html"})
    text = await ok(c, "browser_click", {"sandbox_id": sid, "target": ref(snap, r'link "Second page"')})
    check("- Page URL: http://localhost:8000/second.html" in text, text[:300])
    text = await ok(c, "browser_navigate_back", {"sandbox_id": sid})
    check("- Page URL: http://localhost:8000/index.html" in text, text[:300])
    text = await ok(c, "browser_tabs", {"sandbox_id": sid, "action": "new", "url": f"{BASE}/second.html"})
    check("### Open tabs" in text and "(current) [Second]" in text, text)
    text = await ok(c, "browser_tabs", {"sandbox_id": sid, "action": "select", "index": 0})
    check("0: (current) [Coppice test page]" in text, text)
    text = await ok(c, "browser_tabs", {"sandbox_id": sid, "action": "close", "index": 1})
    check("### Open tabs" not in text, text)
    e = await err(c, "browser_tabs", {"sandbox_id": sid, "action": "select", "index": 5})
    check("no tab 5" in e, e)


async def t_bad_input(c: Client, sid: str) -> None:
    snap = await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/index.html"})
    stale = ref(snap, r'button "Press me"')
    await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/second.html"})
    e = await err(c, "browser_click", {"sandbox_id": sid, "target": stale})
    check(f"Ref {stale} not found in the current page snapshot" in e, e)
    e = await err(c, "browser_navigate", {"sandbox_id": sid, "url": "http://no-such-host.invalid/"})
    check("ERR_NAME_NOT_RESOLVED" in e, e)
    await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/second.html"})
    e = await err(c, "browser_evaluate", {"sandbox_id": sid, "function": "() => { while (true) {} }"})
    check("terminated" in e, e)
    check(await evaluate(c, sid, "() => 6 * 7") == 42, "usable after a hung script")
    e = await err(c, "browser_evaluate", {"sandbox_id": sid, "function": "() => { throw new Error('boom') }"})
    check("boom" in e, e)
    # A renderer that crashes: the tab says so, and a navigation brings it back.
    await c.call_tool("browser_navigate", {"sandbox_id": sid, "url": "chrome://crash"})
    e = await err(c, "browser_snapshot", {"sandbox_id": sid})
    check("crashed" in e, e)
    text = await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/second.html"})
    check('heading "Second page"' in text, text)
    e = await err(c, "browser_navigate", {"sandbox_id": "sb-nope", "url": BASE})
    check("not found" in e, e)


async def t_playwright_over_cdp(c: Client, daemon: Daemon, sid: str) -> None:
    """An external Playwright drives the same in-sandbox browser the MCP tools drive."""
    from playwright.async_api import async_playwright

    base = f"http://127.0.0.1:{daemon.port}/api/v1/sandboxes/{sid}/cdp"
    headers = {"Authorization": f"Bearer {daemon.token()}"}
    await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/index.html"})
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(base, headers=headers)
        pages = [p for ctx in browser.contexts for p in ctx.pages]
        check(any(p.url == f"{BASE}/index.html" for p in pages), f"{[p.url for p in pages]}")
        page = next(p for p in pages if p.url == f"{BASE}/index.html")
        await page.click("text=Press me")
        check(await page.text_content("#out") == "clicked 1", "playwright click")
        # The tools see what Playwright did, on the same page.
        snap = await ok(c, "browser_snapshot", {"sandbox_id": sid})
        check("clicked 1" in snap, snap)
        await browser.close()
    # Without the bearer token: refused.
    try:
        async with async_playwright() as pw:
            await pw.chromium.connect_over_cdp(base, timeout=10000)
        raise AssertionError("connected without a token")
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - Playwright's error for the refused discovery
        check("401" in str(e) or "Unauthorized" in str(e) or "unauthorized" in str(e), str(e))


async def t_close_and_restart(c: Client, sid: str) -> None:
    await ok(c, "browser_close", {"sandbox_id": sid})
    ps = await ok(c, "commands_run", {"sandbox_id": sid, "cmd": "pgrep -c chromium || true"})
    check(json.loads(ps)["stdout"].strip() == "0", ps)
    text = await ok(c, "browser_navigate", {"sandbox_id": sid, "url": f"{BASE}/second.html"})
    check('heading "Second page"' in text, text)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coppice", default=str(REPO / "target/release/coppice"))
    args = ap.parse_args()
    coppice = Path(args.coppice).resolve()
    mcp_bin = coppice.parent / "coppice-mcp"
    tmp = Path(tempfile.mkdtemp(prefix="coppice-browser-test-"))
    daemon = Daemon(coppice, tmp / "state", pool_size=0, no_network=False, log_path=tmp / "daemon.log")
    daemon.start()
    try:
        params = StdioServerParameters(command=str(mcp_bin), args=[],
                                       env={"COPPICE_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin"})
        async with Client(params) as c:
            made = await c.call_tool("sandbox_create", {"timeout_secs": 900, "memory": "1G"})
            sid = made.structured_content["sandbox_id"]
            for name, body in (("index.html", INDEX), ("second.html", SECOND)):
                await ok(c, "files_write", {"sandbox_id": sid, "path": f"{SITE}/{name}", "content": body})
            await ok(c, "commands_start", {"sandbox_id": sid, "cmd": f"cd {SITE} && exec python3 -m http.server 8000"})
            await ok(c, "commands_run", {"sandbox_id": sid, "cmd":
                     "for i in $(seq 100); do curl -sf localhost:8000/ >/dev/null && exit 0; sleep 0.1; done; exit 1"})
            await case("every playwright-mcp core tool and the vision and pdf groups are listed", t_tools_listed, c, sid)
            await case("navigate: page section and an ARIA snapshot with stable refs; find", t_navigate_and_snapshot, c, sid)
            await case("click, double click, hover, drag and drop", t_click_and_hover, c, sid)
            await case("fill_form (every kind), select_option, type (fill, submit, slowly), press_key", t_forms, c, sid)
            await case("dialogs (alert, prompt) hold the page until handled; file chooser", t_dialogs_and_files, c, sid)
            await case("console messages by level, network requests, wait_for", t_console_network_wait, c, sid)
            await case("screenshots (png, jpeg of an element), pdf, resize, coordinates", t_screenshot_pdf_resize, c, sid)
            await case("links, back, tabs new/select/close", t_tabs_and_history, c, sid)
            await case("bad input: stale ref, bad host, a hung script, a crashed renderer", t_bad_input, c, sid)
            await case("an external Playwright over the CDP endpoint drives the same browser", t_playwright_over_cdp,
                       c, daemon, sid)
            await case("browser_close ends Chromium; the next call starts it again", t_close_and_restart, c, sid)
    finally:
        if failed:
            print(f"daemon log tail:\n{daemon.log_tail(60)}")
            for log in sorted((tmp / "state" / "sandboxes").glob("*/agent.log")):
                print(f"== {log}\n{log.read_text(errors='replace')[-3000:]}")
        daemon.stop()
        daemon.cleanup()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{cases.passed} passed, {len(failed)} failed")
    if failed:
        print("failed: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
