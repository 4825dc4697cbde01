#!/usr/bin/env bash
# Installs Deno (npm `@deno/linux-x64-glibc`, the binary the npm `deno` package picks on this
# platform) as the default template's JavaScript and TypeScript code kernel: the binary under
# /usr/local/lib/coppice-deno and its Jupyter kernelspec (`deno jupyter --kernel`) under
# /usr/local/share/jupyter/kernels/deno, where the host-derived template carries both (a
# change of either rebuilds the template). Idempotent: the same version is kept.
set -euo pipefail

version="2.9.6"
dir=/usr/local/lib/coppice-deno
spec=/usr/local/share/jupyter/kernels/deno
if [ "$("$dir/deno" --version 2>/dev/null | head -1)" = "deno $version (stable, release, x86_64-unknown-linux-gnu)" ] \
  && [ -f "$spec/kernel.json" ]; then
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "coppice setup: no Deno build for $(uname -m) here; run_code will offer Python and bash" >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q npm >/dev/null
fi
echo "coppice setup: installing Deno $version (run_code's JavaScript/TypeScript kernel)" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm install --silent --no-audit --no-fund --ignore-scripts "@deno/linux-x64-glibc@$version")
install -D -m 0755 "$tmp/node_modules/@deno/linux-x64-glibc/deno" "$dir/deno"
mkdir -p "$spec"
# Offline sandboxes: no update check, no permission prompt (the sandbox is the boundary).
cat > "$spec/kernel.json" <<JSON
{
  "argv": ["$dir/deno", "jupyter", "--kernel", "--conn", "{connection_file}"],
  "display_name": "Deno",
  "language": "typescript",
  "env": {"DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1", "NO_COLOR": "1"}
}
JSON
