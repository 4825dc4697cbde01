#!/usr/bin/env bash
# Installs what a fresh Debian 12 host needs to build and run Coppice. Idempotent and quiet
# when everything is already there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "coppice setup: run as root (sandboxes need user, mount and network namespaces and cgroups)" >&2
  exit 1
fi

# openssh-server: the MCP-over-ssh test runs a private sshd (its own config, port and keys).
# python3-ipykernel (+ matplotlib, pandas, pexpect): the code kernels that the default template
# (a hard-link farm of this host's /usr) carries for run_code; see kernel/.
packages=(nftables iproute2 bubblewrap debootstrap sudo python3 python3-pip ca-certificates curl openssh-server
  python3-ipykernel python3-matplotlib python3-pandas python3-pexpect)
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

# The second code-kernel language: bash_kernel from PyPI, into Debian's python (/usr/local, so
# the default template carries it) with its kernelspec registered system-wide.
if ! /usr/bin/python3 -c 'import importlib.metadata as m; assert m.version("bash_kernel") == "0.10.0"' >/dev/null 2>&1 \
  || [ ! -f /usr/local/share/jupyter/kernels/bash/kernel.json ]; then
  echo "coppice setup: installing bash_kernel 0.10.0" >&2
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages \
    "bash_kernel==0.10.0" "filetype==1.2.0"
  /usr/bin/python3 -m bash_kernel.install --prefix /usr/local >/dev/null
fi
