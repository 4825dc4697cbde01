"""A private Coppice daemon for the E2B SDK tests (temp state dir, own socket, free port, an
E2B API key), with the SDKs' environment pointed at it: `E2B_API_URL` and `E2B_SANDBOX_URL`
both at the daemon, as a user of the real E2B SDKs would set them.

Needs root (real sandboxes); run under the host lock:
    flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_e2b_sdk.py
`COPPICE_BIN` picks the binary (default target/release/coppice).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "rigs"))
from common import Daemon, refuse_if_other_daemon  # noqa: E402  (the rigs' daemon harness)

API_KEY = "e2b_" + uuid.uuid4().hex
E2B_CLIENTS = Path(os.environ.get("COPPICE_E2B_CLIENTS", "/opt/coppice-e2b-clients"))


def run_node(script: Path, marker: str) -> None:
    """Runs a JS SDK script on the pinned Node 22 with the npm clients; it must print `marker`."""
    node = E2B_CLIENTS / "node_modules/.bin/node"
    env = dict(os.environ, NODE_PATH=str(E2B_CLIENTS / "node_modules"))
    r = subprocess.run([str(node), str(script)], env=env, capture_output=True, text=True,
                       timeout=240, cwd=E2B_CLIENTS)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker in r.stdout


def start_daemon(extra_env: dict | None = None) -> Daemon:
    """A private daemon with the E2B API key (and `extra_env`), the SDK variables set."""
    # One runtime per host: wait for another daemon (someone else's test) to finish.
    refuse_if_other_daemon(wait_s=float(os.environ.get("COPPICE_WAIT_OTHER", "300")))
    binary = Path(os.environ.get("COPPICE_BIN", REPO / "target/release/coppice"))
    tmp = Path(tempfile.mkdtemp(prefix="coppice-e2b-"))
    d = Daemon(binary, tmp / "state", pool_size=1, no_network=False, log_path=tmp / "daemon.log",
               env={"COPPICE_E2B_API_KEY": API_KEY, **(extra_env or {})})
    d.start()
    url = f"http://127.0.0.1:{d.port}"
    os.environ.update({"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": API_KEY})
    os.environ.pop("E2B_DEBUG", None)
    return d


# Module scope: a test file may need a differently configured daemon, and only one runs at a
# time on a host.
@pytest.fixture(scope="module")
def daemon():
    d = start_daemon()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()
