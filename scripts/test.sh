#!/usr/bin/env bash
# `make test`: the tests marked `parallel` (all but those that time code or keep both cores busy:
# tests/conftest.py) on two workers, then the rest alone, so that no timing shares the CPU.
# Arguments go to both pytest runs (e.g. -q, a file, -k EXPR).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m pytest -n 2 --dist worksteal -m parallel "$@"
first=$?
"$PY" -m pytest -m "not parallel" "$@"
second=$?
# 5: no test selected in that run (ARGS named tests of one kind only); a failure only if both say so
if [ "$first" = 5 ] && [ "$second" = 5 ]; then exit 5; fi
for rc in "$first" "$second"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
exit 0
