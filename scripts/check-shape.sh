#!/usr/bin/env bash
# Guard rails on the code's shape (run by scripts/test.sh): no source file past the size limit,
# the runtime's manager names no platform, no import cycle between files, and the README, docs
# and code carry no development history (that goes in CHANGELOG.md and commit messages).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

# 1. Code lines (those before a file's inline `#[cfg(test)] mod … {` block) per Rust source
# file: none may pass the limit. A `#[cfg(test)] mod x;` naming another file does not end the
# count.
limit=800
while IFS= read -r f; do
  n=$(awk '/^#\[cfg\(test\)\]/{n++; if ((getline nx) > 0) { if (nx ~ /^mod [a-z_0-9]+ \{/) exit; n++ } next} {n++} END{print n+0}' "$f")
  if [ "$n" -gt "$limit" ]; then
    echo "shape: $f has $n code lines (limit $limit): split it along its concepts" >&2
    fail=1
  fi
done < <(git ls-files '*.rs')

# 2. The manager is platform-neutral: it reaches the platform only through runtime/src/backend.
if hits=$(grep -rnwiE 'linux|rustix|btrfs' runtime/src/manager.rs runtime/src/manager/); then
  echo "shape: runtime/src/manager names a platform (use the backend traits):" >&2
  echo "$hits" >&2
  fail=1
fi

# 3. No development history in the product's text.
if hits=$(git ls-files README.md SPECIFICATION.md 'docs/*' '*.rs' '*.py' '*.sh' \
    | grep -v '^scripts/check-shape.sh$' \
    | xargs grep -niE 'session [0-9]|\(issue [0-9]|issue [0-9]+'"'"'s|last CI run|in later issues'); then
  echo "shape: development history in the product's text (move it to CHANGELOG.md):" >&2
  echo "$hits" >&2
  fail=1
fi

# 4. Imports only point down: no cycle between files (scripts/import-cycles.py).
if ! python3 scripts/import-cycles.py .; then
  fail=1
fi

exit $fail
