"""The results store: one complete JSON row per run in ``runs.jsonl``, appended atomically.

A row is written only when a run finishes (or fails with a recorded status), so an
interrupted run never leaves half a row. ``analysis/`` reads this file with pandas.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from experiments.storage.files import atomic_write_bytes, file_lock

SCHEMA_VERSION = 2
RUNS_FILE = "runs.jsonl"
ERROR_MESSAGE_CHARS = 2000


class CorruptResultsError(RuntimeError):
    """A results file that cannot be parsed; the message names the file and line."""


def read_rows(store: str | Path) -> list[dict[str, Any]]:
    """All rows of the store (empty if it does not exist yet)."""
    path = Path(store) / RUNS_FILE
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise CorruptResultsError(f"{path}:{lineno} is not valid JSON ({err}); fix or remove that line") from err
    return rows


def append_row(store: str | Path, row: dict[str, Any]) -> Path:
    """Append ``row`` to the store atomically (rewrite to a temp file, then rename)."""
    path = Path(store) / RUNS_FILE
    line = json.dumps({"schema_version": SCHEMA_VERSION, **row}, default=_jsonable, sort_keys=True)
    with file_lock(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + line.encode() + b"\n")
    return path


def run_status(exc: BaseException) -> str:
    """``"interrupted"`` for a user's Ctrl-C (KeyboardInterrupt), else ``"failed"``."""
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def failure_fields(exc: BaseException, phase: str | None, output_dir: str | Path | None) -> dict[str, Any]:
    """The fields of a row for a run that ended with ``exc`` during ``phase``:
    ``{"status", "error": {"type", "message", "phase"}, "output_dir"}``, so the store records
    why and where every failed or interrupted run stopped (the message is cut to 2000 chars)."""
    message = str(exc)
    if len(message) > ERROR_MESSAGE_CHARS:
        message = message[: ERROR_MESSAGE_CHARS - 3] + "..."
    return {
        "status": run_status(exc),
        "error": {"type": type(exc).__name__, "message": message, "phase": phase},
        "output_dir": None if output_dir is None else str(output_dir),
    }


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a results row")


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with '-dirty' if the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None
