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
packages=(nftables iproute2 bubblewrap debootstrap sudo python3 python3-pip ca-certificates curl openssh-server conntrack)
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

# Python clients for the MCP tests (versions verified against rmcp 3.11; see mcp/tests).
py_pins=("mcp==2.3.0" "httpx2==2.16.2" "openai-agents==0.24.0")
if ! python3 -c 'import importlib.metadata as m, sys
assert all(m.version(n) == v for n, v in (p.split("==") for p in sys.argv[1:]))' "${py_pins[@]}" >/dev/null 2>&1; then
  echo "coppice setup: installing ${py_pins[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages "${py_pins[@]}"
fi

# Node clients for the MCP tests (mcp/tests/test_clients.py): the MCP Inspector CLI and the
# official conformance suite, both on Node 22 from npm (`node@22`: Debian 12's Node is too
# old for them). Pinned by mcp/tests/clients/package-lock.json and installed with `npm ci`
# into /opt/coppice-test-clients (outside the work tree, so CI's fresh clones reuse it;
# override with COPPICE_TEST_CLIENTS). Nothing is put on the host's PATH: the tests prepend
# its node_modules/.bin for their own child processes only.
clients_src="$(cd "$(dirname "$0")/.." && pwd)/mcp/tests/clients"
clients_dir="${COPPICE_TEST_CLIENTS:-/opt/coppice-test-clients}"
# The stamp is a copy of the lock file, written only after a complete install.
if ! cmp -s "$clients_src/package-lock.json" "$clients_dir/.installed-lock.json" \
  || ! "$clients_dir/node_modules/.bin/node" --version >/dev/null 2>&1; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "coppice setup: installing npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q npm >/dev/null
  fi
  echo "coppice setup: installing the Node MCP test clients into $clients_dir" >&2
  mkdir -p "$clients_dir"
  rm -f "$clients_dir/.installed-lock.json"
  cp "$clients_src/package.json" "$clients_src/package-lock.json" "$clients_dir/"
  (cd "$clients_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$clients_src/package-lock.json" "$clients_dir/.installed-lock.json"
fi

# The real E2B SDKs for http/tests/e2b: PyPI `e2b` + `e2b-code-interpreter` (and pytest), and
# npm `e2b` + `@e2b/code-interpreter` on Node 22, pinned by http/tests/e2b/clients/
# package-lock.json and installed with `npm ci` into /opt/coppice-e2b-clients
# (COPPICE_E2B_CLIENTS overrides), the same way as the MCP test clients above.
e2b_py_pins=("e2b==2.63.0" "e2b-code-interpreter==2.11.5" "pytest==8.4.2")
if ! python3 -c 'import importlib.metadata as m, sys
assert all(m.version(n) == v for n, v in (p.split("==") for p in sys.argv[1:]))' "${e2b_py_pins[@]}" >/dev/null 2>&1; then
  echo "coppice setup: installing ${e2b_py_pins[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages "${e2b_py_pins[@]}"
fi
e2b_src="$(cd "$(dirname "$0")/.." && pwd)/http/tests/e2b/clients"
e2b_dir="${COPPICE_E2B_CLIENTS:-/opt/coppice-e2b-clients}"
if ! cmp -s "$e2b_src/package-lock.json" "$e2b_dir/.installed-lock.json" \
  || ! "$e2b_dir/node_modules/.bin/node" --version >/dev/null 2>&1; then
  echo "coppice setup: installing the E2B JS SDKs into $e2b_dir" >&2
  mkdir -p "$e2b_dir"
  rm -f "$e2b_dir/.installed-lock.json"
  cp "$e2b_src/package.json" "$e2b_src/package-lock.json" "$e2b_dir/"
  (cd "$e2b_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$e2b_src/package-lock.json" "$e2b_dir/.installed-lock.json"
fi
