"""Pruned structure as data: a JSON record of what was cut, replayable on a fresh model.

``PruningRecord.entries`` lists, in order, every cut: (module or parameter name, dim,
kept indices, size before). ``dim`` is 0 for output channels (or the channels of a
BatchNorm/LayerNorm/depthwise conv), 1 for input channels; for a bare parameter it is
the tensor dim. ``shapes`` holds the state-dict shapes of every cut module after the cut, checked on replay.

Loading a pruned model = build the dense model, replay the record, load the weights
with ``strict=True``; the file is read with ``torch.load(weights_only=True)``. Replay first
checks every entry against the model (names, dims, ``keep`` strictly increasing within
``[0, size)``) and raises :class:`RecordMismatchError` naming the entry before cutting anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from pruning.graph.handlers import ChannelwiseHandler, cut_tensor, get_handler

FORMAT = "prunekit.pruned"
VERSION = 1


class RecordError(ValueError):
    """A pruning record that is malformed (missing fields, wrong types)."""


class RecordMismatchError(RecordError):
    """A pruning record that does not fit the model it is replayed on; names the entry."""


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
    # after an approximate cut (``approximate=...``): the largest output difference between the
    # cut model and the dense model with the same channels zeroed, on the example inputs (not saved)
    approximation_error: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "entries": [e.to_dict() for e in self.entries],
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningRecord":
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"pruning record version {d.get('version')} is newer than this prunekit ({VERSION})")
        entries = []
        for i, e in enumerate(d.get("entries", ())):
            try:
                entries.append(
                    RecordEntry(
                        str(e["name"]), str(e["kind"]), int(e["dim"]), tuple(int(k) for k in e["keep"]), int(e["size"])
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise RecordError(
                    f"pruning record entry {i} is malformed ({type(err).__name__}: {err}); each entry "
                    "needs name, kind, dim, keep (a list of ints) and size"
                ) from None
        try:
            shapes = {str(k): [int(s) for s in v] for k, v in d.get("shapes", {}).items()}
        except (AttributeError, TypeError, ValueError) as err:
            raise RecordError(f"pruning record shapes are malformed ({err}): expected {{name: [ints]}}") from None
        return cls(entries, shapes, int(d.get("version", 1)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> "PruningRecord":
        return cls.from_dict(json.loads(s))

    def __add__(self, other: "PruningRecord") -> "PruningRecord":
        errors = [e for e in (self.approximation_error, other.approximation_error) if e is not None]
        return PruningRecord(
            self.entries + other.entries, {**self.shapes, **other.shapes}, approximation_error=max(errors, default=None)
        )

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
        raise TypeError(
            f"record names {name!r} ({type(module).__name__}), which has no pruning handler; "
            f"register one with pruning.register_handler before replaying"
        )
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


def _where(i: int, e: RecordEntry) -> str:
    return f"pruning record entry {i} ({e.kind} {e.name!r}, dim {e.dim})"


def check_entry(model: nn.Module, i: int, e: RecordEntry) -> None:
    """Check entry ``i`` against ``model`` before anything is cut: the module or tensor exists
    and has a pruning handler, ``dim`` is one it can cut, and ``keep`` lists distinct indices
    in ``[0, size)`` in increasing order (the order ``prune_filters`` records)."""
    where = _where(i, e)
    if e.kind == "param":
        owner_name, _, pname = e.name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError:
            raise RecordMismatchError(
                f"{where}: this model does not have a module {owner_name!r} "
                "(the record was made on a different architecture)"
            ) from None
        tensor = getattr(owner, pname, None)
        if not torch.is_tensor(tensor):
            raise RecordMismatchError(
                f"{where}: this model does not have a parameter or buffer {e.name!r} "
                "(the record was made on a different architecture)"
            )
        if not 0 <= e.dim < tensor.dim():
            raise RecordMismatchError(
                f"{where}: {e.name!r} has {tensor.dim()} dims, so dim must be in [0, {tensor.dim()})"
            )
    elif e.kind == "module":
        try:
            module = model.get_submodule(e.name)
        except AttributeError:
            raise RecordMismatchError(
                f"{where}: this model does not have a module {e.name!r} "
                "(the record was made on a different architecture)"
            ) from None
        handler = _handler(module, e.name)
        allowed = (0,) if isinstance(handler, ChannelwiseHandler) else (0, 1)
        if e.dim not in allowed:
            raise RecordMismatchError(
                f"{where}: {type(module).__name__} channels are cut along dim "
                f"{' or '.join(map(str, allowed))} (0: outputs, 1: inputs), not {e.dim}"
            )
    else:
        raise RecordMismatchError(f"{where}: kind must be 'module' or 'param', not {e.kind!r}")
    if e.size < 1:
        raise RecordMismatchError(f"{where}: size={e.size}, a cut needs at least one channel before it")
    bad = [k for k in e.keep if not 0 <= k < e.size]
    if bad:
        raise RecordMismatchError(
            f"{where}: keep indices {bad[:5]} are outside [0, {e.size}) "
            f"(size {e.size}); the record is corrupt or from another model"
        )
    if len(set(e.keep)) != len(e.keep):
        dups = sorted({k for k in e.keep if e.keep.count(k) > 1})
        raise RecordMismatchError(f"{where}: keep lists indices {dups[:5]} more than once")
    if any(a >= b for a, b in zip(e.keep, e.keep[1:])):
        raise RecordMismatchError(
            f"{where}: keep indices are not in increasing order; prunekit records kept "
            "channels in their original order, so this record was altered"
        )


def apply_record(model: nn.Module, record: PruningRecord | dict[str, Any]) -> nn.Module:
    """Replay ``record`` on a freshly built dense ``model`` (in place; returned for chaining),
    so that the pruned weights load with ``load_state_dict(strict=True)``.

    Raises :class:`RecordMismatchError` (a ``ValueError``) naming the entry that does not
    fit; the structural checks of every entry run before the first cut.
    """
    if isinstance(record, dict):
        record = PruningRecord.from_dict(record)
    for i, e in enumerate(record.entries):
        check_entry(model, i, e)
    for i, e in enumerate(record.entries):
        size = _current_size(model, e)
        if size != e.size:
            raise RecordMismatchError(
                f"{_where(i, e)} expects {e.size} channels, the model has {size} at that "
                "point: the record was made on a different architecture"
            )
        apply_cut(model, e)
    if record.shapes:
        actual = {k: list(v.shape) for k, v in model.state_dict().items()}
        bad = [k for k, v in record.shapes.items() if actual.get(k) != v]
        if bad:
            detail = ", ".join(f"{k}: record {record.shapes[k]}, model {actual.get(k, 'absent')}" for k in bad[:5])
            raise RecordMismatchError(
                f"after replay, shapes differ from the record for {detail}: "
                f"the model does not match the record's architecture"
            )
    return model


def save_pruned(model: nn.Module, record: PruningRecord, path: str | os.PathLike | BinaryIO) -> None:
    """Save the pruned weights and the record that rebuilds their shapes (no pickled model)."""
    torch.save(
        {"format": FORMAT, "version": VERSION, "record": record.to_dict(), "state_dict": model.state_dict()}, path
    )


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
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise RecordMismatchError(
            f"{path}: the weights do not fit the model rebuilt from its record ({err}); "
            "the builder must make the dense model the file was pruned from"
        ) from None
    return model
