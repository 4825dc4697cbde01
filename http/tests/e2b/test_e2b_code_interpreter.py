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
from pathlib import Path

import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox

JS_TEST = Path(__file__).resolve().parent / "js_code_interpreter.cjs"
E2B_CLIENTS = Path(os.environ.get("COPPICE_E2B_CLIENTS", "/opt/coppice-e2b-clients"))


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
    assert "python" in [c.language for c in listed], listed
    ctx = sbx.create_code_context(language="bash")
    listed = sbx.list_code_contexts()
    assert {"python", "bash"} <= {c.language for c in listed} and ctx.id in [c.id for c in listed]


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

    asyncio.run(main())


def test_js_code_interpreter(daemon):
    node = E2B_CLIENTS / "node_modules/.bin/node"
    env = dict(os.environ, NODE_PATH=str(E2B_CLIENTS / "node_modules"))
    r = subprocess.run([str(node), str(JS_TEST)], env=env, capture_output=True, text=True, timeout=240,
                       cwd=E2B_CLIENTS)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "js code interpreter: all ok" in r.stdout
