#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test against real sandboxes,
# and the quick form of the benchmark rigs (they print their figures; tests check behaviour).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n=== %s (%(%H:%M:%S)T)\n' "$*" -1; }

step "format"
cargo fmt --all -- --check

step "build (release, once for everything)"
./scripts/build.sh

step "shape (file sizes, a platform-free manager, no development history: scripts/check-shape.sh)"
./scripts/check-shape.sh

step "lint"
cargo clippy --release --workspace --all-targets -- -D warnings

step "security (docs/security.md: the control plane tried as an attacker would)"
cargo test --release --workspace --test security -- --test-threads=4

step "tests"
# Tests that start daemons run one binary at a time (cargo does so); one daemon per host.
cargo test --release --workspace -- --test-threads=4

step "docs/tools.md is generated from the tool schemas"
if ! diff -u docs/tools.md <(target/release/coppice-mcp --print-tools-markdown); then
  echo "docs/tools.md is stale: run target/release/coppice-mcp --print-tools-markdown > docs/tools.md" >&2
  exit 1
fi

step "MCP end to end (Python mcp client: stdio and HTTP, both protocol eras)"
python3 mcp/tests/test_mcp.py --coppice target/release/coppice

step "run_code end to end (real ipykernel and bash_kernel: /execute NDJSON, /contexts, MCP tools)"
python3 mcp/tests/test_run_code.py --coppice target/release/coppice

step "MCP with clients nobody here wrote (Python mcp over a real ssh, MCP Inspector CLI, conformance suite)"
python3 mcp/tests/test_clients.py --coppice target/release/coppice

step "example: RL loop, one fork per episode (agents-examples/rl-fork-loop)"
python3 agents-examples/rl-fork-loop/run.py --start-daemon target/release/coppice --episodes 6 --batch 3

step "network policy end to end (a namespace world on documentation addresses)"
python3 runtime/tests/network_policy.py --coppice target/release/coppice

step "memory snapshots and forks (real CRIU: kernels, processes and listeners resume in every fork)"
python3 -m pytest -q runtime/tests/memory

step "browser tools (Chromium in the sandbox, playwright-mcp's tools over MCP, Playwright over the CDP endpoint)"
python3 mcp/tests/test_browser.py --coppice target/release/coppice

step "collaborative terminals (real PTYs, the WebSocket protocol, headless Chromium on the page, MCP)"
python3 -m pytest -q http/tests/terminals

step "E2B SDKs unmodified (PyPI e2b sync+async, npm e2b on Node 22) against a real daemon"
python3 -m pytest -q http/tests/e2b/test_e2b_sdk.py http/tests/e2b/test_e2b_auth.py

step "GET /metrics after E2B, native and MCP traffic, read with the OpenMetrics parser"
python3 -m pytest -q http/tests/e2b/test_metrics.py

step "E2B code interpreter SDKs (Python sync/async, JS): contexts, env vars, charts, data, images"
python3 -m pytest -q http/tests/e2b/test_e2b_code_interpreter.py http/tests/e2b/test_e2b_rich_results.py

step "rigs (quick)"
python3 rigs/create_exec.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/mcp_overhead.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/snapshot_fork.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/network_policy.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/run_code.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/terminals.py --quick --wait-other 600 --coppice target/release/coppice
python3 rigs/memory_fork.py --quick --wait-other 600 --coppice target/release/coppice

step "done"
