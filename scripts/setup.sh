#!/usr/bin/env bash
# Installs what a fresh Debian 12 host needs to build and run Coppice. Idempotent and quiet
# when everything is already there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "coppice setup: run as root (sandboxes need user, mount and network namespaces and cgroups)" >&2
  exit 1
fi

packages=(nftables iproute2 bubblewrap debootstrap sudo python3 ca-certificates curl)
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
