"""Fashion-MNIST from its IDX files: a folder, Debian's ``dataset-fashion-mnist``, or a download."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from experiments.data.tensors import DataUnavailableError, TensorDataModule
from experiments.data.torchvision_sets import socket_timeout

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array, validating its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataUnavailableError(f"cannot read {path}: {err} (corrupt or truncated download?)") from err
    if len(data) < 4:
        raise DataUnavailableError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataUnavailableError(f"{path} is not an unsigned-byte IDX file (bad magic)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataUnavailableError(f"{path}: expected {int(np.prod(dims))} values, found {body.size} (truncated?)")
    return body.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (
        directory / stem,
        directory / f"{stem}.gz",
        directory / "raw" / stem,
        directory / "raw" / f"{stem}.gz",
    ):
        if candidate.exists():
            return candidate
    return None


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST: the IDX files in ``root``; without ``root`` (or with ``fallback``)
    Debian's ``dataset-fashion-mnist``, then a download into ``root``."""

    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.2860,), (0.3530,)
    how_to_get = (
        "Install it offline with `sudo apt-get install -y dataset-fashion-mnist` (files land in "
        f"{DEBIAN_FASHION_MNIST}), or put the four IDX files (train-images-idx3-ubyte.gz, ...) "
        "in a folder and pass dataset.root=/that/folder"
    )

    def root_dirs(self) -> list[Path]:
        """Where files under ``root`` may lie (flat, or torchvision's ``FashionMNIST/raw``)."""
        return [Path(self.root), Path(self.root) / "FashionMNIST"] if self.root else []

    def candidate_dirs(self) -> list[Path]:
        """Every folder searched, in order: the system copy only without ``root`` or with ``fallback``."""
        dirs = self.root_dirs()
        if not self.root or self.fallback:
            dirs.append(DEBIAN_FASHION_MNIST)
        return dirs

    @staticmethod
    def _scan(directory: Path) -> tuple[dict[str, tuple[Path | None, Path | None]], list[str]]:
        found = {
            split: tuple(_find_idx(directory, stem) for stem in stems) for split, stems in FASHION_MNIST_FILES.items()
        }
        missing = [
            stem
            for split, stems in FASHION_MNIST_FILES.items()
            for stem, path in zip(stems, found[split])
            if path is None
        ]
        return found, missing  # type: ignore[return-value]

    def locate(self) -> dict[str, tuple[Path, Path]] | None:
        for d in self.candidate_dirs():
            found, missing = self._scan(d)
            if not missing:
                return found  # type: ignore[return-value]
        return None

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        found = self.locate()
        if found is None and self.root and not self.fallback:
            _, missing = self._scan(Path(self.root))
            raise DataUnavailableError(
                f"dataset.root={self.root!r} lacks Fashion-MNIST files: {', '.join(m + '[.gz]' for m in missing)} "
                f"not found in {self.root} (nor in {Path(self.root) / 'FashionMNIST'}, raw/ included). Put the "
                "four IDX files there, or pass dataset.fallback=true to use the system copy "
                f"({DEBIAN_FASHION_MNIST}) or download into that folder. {self.how_to_get}"
            )
        if found is None and self.download and self.root:
            self._download()
            found = self.locate()
        if found is None:
            where = ", ".join(str(d) for d in self.candidate_dirs())
            raise DataUnavailableError(f"Fashion-MNIST not found in {where}. {self.how_to_get}")
        self.data_files = [p for pair in found.values() for p in pair]
        self.data_source = str(found["train"][0].parent.resolve())
        if self.root and not any(_inside(Path(self.data_source), d) for d in self.root_dirs()):
            log.warning(
                "dataset.root=%s lacks Fashion-MNIST; dataset.fallback=true: using %s", self.root, self.data_source
            )
        return {split: (read_idx(img), read_idx(lbl)) for split, (img, lbl) in found.items()}

    def _download(self) -> None:
        from torchvision.datasets import FashionMNIST

        try:
            with socket_timeout(10):
                for train in (True, False):
                    FashionMNIST(self.root, train=train, download=True)
        except Exception as err:  # network errors come in many types
            raise DataUnavailableError(
                f"Fashion-MNIST download to {self.root} failed ({err}). {self.how_to_get}"
            ) from err


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False
