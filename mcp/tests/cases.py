"""The case runner the MCP end-to-end suites share: every case runs, reports `ok`/`FAIL` with
its time, and the suite goes on; `failed` names the failures, `passed` counts the rest."""

from __future__ import annotations

import time
import traceback

passed = 0
failed: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


async def case(name: str, fn, *args) -> None:
    global passed
    t0 = time.monotonic()
    try:
        await fn(*args)
        passed += 1
        print(f"ok   {name} ({time.monotonic() - t0:.1f}s)", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        failed.append(name)
        print(f"FAIL {name}: {e!r}", flush=True)
        traceback.print_exc()
