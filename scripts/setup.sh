#!/usr/bin/env bash
# Installs what a fresh Debian 12 host needs to build and run Coppice. Idempotent and quiet
# when everything is already there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "coppice setup: run as root (sandboxes need user, mount and network namespaces and cgroups)" >&2
  exit 1
fi

# openssh-server: the MCP-over-ssh test runs a private sshd (its own config, port and keys).
# conntrack: a network policy update ends the open connections it no longer permits.
# btrfs-progs: mkfs.btrfs formats the sparse image that holds sandbox uppers and snapshots
# (subvolumes) when the state dir is not on btrfs.
# openssl: the network policy test makes its TLS servers' self-signed certificate.
# musl-tools: the C compiler for the agent's static musl build (its zmq client's `ring`).
# chromium: the terminal page test drives the page in a real headless browser.
# vim, tmux, procps, less: the terminal tests' full-screen programs (the default template
# carries the host's /usr) and the terminal rig's tmux reference.
# python3-ipykernel (+ matplotlib, pandas, pexpect): the code kernels that the default template
# (a hard-link farm of this host's /usr) carries for run_code; see kernel/.
packages=(nftables iproute2 btrfs-progs bubblewrap debootstrap sudo python3 python3-pip ca-certificates curl openssh-server conntrack
  python3-ipykernel python3-matplotlib python3-pandas python3-pexpect
  openssl musl-tools chromium vim tmux procps less)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "coppice setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "coppice setup: cargo (the Rust toolchain) is required; install it with rustup" >&2
  exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
# The static agent (scripts/build.sh); without it sandboxes run the glibc agent.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "coppice setup: adding the x86_64-unknown-linux-musl Rust target" >&2
  rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 \
    || echo "coppice setup: could not add the musl target; sandboxes will run the glibc agent" >&2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"

# Installs pinned PyPI packages unless exactly those versions are there.
pip_pins() {
  if ! python3 -c 'import importlib.metadata as m, sys
assert all(m.version(n) == v for n, v in (p.split("==") for p in sys.argv[1:]))' "$@" >/dev/null 2>&1; then
    echo "coppice setup: installing $*" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages "$@"
  fi
}

# Installs the npm packages pinned by SRC/package-lock.json into DIR with `npm ci` (outside the
# work tree, so CI's fresh clones reuse it). The stamp is a copy of the lock file, written only
# after a complete install. Nothing goes on the host's PATH: tests prepend DIR/node_modules/.bin
# for their own child processes. CHECK (default: the Node binary) is what must run afterwards.
npm_clients() {
  local src="$1" dir="$2" check="${3:-node_modules/.bin/node --version}"
  if cmp -s "$src/package-lock.json" "$dir/.installed-lock.json" \
    && (cd "$dir" && $check) >/dev/null 2>&1; then
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "coppice setup: installing npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q npm >/dev/null
  fi
  echo "coppice setup: installing the Node clients of $src into $dir" >&2
  mkdir -p "$dir"
  rm -f "$dir/.installed-lock.json"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$src/package-lock.json" "$dir/.installed-lock.json"
}

# Deno from npm: run_code's JavaScript and TypeScript kernel in the default template.
"$repo/scripts/install-deno.sh" || echo "coppice setup: Deno unavailable; run_code offers Python and bash" >&2

# CRIU 4.1 from Debian 13 in a private tree (memory snapshots); without it they are refused
# with the reason and everything else works.
"$repo/scripts/install-criu.sh" || echo "coppice setup: CRIU unavailable; memory snapshots will be refused" >&2

# xterm.js for the daemon's terminal page (http/build.rs bundles it into the binary).
npm_clients "$repo/http/web" "${COPPICE_WEB_ASSETS:-/opt/coppice-web}" "test -f node_modules/@xterm/xterm/lib/xterm.js"

# Python clients for the MCP tests (versions verified against rmcp 3.11; see mcp/tests).
pip_pins "mcp==2.3.0" "httpx2==2.16.2" "openai-agents==0.24.0"
# The terminal tests' WebSocket client (and Chromium's DevTools protocol driver).
pip_pins "websockets==16.1.1"
# Node clients for the MCP tests (mcp/tests/test_clients.py): the MCP Inspector CLI and the
# official conformance suite, on Node 22 from npm (`node@22`: Debian 12's Node is too old).
npm_clients "$repo/mcp/tests/clients" "${COPPICE_TEST_CLIENTS:-/opt/coppice-test-clients}"

# The real E2B SDKs for http/tests/e2b: PyPI `e2b` + `e2b-code-interpreter` (and pytest), and
# npm `e2b` + `@e2b/code-interpreter` on Node 22.
pip_pins "e2b==2.63.0" "e2b-code-interpreter==2.11.5" "pytest==8.4.2"
# The Prometheus text parser the /metrics test reads the scrape with.
pip_pins "prometheus-client==0.26.0"
# An external CDP client for the browser test: Playwright's Python package drives the
# sandbox's own Chromium over the daemon's CDP endpoint (no browser download).
pip_pins "playwright==1.65.3"
npm_clients "$repo/http/tests/e2b/clients" "${COPPICE_E2B_CLIENTS:-/opt/coppice-e2b-clients}"

# The second code-kernel language: bash_kernel from PyPI, into Debian's python (/usr/local, so
# the default template carries it) with its kernelspec registered system-wide.
if ! /usr/bin/python3 -c 'import importlib.metadata as m; assert m.version("bash_kernel") == "0.10.0"' >/dev/null 2>&1 \
  || [ ! -f /usr/local/share/jupyter/kernels/bash/kernel.json ]; then
  echo "coppice setup: installing bash_kernel 0.10.0" >&2
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages \
    "bash_kernel==0.10.0" "filetype==1.2.0"
  /usr/bin/python3 -m bash_kernel.install --prefix /usr/local >/dev/null
fi
