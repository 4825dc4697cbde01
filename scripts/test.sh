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
cargo build --release --workspace --bins

step "lint"
cargo clippy --release --workspace --all-targets -- -D warnings

step "tests"
# Tests that start daemons run one binary at a time (cargo does so); one daemon per host.
cargo test --release --workspace -- --test-threads=4

step "rigs (quick)"
python3 rigs/create_exec.py --quick --coppice target/release/coppice

step "done"
