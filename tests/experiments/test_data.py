import gzip
import struct

import numpy as np
import pytest
import torch

from experiments.data import (
    DataUnavailableError,
    FashionMNISTDataModule,
    SyntheticDataModule,
    TensorBatches,
    random_crop_flip,
    read_idx,
)


def write_idx(path, array: np.ndarray, compress: bool = True):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def fake_fashion(root, n_train=300, n_test=50):
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert np.array_equal(read_idx(tmp_path / "b"), arr)


def test_read_idx_rejects_truncated_and_bad_magic(tmp_path):
    arr = np.zeros((4, 5), dtype=np.uint8)
    write_idx(tmp_path / "a", arr, compress=False)
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "trunc").write_bytes(data[:-3])
    with pytest.raises(DataUnavailableError, match="truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(DataUnavailableError, match="magic"):
        read_idx(tmp_path / "magic")


def test_fashion_from_root_splits_and_normalises(tmp_path):
    fake_fashion(tmp_path)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=50, batch_size=32)
    dm.setup()
    x_tr, y_tr = dm.split("train")
    x_val, _ = dm.split("val")
    x_te, _ = dm.split("test")
    assert x_tr.shape == (250, 1, 28, 28) and x_val.shape == (50, 1, 28, 28) and x_te.shape == (50, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    # the validation split is fixed (independent of the run seed)
    dm2 = FashionMNISTDataModule(root=str(tmp_path), val_size=50)
    torch.manual_seed(123)
    assert torch.equal(dm2.split("val")[0], x_val)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 8
    assert sum(len(b[1]) for b in batches) == 250


def test_fashion_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.data.idx.DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    dm = FashionMNISTDataModule(root=str(tmp_path), download=False)
    dm.candidate_dirs = lambda: [tmp_path]
    with pytest.raises(DataUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
        dm.setup()


def test_synthetic_is_seeded_and_learnable_shape():
    a = SyntheticDataModule(num_classes=4, in_channels=3, input_size=8, n_train=64, n_test=16, seed=1)
    b = SyntheticDataModule(num_classes=4, in_channels=3, input_size=8, n_train=64, n_test=16, seed=1)
    xa, ya = a.split("train")
    xb, yb = b.split("train")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape[1:] == (3, 8, 8) and int(ya.max()) < 4
    assert len(torch.unique(ya)) > 1


def test_tensor_batches_cover_every_sample_once():
    x = torch.arange(10).float().view(10, 1, 1, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in TensorBatches(x, y, 3, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(10))


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = random_crop_flip(padding=2, flip=False)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def epoch_batches(loader, epochs=1):
    """The (x, y) batches of ``epochs`` iterations of ``loader``, as one list per epoch."""
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(epochs)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_train_batches_depend_only_on_the_phase_seed_and_epoch():
    """Shuffling and augmentation of a phase do not depend on earlier loaders or the global RNG."""
    kw = dict(num_classes=4, input_size=8, n_train=96, n_test=16, val_size=16, batch_size=16, augment=True)
    fresh = SyntheticDataModule(**kw)
    fresh.reseed(7)
    reference = epoch_batches(fresh.train_dataloader(), epochs=2)
    used = SyntheticDataModule(**kw)
    for seed in (1, 2):  # earlier phases drew loaders and consumed epochs
        used.reseed(seed)
        epoch_batches(used.train_dataloader(), epochs=3)
    len(used.train_dataloader())  # a loader only counted (steps per epoch)
    torch.manual_seed(999)
    torch.rand(1000)  # training consumed the global RNG
    used.reseed(7)
    again = epoch_batches(used.train_dataloader(), epochs=2)
    assert same(again[0], reference[0]) and same(again[1], reference[1])
    assert not same(reference[0], reference[1])  # epochs within a phase still differ
    y0 = torch.cat([y for _, y in reference[0]])
    assert sorted(y0.tolist()) == sorted(fresh.split("train")[1].tolist())  # a permutation of the split
    used.reseed(8)
    assert not same(epoch_batches(used.train_dataloader())[0], reference[0])


def test_augmentation_is_drawn_from_the_loader_seed():
    x = torch.randn(32, 1, 8, 8)
    y = torch.arange(32)
    aug = random_crop_flip(2, True)
    a = [xb for xb, _ in TensorBatches(x, y, 8, shuffle=False, augment=aug, seed=3)]
    torch.manual_seed(0)
    b = [xb for xb, _ in TensorBatches(x, y, 8, shuffle=False, augment=aug, seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, x[i * 8 : (i + 1) * 8]) for i, p in enumerate(a))  # really augmented
    loader = TensorBatches(x, y, 8, shuffle=True, seed=3)
    first = [yb for _, yb in loader]
    loader.set_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(first, [yb for _, yb in loader]))


def test_root_lacking_files_is_an_error_naming_them(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    fake_fashion(system, n_train=120, n_test=20)
    monkeypatch.setattr("experiments.data.idx.DEBIAN_FASHION_MNIST", system)
    root = tmp_path / "mine"
    root.mkdir()
    fake_fashion(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = FashionMNISTDataModule(root=str(root), val_size=10, download=True)
    with pytest.raises(DataUnavailableError) as err:
        dm.setup()
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and "train-images" not in message.split("not found")[0]
    assert str(root) in message and "dataset.fallback=true" in message
    # asked for: the system copy is used, and named
    dm = FashionMNISTDataModule(root=str(root), val_size=10, fallback=True)
    dm.setup()
    assert dm.data_source == str(system.resolve())
    assert len(dm.split("train")[1]) == 110 and len(dm.split("test")[1]) == 20


def test_data_source_and_identity_name_the_files_used(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr("experiments.data.idx.DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    fake_fashion(tmp_path)
    dm = FashionMNISTDataModule(root=str(tmp_path), name="fashion_mnist", val_size=50)
    with caplog.at_level(logging.INFO, logger="experiments.data"):
        dm.setup()
    assert dm.data_source == str(tmp_path.resolve())
    assert f"dataset fashion_mnist: data from {tmp_path.resolve()} (300 train and 50 test samples)" in caplog.messages
    assert sorted(p.name for p in dm.data_files) == sorted(
        f"{stem}.gz"
        for stems in (
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        )
        for stem in stems
    )
    identity = dm.data_identity()
    assert identity["shapes"] == {"train": [[300, 28, 28], [300]], "test": [[50, 28, 28], [50]]}
    assert len(identity["sha256"]) == 64
    # the same files elsewhere: the same identity; one changed label: another one
    copy = tmp_path / "copy"
    copy.mkdir()
    fake_fashion(copy)
    assert FashionMNISTDataModule(root=str(copy), val_size=50).data_identity() == identity
    write_idx(copy / "t10k-labels-idx1-ubyte.gz", np.r_[np.random.default_rng(0).integers(0, 10, 49), [3]])
    assert FashionMNISTDataModule(root=str(copy), val_size=50).data_identity()["sha256"] != identity["sha256"]
    synthetic = SyntheticDataModule(n_train=64, n_test=16, seed=4)
    assert synthetic.data_identity() != SyntheticDataModule(n_train=64, n_test=16, seed=5).data_identity()
    assert synthetic.data_source == "generated (synthetic, seed=4)"


def test_torchvision_root_lacking_files_names_them(tmp_path):
    from experiments.data import CIFAR10DataModule

    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(DataUnavailableError) as err:
        dm.setup()
    message = str(err.value)
    assert "data_batch_2" in message and "test_batch" in message and "data_batch_1," not in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "dataset.fallback=true" in message


def test_a_missing_root_folder_is_allowed_only_with_the_fallback(compose_cfg, tmp_path):
    from experiments.checks import ConfigError
    from experiments.run.validation import validate_config

    with pytest.raises(ConfigError, match=r"dataset.root=.*no such directory.*dataset.fallback=true"):
        validate_config(compose_cfg("dataset=fashion_mnist", f"dataset.root={tmp_path}/missing"))
    validate_config(compose_cfg("dataset=fashion_mnist", f"dataset.root={tmp_path}/missing", "dataset.fallback=true"))


def write_cifar(root, name: str = "CIFAR10", n_per_batch: int = 12, n_test: int = 10, seed: int = 0):
    """A tiny CIFAR in torchvision's layout: pickled dicts of random uint8 rows and labels."""
    import pickle

    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key, classes = ("labels", 10) if name == "CIFAR10" else ("fine_labels", 100)
    rng = np.random.default_rng(seed)
    arrays = {}
    test_files = [file for file, _ in cls.test_list]
    for file, _ in (*cls.train_list, *cls.test_list):
        n = n_test if file in test_files else n_per_batch
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n).tolist()
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, label_key: labels, "batch_label": file}, f)
        arrays[file] = (data, labels)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{i}" for i in range(classes)]}, f)
    return folder, arrays


@pytest.mark.parametrize("name,batches", [("cifar10", 5), ("cifar100", 1)])
def test_cifar_from_files_in_torchvisions_layout(compose_cfg, tmp_path, name, batches):
    from hydra.utils import instantiate

    from experiments.run.validation import validate_config

    tv_name = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]
    folder, arrays = write_cifar(tmp_path, tv_name)
    cfg = compose_cfg(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.val_size=6", "dataset.download=false")
    validate_config(cfg)
    dm = instantiate(cfg.dataset)
    dm.setup()
    assert dm.data_source == str(folder.resolve()) and dm.num_classes == (10 if name == "cifar10" else 100)
    x_tr, _ = dm.split("train")
    x_te, y_te = dm.split("test")
    assert x_tr.shape == (12 * batches - 6, 3, 32, 32) and x_te.shape == (10, 3, 32, 32)
    data, labels = arrays["test_batch" if name == "cifar10" else "test"]
    assert y_te.tolist() == labels
    # pixel (channel c, row r, col k) of image i is byte c*1024 + r*32 + k of its row, normalised
    i, c, r, k = 3, 2, 5, 7
    expected = (data[i, c * 1024 + r * 32 + k] / 255.0 - dm.mean[c]) / dm.std[c]
    assert float(x_te[i, c, r, k]) == pytest.approx(expected, abs=1e-6)
    assert dm.data_report()["images"] == {"train": 12 * batches - 6, "val": 6, "test": 10}


def test_cifar_files_that_are_not_arrays_are_refused_naming_the_file(tmp_path):
    import pickle

    from experiments.data import CIFAR10DataModule

    folder, _ = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(
        DataUnavailableError, match=r"cannot read the CIFAR batch .*data_batch_3.*refusing builtins.print"
    ):
        CIFAR10DataModule(root=str(tmp_path), val_size=6, download=False).setup()
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, f)
    with pytest.raises(DataUnavailableError, match=r"data_batch_3 has data of shape \[4, 100\] and 4 labels"):
        CIFAR10DataModule(root=str(tmp_path), val_size=6, download=False).setup()
