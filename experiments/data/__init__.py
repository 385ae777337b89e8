"""Data sources: every DataModule the configs select (``conf/dataset/*.yaml`` ``_target_``).

- ``tensors``: the preloaded-tensor base (``TensorDataModule``, ``TensorBatches``, batched
  augmentation, seeded epochs) that the built-in datasets share;
- ``idx``: Fashion-MNIST from its IDX files (offline first);
- ``torchvision_sets``: MNIST and CIFAR-10/100 in torchvision's folder layout;
- ``synthetic``: seeded random images with learnable labels;
- ``image_folder``: your own images (a torchvision ``ImageFolder`` tree), decoded from disk
  in DataLoader workers instead of preloaded.

Every datamodule exposes ``num_classes``, ``in_channels``, ``input_size``,
``example_inputs()``, ``reseed(seed)``, ``data_source``, ``data_identity()`` and the
train/val/test loaders, which is all the pipeline uses.
"""

from experiments.data.idx import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, FashionMNISTDataModule, read_idx
from experiments.data.image_folder import BadImageError, ImageFolderDataModule
from experiments.data.synthetic import SyntheticDataModule
from experiments.data.tensors import (
    DataUnavailableError,
    TensorBatches,
    TensorDataModule,
    arrays_identity,
    epoch_seed,
    list_missing,
    random_crop_flip,
)
from experiments.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    MNISTDataModule,
    TorchvisionDataModule,
    socket_timeout,
)

__all__ = [
    "BadImageError",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "DEBIAN_FASHION_MNIST",
    "DataUnavailableError",
    "FASHION_MNIST_FILES",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "TensorBatches",
    "TensorDataModule",
    "TorchvisionDataModule",
    "arrays_identity",
    "epoch_seed",
    "list_missing",
    "random_crop_flip",
    "read_idx",
    "socket_timeout",
]
