"""dataset=image_folder: layouts, seeded splits, cached statistics, bad files, workers, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.checks import ConfigError
from experiments.data import BadImageError, ImageFolderDataModule
from experiments.run.validation import validate_config


def make_images(folder: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """``folder/c<k>/img<i>.png``: random RGB images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., k % 3] = 160
            pixels = np.clip(base + rng.integers(0, 96, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"c{k}" / f"img{i}.png")
    return folder


def module(root: Path, **kw) -> ImageFolderDataModule:
    options = dict(image_size=16, resize=16, num_workers=0, batch_size=4, eval_batch_size=8, augment=False)
    options.update(kw)
    return ImageFolderDataModule(root=str(root), **options)


def test_train_and_val_folders_val_is_the_test_split_and_validation_is_carved(tmp_path):
    make_images(tmp_path / "train", per_class=10)
    make_images(tmp_path / "val", per_class=2, seed=1)
    dm = module(tmp_path, val_fraction=0.2)
    dm.setup()
    assert dm.classes == ["c0", "c1", "c2"] and dm.num_classes == 3
    assert dm.in_channels == 3 and dm.input_size == 16
    train, val, test = (dm.split_samples(s) for s in ("train", "val", "test"))
    assert len(test) == 6 and all("/val/" in p for p, _ in test)
    # 20% of each class (2 of 10) held out for validation, the rest trains
    assert len(val) == 6 and len(train) == 24
    assert sorted(label for _, label in val) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in val} & {p for p, _ in train}
    assert dm.data_report()["images"] == {"train": 24, "val": 6, "test": 6}
    # the split is seeded: another module picks the same validation images
    assert module(tmp_path, val_fraction=0.2).split_samples("val") == val
    assert module(tmp_path, val_fraction=0.2, split_seed=7).split_samples("val") != val
    subset = module(tmp_path, val_fraction=0.2, train_subset=9).split_samples("train")
    assert len(subset) == 9 and set(subset) < set(train) and len({label for _, label in subset}) == 3


def test_one_folder_is_split_by_fractions_and_val_and_test_folders_are_used(tmp_path):
    make_images(tmp_path / "all", per_class=10)
    dm = module(tmp_path / "all", val_fraction=0.1, test_fraction=0.3)
    assert [len(dm.split_samples(s)) for s in ("train", "val", "test")] == [18, 3, 9]
    with pytest.raises(ConfigError, match=r"dataset.val_fraction=0.5 \+ dataset.test_fraction=0.5 >= 1"):
        module(tmp_path / "all", val_fraction=0.5, test_fraction=0.5).setup()
    three = tmp_path / "three"
    make_images(three / "train", per_class=4)
    make_images(three / "val", per_class=2)
    make_images(three / "test", per_class=3)
    dm = module(three)
    assert [len(dm.split_samples(s)) for s in ("train", "val", "test")] == [12, 6, 9]
    (three / "test" / "c9").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(three / "test" / "c9" / "x.png")
    with pytest.raises(Exception, match=r"classes the training folder lacks: c9"):
        module(three).setup()


def test_batches_are_normalised_eval_crops_with_the_computed_statistics_cached(tmp_path, monkeypatch):
    make_images(tmp_path / "train", per_class=4, size=20)
    make_images(tmp_path / "test", per_class=2, size=20, seed=3)
    cache = tmp_path / "cache"
    dm = module(tmp_path, image_size=16, resize=20, cache_dir=str(cache), val_fraction=0.25)
    dm.setup()
    # the statistics are those of the training split's centre crops, per channel
    crops = []
    for path, _ in dm.split_samples("train"):
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        crops.append(array[2:18, 2:18])
    crops = np.stack(crops)
    assert np.allclose(dm.mean, crops.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(dm.std, crops.std(axis=(0, 1, 2)), atol=1e-6)
    x, y = next(iter(dm.test_dataloader()))
    first = np.asarray(Image.open(dm.split_samples("test")[0][0]).convert("RGB"), dtype=np.float64)[2:18, 2:18] / 255
    expected = (first - np.array(dm.mean)) / np.array(dm.std)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert y.tolist() == [label for _, label in dm.split_samples("test")]
    # cached next to the listing: a second module reads them without decoding anything
    assert len(list(cache.glob("image_stats-*.json"))) == 1 and len(list(cache.glob("image_checked-*.json"))) == 1
    monkeypatch.setattr("experiments.data.image_folder.channel_stats", lambda *a: pytest.fail("recomputed"))
    monkeypatch.setattr("experiments.data.image_files.verify_image", lambda *a: pytest.fail("checked again"))
    again = module(tmp_path, image_size=16, resize=20, cache_dir=str(cache), val_fraction=0.25)
    again.setup()
    assert again.mean == dm.mean and again.std == dm.std
    given = module(
        tmp_path, image_size=16, resize=20, mean=[0.5] * 3, std=[0.25] * 3, val_fraction=0.25, cache_dir=str(cache)
    )
    assert given.example_inputs(1).shape == (1, 3, 16, 16) and given.mean == [0.5] * 3


def test_a_bad_file_fails_naming_it_or_is_skipped_counted_and_recorded(tmp_path):
    make_images(tmp_path / "train", per_class=4)
    make_images(tmp_path / "test", per_class=2)
    bad = tmp_path / "train" / "c1" / "broken.png"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "test" / "c2" / "cut.png"
    truncated.write_bytes((tmp_path / "test" / "c2" / "img0.png").read_bytes()[:60])
    with pytest.raises(BadImageError) as err:
        module(tmp_path, val_fraction=0.25).setup()
    message = str(err.value)
    assert "2 image file(s)" in message and str(bad) in message and str(truncated) in message
    assert "dataset.skip_bad=true" in message
    dm = module(tmp_path, val_fraction=0.25, skip_bad=True, num_workers=2)  # checked on 2 threads
    dm.setup()
    report = dm.data_report()
    assert report["skipped"] == 2 and report["skipped_files"] == sorted([str(bad), str(truncated)])
    assert sum(report["images"].values()) == 12 + 6
    assert dm.data_identity()["skipped"] == 2
    paths = [p for s in ("train", "val", "test") for p, _ in dm.split_samples(s)]
    assert str(bad) not in paths and str(truncated) not in paths


def test_batches_depend_on_the_phase_seed_and_epoch_not_on_the_workers(tmp_path):
    make_images(tmp_path / "train", per_class=6)
    make_images(tmp_path / "val", per_class=1)

    def epochs(workers: int, seed: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        dm = module(tmp_path, augment=True, crop_scale=[0.3, 1.0], num_workers=workers, mean=[0.5] * 3, std=[0.5] * 3)
        dm.reseed(seed)
        loader = dm.train_dataloader()
        return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(2)]

    main, workers = epochs(0, 5), epochs(2, 5)
    for a, b in zip(main, workers):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    flat = [torch.cat([y for _, y in e]) for e in main]
    assert sorted(flat[0].tolist()) == sorted(flat[1].tolist()) and not torch.equal(flat[0], flat[1])
    assert not torch.equal(epochs(0, 6)[0][0][0], main[0][0][0])


@pytest.mark.parametrize(
    "override,match",
    [
        ("dataset.val_fraction=1.5", r"dataset.val_fraction=1.5: must be in \[0.0, 1.0\)"),
        ("dataset.image_size=0", r"dataset.image_size=0: must be in \[1, inf\)"),
        ("dataset.channels=2", r"dataset.channels=2: allowed values are 1 \(grayscale\), 3 \(RGB\)"),
        ("dataset.crop_scale=[0.5,0.2]", r"dataset.crop_scale=\[0.5, 0.2\]: must be \[low, high\]"),
        ("dataset.mean=[0.5,0.5,0.5]", r"dataset.mean and dataset.std: give both"),
        ("dataset.num_workers=-1", r"dataset.num_workers=-1: must be in \[0, inf\)"),
        ("dataset.resize=8", r"dataset.resize=8: must be in \[224, inf\)"),
        ("dataset.skip_bad=maybe", r"dataset.skip_bad='maybe': allowed values are true, false"),
        ("dataset.stats_images=0", r"dataset.stats_images=0: must be in \[1, inf\)"),
        ("baseline.checkpoint=/nope/model.pt", r"baseline.checkpoint='/nope/model.pt': no such file"),
    ],
)
def test_bad_values_are_rejected_before_anything_loads(compose_cfg, tmp_path, override, match):
    make_images(tmp_path / "imgs", classes=2, per_class=2)
    cfg = compose_cfg("dataset=image_folder", f"dataset.root={tmp_path}/imgs", override)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_the_root_is_required(compose_cfg):
    with pytest.raises(ConfigError, match=r"dataset.root=null: dataset=image_folder needs dataset.root=DIR"):
        validate_config(compose_cfg("dataset=image_folder"))


def test_the_config_instantiates_with_its_cache_under_the_project(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    make_images(tmp_path / "imgs", classes=2, per_class=5)
    cfg = compose_cfg("dataset=image_folder", f"dataset.root={tmp_path}/imgs", "dataset.image_size=16")
    validate_config(cfg)
    dm = instantiate(cfg.dataset)
    dm.setup()
    assert dm.resize == round(16 * 256 / 224) and dm.num_workers == 4 and dm.persistent_workers
    assert [len(dm.split_samples(s)) for s in ("train", "val", "test")] == [8, 1, 1]
    stats = list((tmp_path / ".cache" / "datasets").glob("image_stats-*.json"))
    assert len(stats) == 1 and json.loads(stats[0].read_text())["images"] == 8
