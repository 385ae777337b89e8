"""Image files on disk: finding an ImageFolder tree's splits, checking the files, decoding them.

The pieces :class:`experiments.data.image_folder.ImageFolderDataModule` streams from:
``find_layout`` (which folders are train/val/test), ``list_samples`` (class folders ->
(path, label)), ``stratified_split`` (a seeded per-class hold-out), ``check_images`` (PIL
``verify()`` of every file, cached by the folder listing), ``ImageFiles`` (a Dataset that
decodes in DataLoader workers) and ``EpochSampler`` (seeded shuffling whose per-sample
augmentation seeds travel with the indices, so batches do not depend on the worker count).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from experiments.data.tensors import DataUnavailableError, epoch_seed
from experiments.storage.files import atomic_write_text

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
Sample = tuple[str, int]  # (path, class index)


class BadImageError(DataUnavailableError):
    """An image file that PIL cannot open or decode; the message names the file."""


@dataclass(frozen=True)
class Layout:
    """Which folders hold which split; ``None`` means carved from ``train`` by a fraction."""

    train: Path
    val: Path | None
    test: Path | None

    def describe(self) -> str:
        def name(p: Path | None, fraction: str) -> str:
            return str(p) if p is not None else f"{fraction} of {self.train}"

        return f"train {self.train}, val {name(self.val, 'val_fraction')}, test {name(self.test, 'test_fraction')}"


def find_layout(root: Path) -> Layout:
    """``root/train`` with ``root/val`` and/or ``root/test``, or ``root`` itself as one folder.

    With ``train/`` and only one of ``val/``/``test/``, that folder is the test split (the
    reported numbers) and validation is carved from ``train/``; with both, ``val/`` is the
    validation split. Without ``train/``, ``root``'s class folders are split by fractions.
    """
    if not root.is_dir():
        raise DataUnavailableError(f"dataset.root={str(root)!r}: no such directory")
    train = root / "train"
    if not train.is_dir():
        return Layout(root, None, None)
    val, test = root / "val", root / "test"
    val_dir = val if val.is_dir() else None
    test_dir = test if test.is_dir() else None
    if test_dir is None:
        return Layout(train, None, val_dir)
    return Layout(train, val_dir, test_dir)


def find_classes(directory: Path) -> list[str]:
    """The class names: the sub-folders of ``directory``, sorted (torchvision's rule)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataUnavailableError(
            f"dataset.root: {directory} has no class folders; expected {directory}/<class>/<image>.png "
            f"(one folder per class, images ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes


def list_samples(directory: Path, classes: Sequence[str], what: str) -> list[Sample]:
    """Every image under ``directory/<class>/`` (recursively, sorted) labelled by ``classes``.

    A class folder that the training split lacks is an error naming it: its label would mean
    nothing to the model.
    """
    foreign = sorted(set(find_classes(directory)) - set(classes)) if directory.is_dir() else []
    if foreign:
        raise DataUnavailableError(
            f"dataset.root: the {what} folder {directory} has classes the training folder lacks: "
            f"{', '.join(foreign[:10])}; every class needs training images"
        )
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        folder = directory / name
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames.sort()
            for file in sorted(filenames):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, file), label))
    if not samples:
        raise DataUnavailableError(
            f"dataset.root: the {what} folder {directory} has no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return samples


def class_quotas(counts: Sequence[int], fraction: float) -> list[int]:
    """How many of each class to hold out: ``round(fraction * total)`` in all (at least one
    when ``fraction`` > 0), shared between classes in proportion by largest remainders."""
    total = sum(counts)
    target = min(total, max(1, int(fraction * total + 0.5))) if fraction > 0 else 0
    exact = [fraction * n for n in counts]
    quotas = [min(n, int(e)) for n, e in zip(counts, exact)]
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - int(exact[c])), c))
    while sum(quotas) < target:
        progressed = False
        for c in order:
            if sum(quotas) < target and quotas[c] < counts[c]:
                quotas[c] += 1
                progressed = True
        if not progressed:
            break
    return quotas


def stratified_split(
    samples: Sequence[Sample], fractions: Sequence[float], seed: int
) -> tuple[list[Sample], list[list[Sample]]]:
    """Hold out ``fraction`` of the images per fraction, in proportion from every class
    (:func:`class_quotas`, seeded choice); returns (the rest, [held-out part per fraction]),
    each in the original order."""
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    labels = sorted(by_class)
    gen = torch.Generator().manual_seed(int(seed))
    order = {c: [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=gen).tolist()] for c in labels}
    start = dict.fromkeys(labels, 0)
    held: list[list[int]] = []
    for fraction in fractions:
        left = [len(order[c]) - start[c] for c in labels]
        quotas = class_quotas(left, fraction * len(samples) / max(1, sum(left)))
        part = []
        for c, count in zip(labels, quotas):
            part.extend(order[c][start[c] : start[c] + count])
            start[c] += count
        held.append(part)
    taken = {i for part in held for i in part}
    rest = [s for i, s in enumerate(samples) if i not in taken]
    return rest, [[samples[i] for i in sorted(part)] for part in held]


def listing_key(samples: Sequence[Sample], root: Path) -> str:
    """sha256 of (path relative to ``root``, label, size, mtime) of every file: what the
    files are, wherever the folder lies; a rewritten file changes it."""
    digest = hashlib.sha256()
    for path, label in samples:
        st = os.stat(path)
        rel = os.path.relpath(path, root)
        digest.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _open_image(path: str, mode: str):
    from PIL import Image

    with open(path, "rb") as f:
        image = Image.open(f)
        return image.convert(mode)  # decodes now, while the file is open


def verify_image(path: str) -> str | None:
    """Why PIL cannot read ``path`` (``None`` if its header and, for PNG, its chunks check out).
    ``verify()`` reads the file without decoding the pixels, so this is cheap."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError)
        return f"{type(err).__name__}: {err}"
    return None


def check_images(samples: Sequence[Sample], cache_file: Path | None, threads: int = 1) -> dict[str, str]:
    """{path: why} for every file that fails :func:`verify_image` (on ``threads`` threads:
    it is file reading); the answer is cached in ``cache_file`` (keyed by the listing, so a
    changed file is checked again)."""
    if cache_file is not None and cache_file.is_file():
        try:
            return dict(json.loads(cache_file.read_text())["bad"])
        except (ValueError, KeyError, TypeError):
            log.warning("image check cache %s is unreadable; checking the images again", cache_file)
    paths = [path for path, _ in samples]
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(verify_image, paths, chunksize=64))
    else:
        answers = [verify_image(path) for path in paths]
    bad = {path: why for path, why in zip(paths, answers) if why is not None}
    if cache_file is not None:
        atomic_write_text(cache_file, json.dumps({"checked": len(samples), "bad": bad}, indent=1) + "\n")
    return bad


class ImageFiles(Dataset):
    """Decodes ``samples`` with PIL in whichever process asks (the DataLoader's workers).

    An item is an index (deterministic ``transform``) or ``(index, seed)`` from
    :class:`EpochSampler`: the random ``transform`` then draws from torch's RNG seeded by
    ``seed`` and restored afterwards, so augmentation does not depend on the worker count.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, mode: str) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        """The PIL image of sample ``index``; an unreadable file is an error naming it."""
        path = self.samples[index][0]
        try:
            return _open_image(path, self.mode)
        except Exception as err:
            raise BadImageError(
                f"cannot decode image {path} ({type(err).__name__}: {err}); remove or replace it, or pass "
                "dataset.skip_bad=true to skip the files that fail the check at setup"
            ) from err

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.load(index)
        if seed is None:
            x = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.transform(image)
        return x, self.samples[index][1]


class EpochSampler(Sampler):
    """Yields ``(index, sample seed)``: a permutation (or the identity) and one seed per
    sample, both drawn from ``epoch_seed(seed, epoch)`` only (as ``TensorBatches``)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (Lightning calls it at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=gen)
        return iter(zip(order.tolist(), seeds.tolist()))


def channel_stats(loader: Any, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of every pixel the loader yields (float64 sums)."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for x, _ in loader:
        x = x.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        pixels += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(1e-12).sqrt()
    return [float(v) for v in mean], [float(v) for v in std]
