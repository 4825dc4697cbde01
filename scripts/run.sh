#!/usr/bin/env bash
# Sets up the host, builds Coppice and runs the daemon with its embedded defaults:
# state in /var/lib/coppice, HTTP on 127.0.0.1:7070, control socket /run/coppice/coppice.sock,
# the `default` template built from the host's system directories, a warm pool of 2.
# Extra arguments go to `coppice serve` (e.g. --config coppice.toml, --pool-size 8).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
exec ./target/release/coppice serve "$@"
