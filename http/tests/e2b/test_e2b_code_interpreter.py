"""The unmodified E2B code-interpreter SDKs (PyPI `e2b-code-interpreter`, npm
`@e2b/code-interpreter`, pinned in scripts/setup.sh) against Coppice: `run_code` goes to port
49999, which the E2B proxy routes to the sandbox's agent (POST /execute, /contexts).

scripts/test.sh runs it.

By hand (root): flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_e2b_code_interpreter.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_node
from e2b_code_interpreter import AsyncSandbox, Sandbox

JS_TEST = Path(__file__).resolve().parent / "js_code_interpreter.cjs"


@pytest.fixture
def sbx(daemon):
    s = Sandbox.create(timeout=120, envs={"SANDBOX_WIDE": "wide"})
    yield s
    s.kill()


def test_state_persists_between_calls(sbx):
    sbx.run_code("x = 41")
    ex = sbx.run_code("x + 1")
    assert ex.text == "42"
    ex = sbx.run_code("print(x)")
    assert ex.logs.stdout == ["41\n"]


def test_rich_results_and_errors(sbx):
    ex = sbx.run_code("from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))\n'done'")
    assert any(r.html == "<b>hi</b>" for r in ex.results)
    assert ex.text == "done"
    ex = sbx.run_code("1/0")
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"
    ex = sbx.run_code("import sys; print('e', file=sys.stderr)")
    assert ex.logs.stderr == ["e\n"]


def test_env_vars(sbx):
    assert sbx.run_code("import os; os.environ['SANDBOX_WIDE']").text == "wide"
    ex = sbx.run_code("import os; os.environ.get('PER_CALL')", envs={"PER_CALL": "call"})
    assert ex.text == "call"
    assert sbx.run_code("import os; os.environ.get('PER_CALL')").text is None
    # A per-execution value overrides the sandbox's for that execution only, in Python and bash.
    get = "import os; os.environ.get('SANDBOX_WIDE')"
    assert sbx.run_code(get, envs={"SANDBOX_WIDE": "overwrite"}).text == "overwrite"
    assert sbx.run_code(get).text == "wide"
    assert sbx.run_code("echo $SANDBOX_WIDE", language="bash", envs={"SANDBOX_WIDE": "b"}).logs.stdout == ["b\n"]
    assert sbx.run_code("echo $SANDBOX_WIDE", language="bash").logs.stdout == ["wide\n"]


def test_default_contexts_are_listed(sbx):
    # Before any code ran, as E2B lists its default contexts.
    listed = sbx.list_code_contexts()
    assert {"python", "javascript"} <= {c.language for c in listed}, listed
    ctx = sbx.create_code_context(language="bash")
    listed = sbx.list_code_contexts()
    assert {"python", "bash"} <= {c.language for c in listed} and ctx.id in [c.id for c in listed]


def test_javascript_and_typescript(sbx):
    # Deno's Jupyter kernel: state kept per context, console output as stdout, errors typed.
    assert sbx.run_code("const x = 40; x + 2", language="js").text == "42"
    assert sbx.run_code("x * 2", language="javascript").text == "80"
    printed = sbx.run_code("console.log('hi'); 'done'", language="js")
    assert printed.logs.stdout == ["hi\n"] and printed.text == "done"
    assert sbx.run_code("let y: number = 3; y + 1", language="ts").text == "4"
    err = sbx.run_code("throw new TypeError('bad')", language="js").error
    assert err.name == "TypeError" and err.value == "bad"
    ctx = sbx.create_code_context(language="js", cwd="/tmp")
    assert sbx.run_code("Deno.cwd()", context=ctx).text == "/tmp"


def test_contexts(sbx):
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.cwd == "/tmp"
    sbx.run_code("y = 5", context=ctx)
    assert sbx.run_code("y", context=ctx).text == "5"
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    sbx.restart_code_context(ctx)
    assert sbx.run_code("y", context=ctx).error.name == "NameError"
    sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]


def test_timeout(sbx):
    from e2b import TimeoutException

    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(30)", timeout=2)


def test_async_client(daemon):
    async def main():
        s = await AsyncSandbox.create(timeout=60)
        try:
            await s.run_code("z = 7")
            assert (await s.run_code("z * 6")).text == "42"
        finally:
            await s.kill()
        private = await AsyncSandbox.create(timeout=60, network={"allow_public_traffic": False})
        try:
            assert private.traffic_access_token
            assert (await private.run_code("6 * 7")).text == "42"
        finally:
            await private.kill()

    asyncio.run(main())


def test_js_code_interpreter(daemon):
    run_node(JS_TEST, "js code interpreter: all ok")


HOST_ECHO = """
import http.server
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("host=%s token=%s" % (self.headers.get("Host"),
                                      self.headers.get("e2b-traffic-access-token"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8000), Echo).serve_forever()
"""


def test_private_traffic_and_masked_host(daemon):
    import httpx

    s = Sandbox.create(timeout=120,
                       network={"allow_public_traffic": False, "mask_request_host": "localhost:${PORT}"})
    try:
        token = s.traffic_access_token
        assert token, "a private sandbox gets a traffic access token"
        # The SDK sends it on its own: code runs as in any sandbox.
        assert s.run_code("6 * 7").text == "42"
        s.files.write("/tmp/echo.py", HOST_ECHO)
        s.commands.run("python3 /tmp/echo.py", background=True)
        url = os.environ["E2B_SANDBOX_URL"]
        hdr = {"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": "8000"}
        deadline = time.monotonic() + 20
        while True:
            r = httpx.get(f"{url}/", headers={**hdr, "e2b-traffic-access-token": token})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # The server sees the masked Host, with the port put in.
        assert r.status_code == 200 and r.text == f"host=localhost:8000 token={token}", r.text
        missing = httpx.get(f"{url}/", headers=hdr)
        assert missing.status_code == 403 and "missing traffic access token" in missing.json()["message"]
        wrong = httpx.get(f"{url}/", headers={**hdr, "e2b-traffic-access-token": token + "x"})
        assert wrong.status_code == 403 and "invalid traffic access token" in wrong.json()["message"]
        # Without the token the code interpreter's port is closed too; envd's has its own token.
        execute = httpx.post(f"{url}/execute", json={"code": "1"},
                             headers={"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": "49999"})
        assert execute.status_code == 403
        # Connecting again hands out the same token.
        again = Sandbox.connect(s.sandbox_id)
        assert again.traffic_access_token == token
        assert again.run_code("1 + 1").text == "2"
    finally:
        s.kill()
    # A public sandbox has none, and its ports need no token.
    public = Sandbox.create(timeout=60, network={"allow_public_traffic": True})
    try:
        assert public.traffic_access_token is None
    finally:
        public.kill()
