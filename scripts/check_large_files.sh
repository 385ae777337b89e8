#!/usr/bin/env bash
# Fails when a git-tracked file outside docs/ is larger than 1 MB (1,000,000 bytes): wheels,
# datasets, checkpoints and results belong to a package registry or the ignored folders
# (.venv/, data/, results/, .cache/), not to the repository. docs/ holds the figures.
# Prints each offending path with its size and exits 1; prints nothing and exits 0 otherwise.
# Usage: bash scripts/check_large_files.sh      (run by `make lint`; LIMIT_BYTES=N sets the limit)
set -euo pipefail
cd "$(dirname "$0")/.."

limit=${LIMIT_BYTES:-1000000}
found=0
while IFS= read -r -d '' path; do
  case $path in docs/*) continue ;; esac
  # a tracked file deleted in the work tree, a symlink or a submodule has no size of its own here
  [ -f "$path" ] && [ ! -L "$path" ] || continue
  size=$(wc -c <"$path")
  size=${size//[[:space:]]/}
  if [ "$size" -gt "$limit" ]; then
    printf '%s: %s bytes (%s MB)\n' "$path" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')" >&2
    found=$((found + 1))
  fi
done < <(git ls-files -z)

if [ "$found" -gt 0 ]; then
  echo "check_large_files: $found tracked file(s) over $limit bytes outside docs/: remove them (git rm --cached PATH) or ignore them in .gitignore" >&2
  exit 1
fi
