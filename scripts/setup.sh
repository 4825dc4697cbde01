#!/usr/bin/env bash
# Installs what a fresh Debian 12 host needs to build and run Coppice. Idempotent and quiet
# when everything is already there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "coppice setup: run as root (sandboxes need user, mount and network namespaces and cgroups)" >&2
  exit 1
fi

packages=(nftables iproute2 bubblewrap debootstrap sudo python3 python3-pip ca-certificates curl)
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
