"""Baseline checkpoints keyed by a hash of everything that determines them."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from experiments.storage import atomic_write_bytes, file_lock

log = logging.getLogger(__name__)


def config_key(parts: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description (dataset, model, seed, training)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class BaselineCache:
    """``<dir>/<key>.pt`` holds {'state_dict', 'metrics'}; writes are atomic and locked."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt entry is retrained, never trusted
            log.warning("baseline cache entry %s is unreadable (%s); retraining", path, err)
            return None
        if not isinstance(entry, dict) or "state_dict" not in entry:
            log.warning("baseline cache entry %s has no state_dict; retraining", path)
            return None
        return entry

    def store(self, key: str, state_dict: dict[str, torch.Tensor], metrics: dict[str, float]) -> Path:
        path = self.path(key)
        buffer = io.BytesIO()
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metrics": metrics}, buffer)
        with file_lock(path):
            atomic_write_bytes(path, buffer.getvalue())
        return path
