#!/usr/bin/env bash
# Builds CRIU (memory snapshots) into DIR (default /opt/coppice-criu): Debian 13's criu 4.1.1
# source, fetched through apt from the mirror the host's apt sources already name, with
# Coppice's patch for kernels >= 6.16 (scripts/criu/*.patch), against this host's libraries.
# Why a build and not Debian 13's binary: Debian 12's criu 3.17 does not run on kernels
# >= 6.13, and 4.1.1 as released fails every dump of a process holding a TCP or UDP socket on
# kernels >= 6.16 (docs/decisions/0012-memory-snapshots.md). Idempotent: a DIR/criu built from the
# same source and patches is kept.
set -euo pipefail

dir="${1:-/opt/coppice-criu}"
version="4.1.1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
stamp="$version $(cat "$repo"/scripts/criu/*.patch | sha256sum | cut -d' ' -f1)"
if [ -x "$dir/criu" ] && [ "$(cat "$dir/.built-from" 2>/dev/null)" = "$stamp" ] \
  && "$dir/criu" --version 2>/dev/null | grep -q "Version: $version"; then
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

echo "coppice setup: building CRIU $version (Debian 13's source) into $dir" >&2
export DEBIAN_FRONTEND=noninteractive
build_deps=(gcc make pkg-config protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev libgnutls28-dev uuid-dev curl)
missing=()
for p in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # The host's package lists may be missing or stale on a fresh machine: refresh and retry.
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
touch "$work/status"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$work/sources.list"
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
# The upstream tarball of Debian 13's criu package, checked against the sources index.
line=$(cd "$work/src" && apt-get source --print-uris -q "criu=$version-1" 2>/dev/null | grep "orig.tar" | head -n1)
url=$(echo "$line" | awk '{print $1}' | tr -d "'")
file=$(echo "$line" | awk '{print $2}')
sum=$(echo "$line" | awk '{print $4}' | sed 's/^SHA256://')
if [ -z "$url" ]; then
  echo "coppice setup: criu $version's source is not in trixie on $uri" >&2
  exit 1
fi
curl -fsSL -o "$work/src/$file" "$url"
echo "$sum  $work/src/$file" | sha256sum -c --quiet
tar -xf "$work/src/$file" -C "$work/src"
cd "$work/src/criu-$version"
for p in "$repo"/scripts/criu/*.patch; do
  patch -s -p1 <"$p"
done
make -s -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; exit 1; }
./criu/criu --version | grep -q "Version: $version"

rm -rf "$dir.new"
mkdir -p "$dir.new"
install -m 755 criu/criu "$dir.new/criu"
echo "$stamp" >"$dir.new/.built-from"
rm -rf "$dir"
mv "$dir.new" "$dir"
