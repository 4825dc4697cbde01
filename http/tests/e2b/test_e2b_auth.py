"""The E2B surface beside the listener's bearer token (`--mcp-token`): E2B control-plane routes
take `X-API-Key` (not the bearer token), sandbox traffic takes the sandbox's access token, and
the native API and /mcp still require the bearer token.

Run (root, under the host lock):
    flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_e2b_auth.py
"""

from __future__ import annotations

import base64
import json
import os
import uuid

import httpx
import pytest
from e2b import AuthenticationException, Sandbox

from conftest import API_KEY, start_daemon

MCP_TOKEN = "mcp-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def daemon():
    d = start_daemon({"COPPICE_MCP_TOKEN": MCP_TOKEN})
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()


def test_e2b_uses_api_keys_while_the_rest_keeps_the_bearer_token(daemon):
    url = os.environ["E2B_API_URL"]
    bearer = {"Authorization": f"Bearer {MCP_TOKEN}"}
    # Native API: bearer required.
    assert httpx.get(f"{url}/api/v1/sandboxes").status_code == 401
    assert httpx.get(f"{url}/api/v1/sandboxes", headers=bearer).status_code == 200
    # E2B control plane: the API key, with no bearer token; the bearer token is no API key.
    assert httpx.get(f"{url}/v2/sandboxes", headers=bearer).status_code == 401
    s = Sandbox.create(timeout=60)
    try:
        assert s.commands.run("echo via-e2b").stdout == "via-e2b\n"
        assert s.files.write("t.txt", "x").path == "/home/user/t.txt"
        # The same sandbox through the native API: the bearer token alone is not enough for a
        # secure sandbox's traffic (docs/security.md); with its access token it is.
        native = f"{url}/api/v1/sandboxes/{s.sandbox_id}/exec"
        r = httpx.post(native, headers=bearer, json={"cmd": ["true"]})
        assert r.status_code == 401 and "X-Access-Token" in r.text, r.text
        token = {"X-Access-Token": s._envd_access_token, **bearer}
        r = httpx.post(native, headers=token, json={"cmd": ["cat", "/home/user/t.txt"]})
        assert r.status_code == 200, r.text
        events = [json.loads(line) for line in r.text.splitlines()]
        out = b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "stdout")
        assert out == b"x" and events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0
        with pytest.raises(AuthenticationException):
            Sandbox.create(api_key=MCP_TOKEN)
    finally:
        assert s.kill() is True
    assert s.sandbox_id not in [i.sandbox_id for i in Sandbox.list().next_items()]
    assert API_KEY != MCP_TOKEN
