"""Trained weights from a file: a plain state dict, a Lightning checkpoint, a torchvision weights
file, a timm training checkpoint or a ``.safetensors`` file.

Used by ``baseline.checkpoint=PATH`` (start from trained weights instead of training) and
``model=tv|timm model.weights=PATH`` (initialise a torchvision or timm architecture). Always
``torch.load(..., weights_only=True)`` (a timm checkpoint's ``argparse.Namespace`` of training
arguments is the one extra type allowed) and ``load_state_dict(strict=True)``; a file that is
missing, unreadable or does not fit the model is an error naming the config key, the path
and the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from experiments.checks import ConfigError

# prefixes a whole state dict may carry: Lightning's ``Classifier.model``, DataParallel/DDP, torch.compile
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")


class CheckpointError(ConfigError):
    """A weights file that cannot be used; the message names the key, the path and why."""


def check_weights_path(key: str, path: Any) -> None:
    """``key=path`` must be null or an existing file (checked before anything trains)."""
    if path is None or path == "":
        return
    if not isinstance(path, (str, Path)):
        raise CheckpointError(f"{key}={path!r}: must be null or the path of a weights file")
    if not Path(path).is_file():
        raise CheckpointError(
            f"{key}={str(path)!r}: no such file. Pass a state dict saved with torch.save(model.state_dict(), PATH), "
            "a Lightning checkpoint (.ckpt) or a torchvision weights file (.pth)"
        )


def file_sha256(path: str | Path) -> str:
    """sha256 of the file's bytes (recorded with the run; a cache key for model.weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Remove a wrapper prefix that every key carries (repeatedly: ``module.model.``)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], str]:
    """The model's tensors in the file at ``path`` and the file's format.

    A Lightning checkpoint (``{'state_dict': ..., 'pytorch-lightning_version': ...}``)
    contributes the entries of the ``Classifier``'s ``model.`` attribute; ``{'state_dict':
    ...}`` and ``{'model': ...}`` wrappers (our baseline cache entries among them) are opened.
    """
    check_weights_path(key, path)
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            return _strip_prefix(load_file(str(path), device="cpu")), "safetensors"
        # timm's train.py stores its argparse.Namespace beside the weights: allowed, nothing else
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zips, pickles of objects, random bytes: all unusable
        raise CheckpointError(
            f"{key}={str(path)!r}: cannot be loaded with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). It must hold tensors only: save the weights with "
            "torch.save(model.state_dict(), PATH)"
        ) from err
    fmt = "state_dict"
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), Mapping):
        fmt = "lightning"
        state = dict(obj["state_dict"])
        inner = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        state = inner or state
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        fmt = "timm checkpoint" if "arch" in obj else "wrapped state_dict"
        state = dict(obj["state_dict"])
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        fmt, state = "wrapped state_dict", dict(obj["model"])
    elif isinstance(obj, Mapping):
        state = dict(obj)
    else:
        raise CheckpointError(f"{key}={str(path)!r}: holds a {type(obj).__name__}, not a state dict of tensors")
    not_tensors = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors or not state:
        raise CheckpointError(
            f"{key}={str(path)!r}: not a state dict of tensors"
            + (f" ({', '.join(map(str, not_tensors[:5]))} are not tensors)" if not_tensors else " (it is empty)")
        )
    return _strip_prefix(state), fmt


def _head(model: nn.Module) -> str | None:
    """The name of the model's last Linear (its classifier), if any."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def mismatch(state: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """How ``state`` differs from ``model``'s state dict: missing, unexpected, shapes."""
    like = model.state_dict()
    missing = [k for k in like if k not in state]
    unexpected = [k for k in state if k not in like]
    shapes = [
        f"{k}: file {list(state[k].shape)}, model {list(v.shape)}"
        for k, v in like.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]

    def some(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    out = []
    if missing:
        out.append(f"missing keys ({len(missing)}): {some(missing)}")
    if unexpected:
        out.append(f"unexpected keys ({len(unexpected)}): {some(unexpected)}")
    if shapes:
        out.append(f"shape mismatches ({len(shapes)}): {some(shapes)}")
    return out


def load_weights(model: nn.Module, path: str | Path, key: str) -> dict[str, Any]:
    """Load the weights at ``path`` into ``model`` strictly; returns what the run records
    (``path``, ``sha256``, ``bytes``, ``format``). Nothing is changed when they do not fit."""
    state, fmt = read_state_dict(path, key)
    problems = mismatch(state, model)
    if problems:
        head = _head(model)
        hint = ""
        if head is not None and f"{head}.weight" in state and f"{head}.weight" in model.state_dict():
            ours, theirs = model.state_dict()[f"{head}.weight"].shape[0], state[f"{head}.weight"].shape[0]
            if ours != theirs:
                hint = (
                    f" The file's classifier {head!r} has {theirs} outputs but the dataset has {ours} classes: use "
                    "weights trained on this dataset's classes."
                )
        raise CheckpointError(
            f"{key}={str(path)!r} does not fit the model ({type(model).__name__}): {'; '.join(problems)}.{hint} "
            "Check model=/model.name= against the architecture the file was saved from."
        )
    model.load_state_dict(state, strict=True)
    return {
        "path": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        "bytes": Path(path).stat().st_size,
        "format": fmt,
    }
