"""Pruned structure as data: a JSON record of what was cut, replayable on a fresh model.

``PruningRecord.entries`` lists, in order, every cut: (module or parameter name, dim,
kept indices, size before). ``dim`` is 0 for output channels (or the channels of a
BatchNorm/LayerNorm/depthwise conv), 1 for input channels; for a bare parameter it is
the tensor dim. ``shapes`` holds the state-dict shapes of every cut module after the cut, checked on replay.

Loading a pruned model = build the dense model, replay the record, load the weights
with ``strict=True``; the file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from pruning.handlers import ChannelwiseHandler, cut_tensor, get_handler

FORMAT = "prunekit.pruned"
VERSION = 1


@dataclass(frozen=True)
class RecordEntry:
    """One cut: keep ``keep`` of the ``size`` indices of ``name`` along ``dim``."""

    name: str
    kind: str  # "module" | "param"
    dim: int
    keep: tuple[int, ...]
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dim": self.dim, "keep": list(self.keep), "size": self.size}


@dataclass
class PruningRecord:
    """What ``prune_filters`` removed; JSON-serialisable; ``a + b`` chains two steps."""

    entries: list[RecordEntry] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "entries": [e.to_dict() for e in self.entries],
                "shapes": {k: list(v) for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningRecord":
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"pruning record version {d.get('version')} is newer than this prunekit ({VERSION})")
        entries = [RecordEntry(e["name"], e["kind"], int(e["dim"]), tuple(int(i) for i in e["keep"]), int(e["size"]))
                   for e in d["entries"]]
        return cls(entries, {k: [int(s) for s in v] for k, v in d.get("shapes", {}).items()}, int(d.get("version", 1)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "PruningRecord":
        return cls.from_dict(json.loads(s))

    def __add__(self, other: "PruningRecord") -> "PruningRecord":
        return PruningRecord(self.entries + other.entries, {**self.shapes, **other.shapes})

    def __len__(self) -> int:
        return len(self.entries)

    def channels(self) -> dict[str, tuple[int, int]]:
        """Output channels kept per cut module: ``{name: (kept, before)}`` (first and last step)."""
        out: dict[str, tuple[int, int]] = {}
        for e in self.entries:
            if e.dim == 0 and e.kind == "module":
                out[e.name] = (len(e.keep), out.get(e.name, (0, e.size))[1])
        return out


def _current_size(model: nn.Module, e: RecordEntry) -> int:
    if e.kind == "param":
        owner, _, pname = e.name.rpartition(".")
        return getattr(model.get_submodule(owner), pname).shape[e.dim]
    module = model.get_submodule(e.name)
    handler = _handler(module, e.name)
    if isinstance(handler, ChannelwiseHandler):
        return handler.channels(module)
    return handler.out_channels(module) if e.dim == 0 else handler.in_channels(module)


def _handler(module: nn.Module, name: str):
    handler = get_handler(module)
    if handler is None:
        raise TypeError(f"record names {name!r} ({type(module).__name__}), which has no pruning handler; "
                        f"register one with pruning.register_handler before replaying")
    return handler


def apply_cut(model: nn.Module, e: RecordEntry) -> None:
    """Apply one record entry to ``model`` in place."""
    keep = torch.tensor(e.keep, dtype=torch.long)
    if e.kind == "param":
        owner, _, pname = e.name.rpartition(".")
        cut_tensor(model.get_submodule(owner), pname, keep, e.dim)
        return
    module = model.get_submodule(e.name)
    handler = _handler(module, e.name)
    (handler.prune_out if e.dim == 0 else handler.prune_in)(module, keep)


def apply_record(model: nn.Module, record: PruningRecord | dict[str, Any]) -> nn.Module:
    """Replay ``record`` on a freshly built dense ``model`` (in place; returned for chaining),
    so that the pruned weights load with ``load_state_dict(strict=True)``."""
    if isinstance(record, dict):
        record = PruningRecord.from_dict(record)
    for e in record.entries:
        try:
            size = _current_size(model, e)
        except AttributeError as err:
            raise ValueError(f"the record names {e.name!r}, which this model does not have: {err}") from None
        if size != e.size:
            raise ValueError(f"record entry for {e.name!r} (dim {e.dim}) expects {e.size} channels, the model has "
                             f"{size}: the record was made on a different architecture")
        apply_cut(model, e)
    if record.shapes:
        actual = {k: list(v.shape) for k, v in model.state_dict().items()}
        bad = [k for k, v in record.shapes.items() if actual.get(k) != v]
        if bad:
            raise ValueError(f"after replay, shapes differ from the record for {bad[:5]}: "
                             f"the model does not match the record's architecture")
    return model


def save_pruned(model: nn.Module, record: PruningRecord, path: str | os.PathLike | BinaryIO) -> None:
    """Save the pruned weights and the record that rebuilds their shapes (no pickled model)."""
    torch.save({"format": FORMAT, "version": VERSION, "record": record.to_dict(), "state_dict": model.state_dict()},
               path)


def read_record(path: str | os.PathLike | BinaryIO) -> PruningRecord:
    """The record stored in a file written by :func:`save_pruned`."""
    return PruningRecord.from_dict(_load(path)["record"])


def _load(path: str | os.PathLike | BinaryIO) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prunekit pruned-model file (expected format {FORMAT!r})")
    return payload


def load_pruned(builder: Callable[[], nn.Module], path: str | os.PathLike | BinaryIO) -> nn.Module:
    """Build the dense model with ``builder()``, replay the saved record, load the weights strictly."""
    payload = _load(path)
    model = apply_record(builder(), PruningRecord.from_dict(payload["record"]))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model
