"""Crash-safe files: atomic writes (tmp + fsync + rename) and an advisory lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    The new file keeps the mode (and, where allowed, the group) of the file it replaces; a
    new file gets the mode any file created there would get (0666 less the umask, default
    ACLs of the folder), not ``mkstemp``'s 0600, so group-shared stores stay shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if old is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                with contextlib.suppress(OSError):  # only the owner or a member may change the group
                    os.fchown(f.fileno(), -1, old.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding))


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden file beside ``path``, created with mode 0666 so the umask decides."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}: clean up stale .{path.name}.*.tmp files")


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
