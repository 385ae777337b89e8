"""Baseline checkpoints keyed by a hash of everything that determines them.

An entry is ``<dir>/<key>.pt`` (``{'state_dict', 'metrics'}``, read with
``weights_only=True``) plus ``<dir>/<key>.json``: the sha256 of the ``.pt`` file and what
the key was made of. ``torch.load`` never checks the CRC32s of its zip members, so a
flipped bit would load silently; the sha256 is checked on every load instead. A corrupted,
unverifiable or foreign entry (names, shapes or dtypes that do not fit the model) is
reported by path and ignored, so the baseline is retrained and the entry rewritten.

Processes that need the same baseline train it once: the trainer holds a ``flock`` on
``<dir>/<key>.claim`` while it trains, the others wait on it and then reuse the entry. The
OS releases the lock of a process that dies, so a waiting process then trains instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from experiments.storage.files import atomic_write_bytes, atomic_write_text, file_lock

log = logging.getLogger(__name__)


def config_key(parts: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description (dataset, model, seed, training)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def state_dict_mismatch(entry: Mapping[str, Any], like: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``entry`` differs from ``like`` in names, shapes and dtypes (empty if it fits)."""
    problems = []
    missing = [k for k in like if k not in entry]
    unexpected = [k for k in entry if k not in like]
    if missing:
        problems.append(f"missing {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unexpected {unexpected[:5]}" + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    for k, ref in like.items():
        value = entry.get(k)
        if not torch.is_tensor(value):
            if k in entry:
                problems.append(f"{k!r} is a {type(value).__name__}, not a tensor")
            continue
        if tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{k!r} has shape {list(value.shape)}, the model {list(ref.shape)}")
        elif value.dtype != ref.dtype:
            problems.append(f"{k!r} is {value.dtype}, the model {ref.dtype}")
    return problems


class BaselineCache:
    """``<dir>/<key>.pt`` with its checksum file ``<key>.json``; writes are atomic and locked."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def meta_path(self, key: str) -> Path:
        """The checksum file: ``{'sha256', 'bytes', 'key', 'parts', 'created', 'pid'}``."""
        return self.directory / f"{key}.json"

    def claim_path(self, key: str) -> Path:
        return self.directory / f"{key}.claim"

    def signature(self, key: str) -> tuple[int, int, int] | None:
        """(inode, mtime, size) of the entry, to tell whether someone rewrote it meanwhile."""
        try:
            st = os.stat(self.path(key))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self, key: str, like: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any] | None:
        """The verified entry, or None (missing, or reported and ignored: it is retrained).

        ``like`` (the built model's state dict) makes an entry whose names, shapes or dtypes
        differ count as foreign.
        """
        path, meta_path = self.path(key), self.meta_path(key)
        if not path.exists():
            return None
        with file_lock(path):
            try:
                data = path.read_bytes()
                meta_text = meta_path.read_text() if meta_path.exists() else None
            except OSError as err:
                return self._reject(path, f"cannot be read ({err})")
        if meta_text is None:
            return self._reject(
                path,
                f"has no checksum file {meta_path.name} (written by an older prunekit, or "
                "its run stopped between the two writes)",
            )
        try:
            meta = json.loads(meta_text)
            expected = str(meta["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            return self._reject(path, f"has an unreadable checksum file {meta_path.name} ({err})")
        if meta.get("key", key) != key:
            return self._reject(
                path,
                f"is recorded in {meta_path.name} as the entry of key {meta.get('key')!r}, "
                f"not {key!r} (copied or renamed?)",
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            return self._reject(
                path,
                f"fails its checksum: the file's sha256 is {actual[:16]}..., "
                f"{meta_path.name} recorded {expected[:16]}... (corrupted on disk or "
                "overwritten)",
            )
        try:
            entry = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt entry is retrained, never trusted
            return self._reject(path, f"is unreadable ({type(err).__name__}: {err})")
        if not isinstance(entry, dict) or not isinstance(entry.get("state_dict"), dict):
            return self._reject(path, "has no state_dict")
        if like is not None:
            problems = state_dict_mismatch(entry["state_dict"], like)
            if problems:
                return self._reject(path, f"does not fit the model ({'; '.join(problems[:4])})")
        entry.setdefault("metrics", {})
        return entry

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        log.warning("baseline cache entry %s %s; not using it, retraining the baseline", path, why)
        return None

    def store(
        self,
        key: str,
        state_dict: Mapping[str, torch.Tensor],
        metrics: dict[str, float],
        parts: dict[str, Any] | None = None,
    ) -> Path:
        """Write the entry, then its checksum file (an entry without one is never used)."""
        path = self.path(key)
        buffer = io.BytesIO()
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metrics": metrics}, buffer)
        data = buffer.getvalue()
        meta = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "key": key,
            "parts": parts,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "pid": os.getpid(),
        }
        with file_lock(path):
            self.meta_path(key).unlink(missing_ok=True)
            atomic_write_bytes(path, data)
            atomic_write_text(self.meta_path(key), json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
        return path

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Hold the right to train ``key``; blocks while another live process holds it.

        Yields whether it had to wait (then the other process has probably stored the entry).
        """
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        waited = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                log.info("waiting for baseline %s being trained by pid %s (claim %s)", key, holder, path)
                start = time.perf_counter()
                fcntl.flock(fd, fcntl.LOCK_EX)
                waited = True
                log.info("baseline %s: claim free after %.1fs", key, time.perf_counter() - start)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield waited
        finally:
            os.close(fd)  # releases the flock
