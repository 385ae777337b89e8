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
    monkeypatch.setattr("experiments.data.DEBIAN_FASHION_MNIST", tmp_path / "nothing")
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
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
