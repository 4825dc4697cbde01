#!/usr/bin/env bash
# Installs CRIU 4.1 (memory snapshots) into a private tree, DIR (default /opt/coppice-criu),
# from Debian 13's packages: Debian 12's criu 3.17 does not run on kernels >= 6.13, and
# trixie's criu needs trixie's glibc, so the tree carries its own libraries and the wrapper
# DIR/criu runs the binary through the tree's own dynamic loader. The host's libc and
# packages are untouched. apt runs with a private configuration (its own sources list, lists
# and cache) whose mirror is the one the host's apt sources already name. Idempotent.
set -euo pipefail

dir="${1:-/opt/coppice-criu}"
want="4.1.1"
if [ -x "$dir/criu" ] && "$dir/criu" --version 2>/dev/null | grep -q "Version: $want"; then
  exit 0
fi

# The host's Debian mirror, as its apt sources name it (deb822 first, then one-line lists).
uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
  /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
if [ -z "$uri" ]; then
  uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
fi
if [ -z "$uri" ]; then
  echo "coppice setup: no Debian mirror in the host's apt sources; memory snapshots stay unavailable" >&2
  exit 1
fi

echo "coppice setup: installing CRIU $want from Debian 13 into $dir" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/tree"
touch "$work/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$work/sources.list"
cat >"$work/apt.conf" <<CONF
Dir::Etc::SourceList "$work/sources.list";
Dir::Etc::SourceParts "$work/none";
Dir::State::Lists "$work/lists";
Dir::State::status "$work/status";
Dir::Cache "$work/cache";
APT::Sandbox::User "root";
CONF
export APT_CONFIG="$work/apt.conf"
apt-get update -q >/dev/null
# criu and everything it links, down to trixie's glibc.
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances --no-pre-depends criu | grep -v '^ ' | grep -v '^<' | sort -u)
(cd "$work/debs" && apt-get download -q $pkgs >/dev/null)
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/tree"
done

rm -rf "$dir.new"
mkdir -p "$dir.new"
mv "$work/tree/usr" "$dir.new/usr"
cat >"$dir.new/criu" <<'WRAP'
#!/bin/sh
# CRIU from Debian 13 with its own libraries (scripts/install-criu.sh).
tree="$(dirname "$(readlink -f "$0")")"
lib="$tree/usr/lib/x86_64-linux-gnu"
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$tree/usr/sbin/criu" "$@"
WRAP
chmod 755 "$dir.new/criu"
"$dir.new/criu" --version | grep -q "Version: $want"
rm -rf "$dir"
mv "$dir.new" "$dir"
