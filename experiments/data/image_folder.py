"""Your own images: a torchvision ``ImageFolder`` tree, streamed from disk.

``dataset=image_folder dataset.root=DIR`` reads ``DIR/train/<class>/*.png`` with
``DIR/val/`` and/or ``DIR/test/`` (see :func:`experiments.data.image_files.find_layout`),
or one folder of class folders split by ``val_fraction``/``test_fraction`` (seeded, per
class). Unlike the built-in datasets nothing is preloaded: images are decoded and
transformed in DataLoader workers (``num_workers``, persistent across epochs, pinned memory
on a GPU). Evaluation resizes the shorter side to ``resize`` and centre-crops
``image_size``; training (``augment``) takes a random resized crop (``crop_scale``) and a
horizontal flip, seeded per sample so the batches depend on the phase seed and epoch only.
Normalisation uses ``mean``/``std`` when given, else the training split's per-channel
statistics, computed once and cached under ``cache_dir`` by the folder's file listing.

Every file is checked with PIL's ``verify()`` at setup (cheap: no pixel decoding; the
answer is cached by the listing). A bad file stops the run naming it, or with
``skip_bad=true`` is left out, counted, logged and recorded in the run's row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from experiments.checks import ConfigError
from experiments.data.image_files import (
    BadImageError,
    EpochSampler,
    ImageFiles,
    Layout,
    Sample,
    channel_stats,
    check_images,
    find_classes,
    find_layout,
    list_samples,
    listing_key,
    stratified_split,
)
from experiments.storage.files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["BadImageError", "ImageFolderDataModule", "check_image_folder_config"]


def _config_error(message: str) -> Exception:
    return ConfigError(message)


def _number(cfg: Any, key: str, low: float, high: float, *, integer: bool = False, closed_high: bool = False) -> None:
    value = cfg.get(key)
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise _config_error(f"dataset.{key}={value!r}: must be {kind} in [{low}, {high}{']' if closed_high else ')'}")
    if not (low <= value <= high if closed_high else low <= value < high):
        raise _config_error(f"dataset.{key}={value!r}: must be in [{low}, {high}{']' if closed_high else ')'}")


def check_image_folder_config(cfg: Any) -> None:
    """Reject bad ``dataset.*`` values of ``dataset=image_folder`` before anything loads."""
    if not cfg.get("root"):
        raise _config_error(
            "dataset.root=null: dataset=image_folder needs dataset.root=DIR, a folder with train/ and val/ "
            "(or test/) holding one sub-folder per class, or one folder of class folders"
        )
    _number(cfg, "image_size", 1, math.inf, integer=True)
    if cfg.get("resize") is not None:
        _number(cfg, "resize", cfg.image_size, math.inf, integer=True)
    _number(cfg, "val_fraction", 0.0, 1.0)
    _number(cfg, "test_fraction", 0.0, 1.0)
    _number(cfg, "num_workers", 0, math.inf, integer=True)
    if cfg.get("channels") not in (1, 3):
        raise _config_error(f"dataset.channels={cfg.get('channels')!r}: allowed values are 1 (grayscale), 3 (RGB)")
    scale = cfg.get("crop_scale")
    if scale is None or len(scale) != 2 or not all(isinstance(v, (int, float)) for v in scale):
        raise _config_error(f"dataset.crop_scale={scale!r}: must be [low, high] with 0 < low <= high <= 1")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise _config_error(f"dataset.crop_scale={list(scale)!r}: must be [low, high] with 0 < low <= high <= 1")
    mean, std = cfg.get("mean"), cfg.get("std")
    if (mean is None) != (std is None):
        raise _config_error("dataset.mean and dataset.std: give both (one value per channel) or neither (computed)")
    if mean is not None:
        for key, values in (("mean", mean), ("std", std)):
            if len(values) != cfg.channels or not all(isinstance(v, (int, float)) for v in values):
                raise _config_error(
                    f"dataset.{key}={list(values)!r}: must be {cfg.channels} numbers (dataset.channels)"
                )
        if any(v <= 0 for v in std):
            raise _config_error(f"dataset.std={list(std)!r}: every value must be > 0")
    for key in ("train_subset", "stats_images"):
        if cfg.get(key) is not None:
            _number(cfg, key, 1, math.inf, integer=True)
    for key in ("augment", "persistent_workers", "skip_bad"):
        if not isinstance(cfg.get(key), bool):
            raise _config_error(f"dataset.{key}={cfg.get(key)!r}: allowed values are true, false")
    if cfg.get("pin_memory") not in (None, True, False):
        raise _config_error(
            f"dataset.pin_memory={cfg.get('pin_memory')!r}: allowed values are null (auto), true, false"
        )


class ImageFolderDataModule(L.LightningDataModule):
    """Images in class folders, decoded from disk by DataLoader workers (see the module doc)."""

    check_config = staticmethod(check_image_folder_config)  # run by experiments.run.validation

    def __init__(
        self,
        root: str | None = None,
        name: str | None = "image_folder",
        image_size: int = 224,
        resize: int | None = None,
        channels: int = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 12345,
        train_subset: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        skip_bad: bool = False,
        stats_images: int | None = 5000,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if root is None:
            raise ValueError("dataset.root=null: dataset=image_folder needs dataset.root=DIR")
        self.root = Path(root)
        self.name = name
        self.image_size, self.resize = int(image_size), int(resize or round(image_size * 256 / 224))
        self.in_channels, self.input_size = int(channels), int(image_size)
        self.given_stats = (list(mean), list(std)) if mean is not None and std is not None else None
        self.augment, self.crop_scale = augment, tuple(float(v) for v in crop_scale)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.train_subset = train_subset
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.persistent_workers = int(num_workers), bool(persistent_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.skip_bad, self.stats_images = skip_bad, stats_images
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.shuffle_seed = 0
        self.data_source: str | None = None
        self.classes: list[str] = []
        self.num_classes = 0
        self.skipped: dict[str, str] = {}
        self.layout: Layout | None = None
        self._splits: dict[str, list[Sample]] | None = None
        self._identity: dict[str, Any] | None = None
        self.mean: list[float] = []
        self.std: list[float] = []

    # -- setup --------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        layout = find_layout(self.root)
        self.classes = find_classes(layout.train)
        self.num_classes = len(self.classes)
        splits = self._split(layout)
        every = [s for part in splits.values() for s in part]
        keys = {name: listing_key(part, self.root) for name, part in splits.items()}
        cache = self._cache_file("checked", json.dumps(keys, sort_keys=True))
        bad = check_images(every, cache, threads=max(1, self.num_workers))
        if bad and not self.skip_bad:
            shown = "; ".join(f"{path} ({why})" for path, why in list(bad.items())[:5])
            raise BadImageError(
                f"dataset.root={str(self.root)!r}: {len(bad)} image file(s) PIL cannot read: {shown}"
                f"{' ...' if len(bad) > 5 else ''}. Remove or replace them, or pass dataset.skip_bad=true to skip them"
            )
        if bad:
            log.warning(
                "dataset %s: skipping %d unreadable image(s) (dataset.skip_bad=true): %s",
                self.name,
                len(bad),
                ", ".join(list(bad)[:10]),
            )
            splits = {name: [s for s in part if s[0] not in bad] for name, part in splits.items()}
            for name, part in splits.items():
                if not part:
                    raise BadImageError(f"dataset.root={str(self.root)!r}: every {name} image is unreadable")
        if self.train_subset is not None and self.train_subset < len(splits["train"]):  # seeded, every class
            pick = torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(self.split_seed + 1))
            splits["train"] = [splits["train"][i] for i in sorted(pick[: int(self.train_subset)].tolist())]
        self.skipped, self.layout, self._splits = bad, layout, splits
        self.data_source = str(self.root.resolve())
        self._identity = {
            "listing_sha256": {name: listing_key(part, self.root) for name, part in splits.items()},
            "classes": self.classes,
            "images": {name: len(part) for name, part in splits.items()},
            "skipped": len(bad),
        }
        self.mean, self.std = self.given_stats or self._training_stats()
        log.info(
            "dataset %s: %d classes from %s (%s); %d train, %d val, %d test images; mean %s std %s",
            self.name, self.num_classes, self.data_source, layout.describe(), len(splits["train"]),
            len(splits["val"]), len(splits["test"]), _short(self.mean), _short(self.std),
        )  # fmt: skip

    def _split(self, layout: Layout) -> dict[str, list[Sample]]:
        train = list_samples(layout.train, self.classes, "train")
        test = list_samples(layout.test, self.classes, "test") if layout.test is not None else None
        val = list_samples(layout.val, self.classes, "val") if layout.val is not None else None
        fractions = ([] if val is not None else [self.val_fraction]) + (
            [] if test is not None else [self.test_fraction]
        )
        if sum(fractions) >= 1:
            raise _config_error(
                f"dataset.val_fraction={self.val_fraction} + dataset.test_fraction={self.test_fraction} >= 1: "
                f"{layout.train} is split into train, val and test, so together they must stay below 1"
            )
        rest, held = stratified_split(train, fractions, self.split_seed)
        if val is None:
            val = held.pop(0)
        if test is None:
            test = held.pop(0)
        for name, part, key in (
            ("train", rest, "val_fraction"),
            ("val", val, "val_fraction"),
            ("test", test, "test_fraction"),
        ):
            if not part:
                raise _config_error(
                    f"dataset.{key}: the {name} split of {layout.train} would be empty ({len(train)} images, "
                    f"{self.num_classes} classes); use more images or another fraction"
                )
        return {"train": rest, "val": val, "test": test}

    def _cache_file(self, kind: str, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"image_{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def _training_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images after the evaluation resize and crop,
        over at most ``stats_images`` of them (seeded), cached by the listing."""
        assert self._splits is not None
        samples = self._splits["train"]
        what = {
            "train": self._identity["listing_sha256"]["train"] if self._identity else "",
            "image_size": self.image_size, "resize": self.resize, "channels": self.in_channels,
            "stats_images": self.stats_images, "split_seed": self.split_seed,
        }  # fmt: skip
        cache = self._cache_file("stats", json.dumps(what, sort_keys=True))
        if cache is not None and cache.is_file():
            try:
                stored = json.loads(cache.read_text())
                return list(stored["mean"]), list(stored["std"])
            except (ValueError, KeyError, TypeError):
                log.warning("image statistics cache %s is unreadable; computing them again", cache)
        if self.stats_images is not None and len(samples) > self.stats_images:
            pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.split_seed))
            samples = [samples[i] for i in sorted(pick[: self.stats_images].tolist())]
        dataset = ImageFiles(samples, self._transform(train=False, normalize=False), self._mode())
        mean, std = channel_stats(self._loader(dataset, self.eval_batch_size, persistent=False), self.in_channels)
        if cache is not None:
            atomic_write_text(cache, json.dumps({"mean": mean, "std": std, "images": len(samples), **what}) + "\n")
        log.info(
            "dataset %s: mean %s std %s from %d training images", self.name, _short(mean), _short(std), len(samples)
        )
        return mean, std

    # -- transforms and loaders ---------------------------------------------------------
    def _mode(self) -> str:
        return "RGB" if self.in_channels == 3 else "L"

    def _transform(self, train: bool, normalize: bool = True):
        from torchvision import transforms as T

        if train and self.augment:
            steps = [T.RandomResizedCrop(self.image_size, scale=self.crop_scale), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(self.resize), T.CenterCrop(self.image_size)]
        steps.append(T.ToTensor())
        if normalize:
            steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def _loader(self, dataset: ImageFiles, batch_size: int, sampler: Any = None, persistent: bool = True) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            persistent_workers=persistent and self.persistent_workers and workers > 0,
            pin_memory=self.pin_memory,
        )

    def split_samples(self, name: str) -> list[Sample]:
        """The (path, label) list of split ``name`` (``train``, ``val``, ``test``)."""
        self.setup()
        assert self._splits is not None
        return self._splits[name]

    def reseed(self, seed: int) -> None:
        """Seed the train loaders of the next phase (shuffling and per-sample augmentation)."""
        self.shuffle_seed = int(seed)

    def train_dataloader(self) -> DataLoader:
        samples = self.split_samples("train")
        dataset = ImageFiles(samples, self._transform(train=True), self._mode())
        return self._loader(dataset, self.batch_size, EpochSampler(len(samples), self.shuffle_seed, shuffle=True))

    def _eval_loader(self, name: str) -> DataLoader:
        dataset = ImageFiles(self.split_samples(name), self._transform(train=False), self._mode())
        return self._loader(dataset, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        """The first ``n`` training images, evaluation-transformed (for tracing and measuring)."""
        dataset = ImageFiles(self.split_samples("train")[:n], self._transform(train=False), self._mode())
        return torch.stack([dataset[i][0] for i in range(len(dataset))])

    def data_identity(self) -> dict[str, Any]:
        """The file listing of every split (relative paths, labels, sizes, mtimes), the classes
        and the skipped count: part of the baseline cache key."""
        self.setup()
        assert self._identity is not None
        return dict(self._identity)

    def data_report(self) -> dict[str, Any]:
        """What the results row records about the data: images per split, classes, the
        normalisation and the files skipped as unreadable."""
        self.setup()
        assert self._splits is not None
        return {
            "images": {name: len(part) for name, part in self._splits.items()},
            "classes": self.num_classes,
            "layout": self.layout.describe() if self.layout else None,
            "mean": self.mean,
            "std": self.std,
            "skipped": len(self.skipped),
            "skipped_files": sorted(self.skipped)[:50],
        }


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
