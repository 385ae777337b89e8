"""Preloaded tensor datasets: the base DataModule, its batch iterator and batched augmentation.

Every datamodule exposes ``num_classes``, ``in_channels``, ``input_size`` and
``example_inputs()`` so models and pruning can be built before any training.
A fixed validation split is carved from the training set (seeded independently of the
run seed); the test set is only used for the final numbers of each phase.

Shuffling and augmentation draw from a generator seeded by ``reseed(seed)`` and the epoch
within the phase only, so a phase sees the same batches whether earlier phases trained,
came from the cache or were resumed. ``data_source`` names the folder the files were read
from and ``data_identity()`` describes their content (for the baseline cache key).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says how to get it."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch, from (loader seed, epoch) only."""
    digest = hashlib.sha256(f"{int(seed)}/epoch{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class TensorBatches:
    """An iterable of (x, y) batches sliced from preloaded tensors.

    Much faster than a per-sample DataLoader: one index permutation per epoch, one
    gather per batch, augmentation applied to the whole batch. Epoch ``e`` (the ``e``-th
    iteration, or the one set by ``set_epoch``) draws its permutation and augmentation
    from a generator seeded by ``(seed, e)`` alone, never from the global RNG.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = int(seed)
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(epoch_seed(self.seed, 0))

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.generator = gen
        self.epoch += 1
        return self._batches(gen)

    def _batches(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl].to(self.x.device) if order is not None else sl
            xb, yb = self.x[idx], self.y[idx]
            if self.augment is not None:
                xb = self.augment(xb, gen)
            yield xb, yb


def random_crop_flip(padding: int = 4, flip: bool = True) -> Callable:
    """Batched pad-and-random-crop plus horizontal flip (the CIFAR recipe)."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # n, h
        cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # n, w
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        out = out.permute(0, 3, 1, 2)
        if flip:
            mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
            out = torch.where(mask[:, None, None, None], out.flip(3), out)
        return out.contiguous()

    return augment


class TensorDataModule(L.LightningDataModule):
    """Base class: subclasses implement ``load_arrays`` returning uint8/float arrays.

    ``root`` must hold a complete copy of the dataset unless ``fallback`` is true, which
    allows the system copy (where one exists) or a download into ``root`` instead.
    """

    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __init__(
        self,
        root: str | None = None,
        name: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        train_subset: int | None = None,
        augment: bool = False,
        download: bool = True,
        split_seed: int = 12345,
        device: str = "cpu",
        fallback: bool = False,
    ) -> None:
        super().__init__()
        self.root = root
        self.fallback = fallback
        self.name = name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.train_subset = train_subset
        self.augment = augment
        self.download = download
        self.split_seed = split_seed
        self.device = device
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._identity: dict[str, Any] | None = None
        self.shuffle_seed = 0
        self.data_source: str | None = None  # the folder the files were read from (set by setup)
        self.data_files: list[Path] = []

    # -- subclasses -------------------------------------------------------------------
    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Return {'train': (images NCHW or NHW uint8, labels), 'test': (...)}."""
        raise NotImplementedError

    def batch_augment(self) -> Callable | None:
        return None

    # -- lightning --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        arrays = self.load_arrays()
        self._identity = arrays_identity(arrays)
        if self.data_source is None:  # a subclass that does not say where its arrays come from
            self.data_source = f"{type(self).__name__}.load_arrays()"
        log.info(
            "dataset %s: data from %s (%d train and %d test samples)",
            self.name or type(self).__name__,
            self.data_source,
            len(arrays["train"][1]),
            len(arrays["test"][1]),
        )
        x_train, y_train = self._to_tensors(*arrays["train"])
        x_test, y_test = self._to_tensors(*arrays["test"])
        if self.val_size >= len(y_train):
            raise ValueError(
                f"dataset.val_size={self.val_size} but the training set has only {len(y_train)} "
                "samples: choose a smaller val_size"
            )
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self._splits = {
            "train": (x_train[train_idx], y_train[train_idx]),
            "val": (x_train[val_idx], y_train[val_idx]),
            "test": (x_test, y_test),
        }

    def _to_tensors(self, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(images, copy=True))
        is_bytes = x.dtype == torch.uint8
        if x.dim() == 3:
            x = x.unsqueeze(1)
        elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        x = x.float()
        if is_bytes:
            x = x / 255.0
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        x = ((x - mean) / std).contiguous().to(self.device)
        y = torch.from_numpy(np.array(labels, copy=True)).long().to(self.device)
        return x, y

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.setup()
        assert self._splits is not None
        return self._splits[name]

    def reseed(self, seed: int) -> None:
        """Seed the train loaders of the next phase: their shuffling and augmentation then
        depend on ``seed`` and the epoch within the phase only (not on earlier loaders)."""
        self.shuffle_seed = int(seed)

    def train_dataloader(self) -> TensorBatches:
        """A loader starting at epoch 0 of the current seed (see ``reseed``)."""
        x, y = self.split("train")
        aug = self.batch_augment() if self.augment else None
        return TensorBatches(x, y, self.batch_size, shuffle=True, augment=aug, seed=self.shuffle_seed)

    def val_dataloader(self) -> TensorBatches:
        x, y = self.split("val")
        return TensorBatches(x, y, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        x, y = self.split("test")
        return TensorBatches(x, y, self.eval_batch_size, shuffle=False)

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        """A small real batch from the training split (for tracing and measuring)."""
        return self.split("train")[0][:n].clone()

    def data_report(self) -> dict[str, Any]:
        """What the results row records about the data: samples per split."""
        self.setup()
        assert self._splits is not None
        return {"images": {name: len(y) for name, (_, y) in self._splits.items()}}

    def data_identity(self) -> dict[str, Any]:
        """What the data is, independent of where it lies: a sha256 of the loaded train and
        test arrays with their shapes (JSON-able; part of the baseline cache key)."""
        self.setup()
        assert self._identity is not None
        return dict(self._identity)


def arrays_identity(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """sha256 over the dtype, shape and bytes of every array, and the shapes themselves."""
    digest = hashlib.sha256()
    shapes: dict[str, list[list[int]]] = {}
    for split in sorted(arrays):
        shapes[split] = []
        for array in arrays[split]:
            array = np.ascontiguousarray(array)
            digest.update(f"{split}:{array.dtype.str}:{array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
            shapes[split].append(list(array.shape))
    return {"sha256": digest.hexdigest(), "shapes": shapes}


def list_missing(directory: Path, names: list[str]) -> list[str]:
    """The ``names`` that are not regular files in ``directory``."""
    return [n for n in names if not (directory / n).is_file()]
