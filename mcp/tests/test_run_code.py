#!/usr/bin/env python3
"""End-to-end tests of run_code: real Jupyter kernels (ipykernel, bash_kernel) in real sandboxes.

Starts a private daemon (temp state dir, pool of 1 so the pooled sandbox's kernel warm-up is
exercised), then drives:
- the E2B code-interpreter wire format, `POST /execute` NDJSON and the `/contexts` routes, through
  the daemon's raw agent proxy (`/api/v1/sandboxes/{id}/envd/...`, what the E2B port-49999
  proxy forwards unchanged);
- the MCP tools run_code and code_context_* with the official Python client over stdio
  (`coppice-mcp` joining the daemon), progress notifications and cancellation included.

Usage: python3 mcp/tests/test_run_code.py [--coppice target/release/coppice]
Needs root and no other `coppice serve` on the host. Ends with "N passed, M failed".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "rigs"))
from common import Daemon, auth  # noqa: E402

import cases  # noqa: E402
from cases import case, check, failed  # noqa: E402


# ------------------------------------------------------------------ the E2B wire format


class Sandbox:
    """One sandbox and raw HTTP to its agent's code-interpreter routes."""

    def __init__(self, daemon: Daemon, sid: str):
        self.daemon = daemon
        self.sid = sid

    def conn(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=timeout)

    def path(self, rest: str) -> str:
        return f"/api/v1/sandboxes/{self.sid}/envd/{rest}"

    def request(self, method: str, rest: str, body=None) -> tuple[int, bytes]:
        c = self.conn()
        data = None if body is None else json.dumps(body).encode()
        c.request(method, self.path(rest), body=data,
                  headers={"Content-Type": "application/json", **auth(self.daemon.port)})
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, out

    def execute_lines(self, body: dict, on_line=None) -> list[tuple[float, dict]]:
        """POSTs /execute; returns (arrival time, parsed line) for every NDJSON line, checking
        the framing: no blank lines, every line JSON, end_of_execution last."""
        c = self.conn()
        c.request("POST", self.path("execute"), body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json", **auth(self.daemon.port)})
        r = c.getresponse()
        if r.status != 200:
            raise AssertionError(f"/execute {body}: {r.status} {r.read()[:300]!r}")
        lines = []
        while True:
            raw = r.readline()
            if not raw:
                break
            check(raw.endswith(b"\n") and raw.strip() != b"", f"blank or unterminated line: {raw!r}")
            line = json.loads(raw)
            lines.append((time.monotonic(), line))
            if on_line:
                on_line(line)
        c.close()
        check(lines and lines[-1][1]["type"] == "end_of_execution", f"end_of_execution last: {lines[-3:]}")
        check(sum(1 for _, l in lines if l["type"] == "end_of_execution") == 1, "one end_of_execution")
        return lines

    def execute(self, code: str, **kw) -> dict:
        """Runs code; returns an E2B-SDK-like Execution built from the lines."""
        body = {"code": code, "context_id": None, "language": None, "env_vars": None}
        body.update(kw)
        ex = {"stdout": "", "stderr": "", "results": [], "error": None, "execution_count": None}
        for _, l in self.execute_lines(body):
            t = l["type"]
            if t == "stdout":
                check("timestamp" in l, f"stdout timestamp: {l}")
                ex["stdout"] += l["text"]
            elif t == "stderr":
                ex["stderr"] += l["text"]
            elif t == "result":
                ex["results"].append(l)
            elif t == "error":
                ex["error"] = l
            elif t == "number_of_executions":
                ex["execution_count"] = l["execution_count"]
        return ex


def main_text(ex: dict):
    return next((r.get("text") for r in ex["results"] if r.get("is_main_result")), None)


async def t_state_and_format(sb: Sandbox) -> None:
    a = sb.execute("x = 1")
    check(a["error"] is None, f"x = 1: {a}")
    b = sb.execute("print(x)")
    check(b["stdout"] == "1\n", f"state persists: {b}")
    check(b["execution_count"] == a["execution_count"] + 1, f"execution count: {a} {b}")
    c = sb.execute("'abc'")
    check(main_text(c) == "abc", f"string result unquoted as E2B: {c}")
    d = sb.execute("import sys; print('to err', file=sys.stderr); 6*7")
    check(d["stderr"] == "to err\n" and main_text(d) == "42", f"stderr and result: {d}")


async def t_rich(sb: Sandbox) -> None:
    df = sb.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    main = [r for r in df["results"] if r["is_main_result"]]
    check(len(main) == 1 and "<table" in main[0].get("html", ""), f"DataFrame → html: {df}")
    check("text" in main[0], "DataFrame also has text/plain")
    fig = sb.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')")
    pngs = [r for r in fig["results"] if "png" in r]
    check(pngs, f"matplotlib figure → image/png without savefig: {fig}")
    png = base64.b64decode(pngs[0]["png"])
    check(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, "a real PNG")
    check(not pngs[0]["is_main_result"], "a figure is display_data, not the main result")
    many = sb.execute(
        "from IPython.display import display, HTML, Markdown, JSON, Latex, SVG\n"
        "display(HTML('<b>one</b>'))\n"
        "display(Markdown('**two**'))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"><circle r=\"1\"/></svg>'))\n"
        "display({'application/json': {'k': [1, 2]}, 'text/plain': 'json'}, raw=True)\n"
        "'last'"
    )
    res = many["results"]
    check(len(res) == 6, f"five displays and a result: {res}")
    check(res[0].get("html") == "<b>one</b>", f"html display: {res[0]}")
    check(res[1].get("markdown") == "**two**", f"markdown display: {res[1]}")
    check(res[2].get("latex") == "$x^2$", f"latex display: {res[2]}")
    check("<circle" in res[3].get("svg", ""), f"svg display: {res[3]}")
    check(res[4].get("json") == {"k": [1, 2]}, f"json display: {res[4]}")
    check([r["is_main_result"] for r in res] == [False] * 5 + [True], "only the last is main")
    check(main_text(many) == "last", "main result text")


async def t_error(sb: Sandbox) -> None:
    e = sb.execute("def f():\n    return 1 / 0\nprint('before')\nf()")
    check(e["stdout"] == "before\n", f"output before the error: {e}")
    err = e["error"]
    check(err and err["name"] == "ZeroDivisionError" and "division by zero" in err["value"], f"error: {err}")
    tb = re.sub(r"\x1b\[[0-9;]*m", "", err["traceback"])
    check("return 1 / 0" in tb and "ZeroDivisionError" in tb, f"traceback joined: {err['traceback']!r}")
    ok = sb.execute("print('still fine')")
    check(ok["stdout"] == "still fine\n" and ok["error"] is None, "context usable after an error")


async def t_streaming_and_keepalive(sb: Sandbox) -> None:
    t0 = time.monotonic()
    lines = sb.execute_lines({"code": "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(1)\n"
                                      "time.sleep(6)\nprint('done')"})
    outs = [(t - t0, l["text"]) for t, l in lines if l["type"] == "stdout"]
    check([x[1] for x in outs] == ["0\n", "1\n", "2\n", "3\n", "done\n"], f"output: {outs}")
    # Arrival spread: the first line arrived seconds before the last (not all at the end).
    check(outs[-1][0] - outs[0][0] > 5, f"output streamed while running: {outs}")
    check(any(l["type"] == "keepalive" for _, l in lines), "keepalive lines while idle (6 s without output)")


async def t_bad_input(sb: Sandbox) -> None:
    st, body = sb.request("POST", "execute", {"code": "1", "context_id": "nope"})
    check(st == 404 and body.decode() == "Context nope not found", f"unknown context: {st} {body!r}")
    st, body = sb.request("POST", "execute", {"code": "1", "language": "cobol"})
    check(st == 400 and b"cobol" in body and b"python" in body, f"unknown language: {st} {body!r}")
    st, body = sb.request("POST", "execute", {"code": "1", "language": "python", "context_id": "default"})
    check(st == 400 and b"not both" in body, f"context and language: {st} {body!r}")
    st, body = sb.request("POST", "contexts", {"language": "cobol"})
    check(st == 400, f"create unknown language: {st} {body!r}")
    st, body = sb.request("POST", "contexts", {"cwd": "/no/such/dir"})
    check(st == 400 and b"/no/such/dir" in body, f"create bad cwd: {st} {body!r}")
    st, _ = sb.request("POST", "contexts/nope/restart")
    check(st == 404, f"restart unknown: {st}")
    st, _ = sb.request("DELETE", "contexts/nope")
    check(st == 404, f"remove unknown: {st}")


async def t_contexts(sb: Sandbox) -> None:
    st, body = sb.request("POST", "contexts", {"language": "python", "cwd": "/tmp"})
    check(st == 200, f"create: {st} {body!r}")
    a = json.loads(body)
    check(a["language"] == "python" and a["cwd"] == "/tmp" and a["id"], f"context: {a}")
    st, body = sb.request("POST", "contexts", {})
    b = json.loads(body)
    check(b["cwd"] == "/home/user", f"default cwd: {b}")
    sb.execute("v = 'in a'", context_id=a["id"])
    sb.execute("v = 'in b'", context_id=b["id"])
    ra = sb.execute("import os; print(v, os.getcwd())", context_id=a["id"])
    rb = sb.execute("print(v)", context_id=b["id"])
    check(ra["stdout"] == "in a /tmp\n" and rb["stdout"] == "in b\n", f"isolated: {ra} {rb}")
    d = sb.execute("print(v)")
    check(d["error"] and d["error"]["name"] == "NameError", f"default context isolated too: {d}")
    st, body = sb.request("GET", "contexts")
    ids = [c["id"] for c in json.loads(body)]
    listed = {c["id"]: c["language"] for c in json.loads(body)}
    check(a["id"] in ids and b["id"] in ids and listed.get("default") == "python",
          f"list (the default python context too, as E2B lists it): {ids}")
    st, body = sb.request("POST", f"contexts/{a['id']}/restart")
    check(st == 200, f"restart: {st}")
    r = sb.execute("print(v)", context_id=a["id"])
    check(r["error"] and r["error"]["name"] == "NameError", f"restart clears state: {r}")
    st, _ = sb.request("DELETE", f"contexts/{b['id']}")
    check(st == 200, "remove")
    st, body = sb.request("POST", "execute", {"code": "1", "context_id": b["id"]})
    check(st == 404, f"removed context is gone: {st}")
    sb.request("DELETE", f"contexts/{a['id']}")


async def t_env_and_bash(sb: Sandbox) -> None:
    e = sb.execute("import os; print(os.environ.get('CALL_VAR'))", env_vars={"CALL_VAR": "per-call"})
    check(e["stdout"] == "per-call\n", f"env var for the call: {e}")
    e2 = sb.execute("import os; print(os.environ.get('CALL_VAR'))")
    check(e2["stdout"] == "None\n", f"env var gone after the call: {e2}")
    b1 = sb.execute("X=41; echo $((X+1)); whoami; pwd", language="bash")
    check(b1["error"] is None and b1["stdout"] == "42\nuser\n/home/user\n", f"bash kernel: {b1}")
    b2 = sb.execute("echo $X $GREETING", language="bash", env_vars={"GREETING": "hi"})
    check(b2["stdout"] == "41 hi\n", f"bash state and env: {b2}")
    st, body = sb.request("POST", "contexts", {"language": "bash"})
    check(st == 200 and json.loads(body)["language"] == "bash", f"bash context: {body!r}")
    sb.request("DELETE", f"contexts/{json.loads(body)['id']}")


# ------------------------------------------------------------------ MCP


async def call(client: Client, tool: str, args: dict, **kw):
    r = await client.call_tool(tool, args, **kw)
    text = " ".join(getattr(c, "text", "") for c in r.content)
    check(not r.is_error, f"{tool}({args}) failed: {text}")
    check(isinstance(r.structured_content, dict), f"{tool}: no structuredContent")
    return r


async def call_error(client: Client, tool: str, args: dict) -> str:
    r = await client.call_tool(tool, args)
    check(bool(r.is_error), f"{tool}({args}) should have failed, got {r.structured_content}")
    return " ".join(getattr(c, "text", "") for c in r.content)


async def t_mcp_run_code(c: Client, sid: str) -> None:
    tools = {t.name: t for t in (await c.list_tools()).tools}
    for name in ("run_code", "code_context_create", "code_context_list", "code_context_restart",
                 "code_context_remove"):
        check(name in tools and tools[name].output_schema, f"{name} listed with an output schema")
    r = await call(c, "run_code", {"sandbox_id": sid, "code": "y = 20\nprint('hello')\ny + 1"})
    s = r.structured_content
    check(s["stdout"][0]["text"] == "hello\n" and s["stdout"][0]["timestamp"], f"stdout chunks: {s}")
    check(s["results"][0]["is_main_result"] and s["results"][0]["data"]["text"] == "21", f"result: {s}")
    check(s["results"][0]["formats"] == ["text/plain"], f"formats: {s}")
    text = r.content[0].text
    check("[stdout]\nhello" in text and "[result] 21" in text, f"text content: {text}")
    fig = await call(c, "run_code", {"sandbox_id": sid, "code":
                                     "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [y, 3])"})
    images = [b for b in fig.content if getattr(b, "type", "") == "image"]
    check(len(images) == 1 and images[0].mime_type == "image/png", f"image content: {fig.content}")
    check(base64.b64decode(images[0].data).startswith(b"\x89PNG"), "image content is a PNG")
    check(any("png" in x["data"] for x in fig.structured_content["results"]), "png in structured results")
    charts = [x["data"]["chart"] for x in fig.structured_content["results"] if "chart" in x["data"]]
    check(charts and charts[0]["type"] == "bar", f"the figure's chart in structured results: {charts}")
    check([(b["label"], b["value"]) for b in charts[0]["elements"]] == [("a", 20.0), ("b", 3.0)],
          f"the chart's bars: {charts}")
    check(any("e2b/chart" in x["formats"] and "image/png" in x["formats"]
              for x in fig.structured_content["results"]), "e2b/chart beside image/png in formats")
    js = (await call(c, "run_code", {"sandbox_id": sid, "language": "js",
                                     "code": "const z = [1, 2, 3]; z.map((v) => v * 2).join(',')"})).structured_content
    check(js["results"][0]["data"]["text"] == "2,4,6", f"JavaScript on Deno's kernel: {js}")
    err = await call(c, "run_code", {"sandbox_id": sid, "code": "raise ValueError('bad value')"})
    e = err.structured_content["error"]
    check(e["name"] == "ValueError" and e["value"] == "bad value", f"error: {e}")
    check("[error] ValueError: bad value" in err.content[0].text, "error in text content")
    check("\x1b[" not in err.content[0].text, "ANSI codes stripped from the text content")


async def t_mcp_timeout(c: Client, sid: str) -> None:
    await call(c, "run_code", {"sandbox_id": sid, "code": "kept = 'yes'"})
    t0 = time.monotonic()
    r = await call(c, "run_code", {"sandbox_id": sid, "code": "while True: pass", "timeout_secs": 2})
    s = r.structured_content
    check(s["timed_out"] and s["error"]["name"] == "TimeoutError", f"timed out: {s}")
    check(time.monotonic() - t0 < 30, "the timeout interrupted the loop")
    ok = await call(c, "run_code", {"sandbox_id": sid, "code": "print(kept)"})
    check(ok.structured_content["stdout"][0]["text"] == "yes\n", f"same context usable, state kept: {ok}")


async def t_mcp_progress_and_cancel(c: Client, sid: str) -> None:
    events: list[tuple[float, float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((time.monotonic(), progress, message or ""))

    t0 = time.monotonic()
    r = await call(c, "run_code", {"sandbox_id": sid, "code":
                                   "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(1)"},
                   progress_callback=on_progress)
    check(len(r.structured_content["stdout"]) == 3, f"three chunks: {r.structured_content}")
    check(len(events) == 3 and "[stdout] tick 0" in events[0][2], f"progress notifications: {events}")
    check(events[0][0] - t0 < events[-1][0] - t0 - 1.5, f"progress arrived while running: {events}")

    # Cancel a long call: the kernel is interrupted and the context stays usable.
    await call(c, "run_code", {"sandbox_id": sid, "code": "import time\nmarker = 'before'"})
    async with anyio.create_task_group() as tg:
        async def long_call():
            try:
                await c.call_tool("run_code", {"sandbox_id": sid, "code":
                                               "import time\nfor _ in range(600): time.sleep(0.1)\nmarker = 'after'"})
            except Exception:  # noqa: BLE001 - the cancelled call may end either way
                pass
        tg.start_soon(long_call)
        await anyio.sleep(2)
        tg.cancel_scope.cancel()
    t1 = time.monotonic()
    ok = (await call(c, "run_code", {"sandbox_id": sid, "code": "print(marker)"})).structured_content
    check([x["text"] for x in ok["stdout"]] == ["before\n"], f"interrupted, state kept: {ok}")
    check(time.monotonic() - t1 < 30, "the next call did not wait for the cancelled loop")


async def t_mcp_contexts_and_kill(c: Client, sid: str) -> None:
    made = (await call(c, "code_context_create", {"sandbox_id": sid})).structured_content["context"]
    other = (await call(c, "code_context_create", {"sandbox_id": sid, "language": "bash"})).structured_content["context"]
    check(made["language"] == "python" and other["language"] == "bash", f"contexts: {made} {other}")
    await call(c, "run_code", {"sandbox_id": sid, "context_id": made["id"], "code": "z = 5"})
    listed = (await call(c, "code_context_list", {"sandbox_id": sid})).structured_content["contexts"]
    ids = {x["id"] for x in listed}
    check({made["id"], other["id"], "default"} <= ids, f"list includes defaults used: {ids}")
    # Kill the context's kernel from outside (as the sandbox user) and see it reported.
    pid = (await call(c, "run_code", {"sandbox_id": sid, "context_id": made["id"],
                                      "code": "import os; os.getpid()"})).structured_content["results"][0]["data"]["text"]
    k = await call(c, "commands_run", {"sandbox_id": sid, "cmd": f"kill -9 {pid}"})
    check(k.structured_content["exit_code"] == 0, f"kill: {k.structured_content}")
    dead = (await call(c, "run_code", {"sandbox_id": sid, "context_id": made["id"], "code": "z"})).structured_content
    check(dead["error"] and dead["error"]["name"] == "KernelDiedError" and "restart" in dead["error"]["value"],
          f"dead kernel reported: {dead}")
    again = (await call(c, "run_code", {"sandbox_id": sid, "context_id": made["id"], "code": "1"})).structured_content
    check(again["error"] and again["error"]["name"] == "KernelDiedError", f"stays dead until restarted: {again}")
    await call(c, "code_context_restart", {"sandbox_id": sid, "context_id": made["id"]})
    fresh = (await call(c, "run_code", {"sandbox_id": sid, "context_id": made["id"], "code": "print(2 + 2)"})).structured_content
    check(fresh["stdout"][0]["text"] == "4\n" and fresh["error"] is None, f"restarted: {fresh}")
    gone = (await call(c, "code_context_remove", {"sandbox_id": sid, "context_id": other["id"]})).structured_content
    check(gone["removed"], "removed")
    err = await call_error(c, "run_code", {"sandbox_id": sid, "context_id": other["id"], "code": "1"})
    check("not found" in err and "code_context_list" in err, f"unknown context error: {err}")
    err = await call_error(c, "run_code", {"sandbox_id": sid, "language": "cobol", "code": "1"})
    check("cobol" in err and "python" in err, f"unknown language error: {err}")
    err = await call_error(c, "run_code", {"sandbox_id": sid, "language": "python", "context_id": made["id"], "code": "1"})
    check("not both" in err, f"both given: {err}")
    await call(c, "code_context_remove", {"sandbox_id": sid, "context_id": made["id"]})


async def t_pooled_kernel(daemon: Daemon) -> None:
    """A sandbox taken from the warm pool already runs its default Python kernel."""
    daemon.wait_pool_full(timeout=180)
    api = daemon.api()
    made = api.create({"timeout_secs": 120})
    sid = made.get("sandbox_id") or made.get("id")
    ev, drain = api.exec_until_exit(sid, ["pgrep", "-u", "user", "-f", "ipykernel_launcher"])
    drain()
    check(ev.get("exit_code") == 0, f"the pooled sandbox's kernel runs before the first call: {ev}")
    sb = Sandbox(daemon, sid)
    r = sb.execute("1 + 1")
    check(main_text(r) == "2" and r["execution_count"] == 1, f"first call on the warm kernel: {r}")
    api.delete(sid)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coppice", default=str(REPO / "target/release/coppice"))
    args = ap.parse_args()
    coppice = Path(args.coppice).resolve()
    mcp_bin = coppice.parent / "coppice-mcp"
    tmp = Path(tempfile.mkdtemp(prefix="coppice-runcode-test-"))
    daemon = Daemon(coppice, tmp / "state", pool_size=1, no_network=False, log_path=tmp / "daemon.log")
    daemon.start()
    try:
        await case("a pooled sandbox's Python kernel is started ahead of time", t_pooled_kernel, daemon)
        api = daemon.api()
        made = api.create({"timeout_secs": 600})
        sid = made.get("sandbox_id") or made.get("id")
        sb = Sandbox(daemon, sid)
        await case("/execute: state persists, E2B line format, execution count", t_state_and_format, sb)
        await case("/execute: DataFrame → html, matplotlib → png, several displays", t_rich, sb)
        await case("/execute: an exception with name, value and traceback", t_error, sb)
        await case("/execute: output streams while running; keepalives while idle", t_streaming_and_keepalive, sb)
        await case("/execute and /contexts: bad input", t_bad_input, sb)
        await case("/contexts: create, isolate, list, restart, remove", t_contexts, sb)
        await case("/execute: per-call env vars; the bash kernel", t_env_and_bash, sb)
        params = StdioServerParameters(command=str(mcp_bin), args=[],
                                       env={"COPPICE_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin"})
        async with Client(params) as c:
            await case("MCP run_code: text, image content, structured results, errors", t_mcp_run_code, c, sid)
            await case("MCP run_code: a timeout interrupts `while True: pass`, context usable", t_mcp_timeout, c, sid)
            await case("MCP run_code: progress while running; cancellation interrupts", t_mcp_progress_and_cancel, c, sid)
            await case("MCP code contexts; a kernel killed from outside, then restarted", t_mcp_contexts_and_kill, c, sid)
    finally:
        if failed:
            print(f"daemon log tail:\n{daemon.log_tail(60)}")
            # The sandboxes' agent logs (kernel starts, deaths) go with the daemon's.
            with open(tmp / "agent-logs.txt", "w") as out:
                for log in sorted((tmp / "state" / "sandboxes").glob("*/agent.log")):
                    out.write(f"== {log}\n{log.read_text(errors='replace')}\n")
        daemon.stop()
        daemon.cleanup()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"daemon log kept in {tmp / 'daemon.log'}")
    print(f"{cases.passed} passed, {len(failed)} failed")
    if failed:
        print("failed: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
