"""Seeded synthetic images with learnable labels (tests and smoke runs)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from experiments.data.tensors import TensorDataModule, random_crop_flip


class SyntheticDataModule(TensorDataModule):
    """Seeded random images with learnable labels (a fixed random linear teacher)."""

    mean, std = (0.0,), (1.0,)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        n_train: int = 512,
        n_test: int = 256,
        seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_size", max(1, n_train // 8))
        super().__init__(**kwargs)
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.mean, self.std = (0.0,) * in_channels, (1.0,) * in_channels
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        self.data_source = f"generated (synthetic, seed={self.seed})"
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.in_channels, self.input_size, self.input_size)
        teacher = torch.randn(int(np.prod(shape)), self.num_classes, generator=gen)
        out = {}
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            x = torch.randn(n, *shape, generator=gen)
            y = (x.flatten(1) @ teacher).argmax(1)
            out[split] = (x.numpy(), y.numpy())
        return out

    def batch_augment(self) -> Callable:
        return random_crop_flip(2, True)
