"""Crash-safe files: atomic writes (tmp + fsync + rename) and an advisory lock."""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path + '.lock'`` (for parallel sweep jobs)."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class DirectoryInUse(RuntimeError):
    """Another live process is writing its run into the same output folder."""


@contextmanager
def claim_directory(path: str | Path) -> Iterator[None]:
    """Hold ``path`` for one run: a second process claiming it at the same time fails at once.

    The claim is a non-blocking ``flock`` on ``path/.claim``, released when the run ends or
    its process dies, so re-running into a folder after a crash works.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".claim", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryInUse(
                f"output folder {path} is in use by another run that is still going; give this run "
                "its own folder, e.g. hydra.run.dir=outputs/my-run"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
