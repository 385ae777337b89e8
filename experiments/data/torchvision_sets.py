"""MNIST and CIFAR-10/100 from torchvision's files (its folder layout under ``dataset.root``)."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from experiments.data.tensors import DataUnavailableError, TensorDataModule, list_missing, random_crop_flip

log = logging.getLogger(__name__)


def _md5_matches(path: Path, md5: str) -> bool:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == md5


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Make downloads fail fast instead of hanging when there is no network."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


class TorchvisionDataModule(TensorDataModule):
    """MNIST / CIFAR through torchvision: the files in ``root`` (default ``./data``); a
    download there when they are missing, which an explicit ``root`` allows only with
    ``fallback``."""

    dataset_name: str = ""

    def expected_files(self, root: str) -> tuple[Path, list[str]]:
        """The folder torchvision reads under ``root`` and the file names it needs there."""
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_name)
        if hasattr(cls, "resources"):  # MNIST family: <root>/<Class>/raw/<file without .gz>
            return Path(root) / cls.__name__ / "raw", [
                os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources
            ]
        names = [name for name, _ in (*cls.train_list, *cls.test_list)] + [cls.meta["filename"]]
        return Path(root) / cls.base_folder, names

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_name)
        root = self.root or "data"
        out = {}
        for split, train in (("train", True), ("test", False)):
            try:
                out[split] = self.read_split(root, train)
            except DataUnavailableError:  # files there but unreadable: the message names them
                raise
            except RuntimeError:
                if self.root is not None and not self.fallback:
                    raise DataUnavailableError(self._incomplete(root)) from None
                if not self.download:
                    raise DataUnavailableError(self._missing(root)) from None
                try:
                    with socket_timeout(10):
                        cls(root, train=train, download=True)
                except Exception as err:
                    raise DataUnavailableError(f"{self._missing(root)} Download failed: {err}") from err
                out[split] = self.read_split(root, train)
        folder, names = self.expected_files(root)
        self.data_source = str(folder.resolve())
        self.data_files = [folder / n for n in names if (folder / n).is_file()]
        return out

    def read_split(self, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of one split through torchvision; RuntimeError when its files are missing."""
        import torchvision.datasets as tvd

        ds = getattr(tvd, self.dataset_name)(root, train=train, download=False)
        images = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
        labels = ds.targets.numpy() if torch.is_tensor(ds.targets) else np.asarray(ds.targets)
        return images, labels

    def _incomplete(self, root: str) -> str:
        folder, names = self.expected_files(root)
        missing = list_missing(folder, names)
        what = (
            f"lacks {', '.join(missing)} in {folder}"
            if missing
            else f"has every file in {folder} but torchvision cannot read them (corrupt?)"
        )
        return (
            f"dataset.root={root!r} {what}. Copy torchvision's {self.dataset_name} files there, or pass "
            "dataset.fallback=true to download them into that folder (needs a network and dataset.download=true)."
        )

    def _missing(self, root: str) -> str:
        return (
            f"{self.dataset_name} not found under dataset.root={root!r}. With a network it is "
            f"downloaded there automatically; offline, copy torchvision's {self.dataset_name} files into "
            "that folder (the layout torchvision.datasets expects) or use dataset=fashion_mnist."
        )


class MNISTDataModule(TorchvisionDataModule):
    dataset_name = "MNIST"
    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.1307,), (0.3081,)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only: a CIFAR batch cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8, labels) of one pickled CIFAR batch (torchvision's
    layout), unpickled safely; a file of another shape is an error naming it."""
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as err:
        raise DataUnavailableError(
            f"cannot read the CIFAR batch {path} ({type(err).__name__}: {err}); expected a pickled dict with "
            f"'data' (N x 3072 uint8) and {label_key!r} (N labels), as in torchvision's download"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataUnavailableError(
            f"the CIFAR batch {path} has data of shape {list(data.shape)} and {len(labels)} labels; "
            "expected N x 3072 and N labels"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``), read with a safe unpickler. Files that differ from the official
    release (a subset, your own data in its format) are used, with a log line saying so."""

    dataset_name = "CIFAR10"
    label_key = "labels"
    num_classes, in_channels, input_size = 10, 3, 32
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def read_split(self, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_name)
        folder = Path(root) / cls.base_folder
        files = cls.train_list if train else cls.test_list
        if list_missing(folder, [name for name, _ in files] + [cls.meta["filename"]]):
            raise RuntimeError(f"{self.dataset_name} files missing in {folder}")
        parts = [read_cifar_batch(folder / name, self.label_key) for name, _ in files]
        mismatched = [name for name, md5 in files if not _md5_matches(folder / name, md5)]
        if mismatched:
            log.info(
                "%s: %s differ from the official release (md5); using them as they are", folder, ", ".join(mismatched)
            )
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataUnavailableError(
                f"{folder}: labels must be in [0, {self.num_classes}) for {self.dataset_name}; found "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        return images, labels

    def batch_augment(self) -> Callable:
        return random_crop_flip(4, True)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/`` (``train``, ``test``, ``meta``)."""

    dataset_name = "CIFAR100"
    label_key = "fine_labels"
    num_classes = 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
