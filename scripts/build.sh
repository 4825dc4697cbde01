#!/usr/bin/env bash
# Builds every binary (release) once, in the shared target dir; run.sh and test.sh call it.
set -euo pipefail
cd "$(dirname "$0")/.."
# The examples are the rigs' helpers (codec_floor), not part of the product.
cargo build --release --workspace --bins --examples
# The agent starts once per sandbox: as a static musl binary it skips the dynamic loader and
# glibc's CPU probing (decision 0002). The daemon uses it when it is at least as new as the
# glibc agent beside the daemon, and the glibc agent otherwise.
musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
  cargo build --release -p coppice-agent --target "$musl"
else
  echo "coppice build: no $musl target or musl-gcc (scripts/setup.sh adds them); sandboxes run the glibc agent" >&2
fi
