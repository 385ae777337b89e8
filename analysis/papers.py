"""The published numbers our paper presets (``experiment=...``) reproduce, with their sources.

Errors are top-1 test error in percent; ``weights_x`` is dense / remaining weights,
``storage_x`` dense / compressed bytes; reductions are percent of the baseline's FLOPs
(multiply-accumulates, as Li et al. count them) and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

HAN2015 = (
    "Han, Pool, Tran, Dally. Learning both Weights and Connections for Efficient Neural Networks. NIPS 2015, Table 1"
)
DEEP_COMPRESSION = (
    "Han, Mao, Dally. Deep Compression: Compressing Deep Neural Networks with Pruning, Trained "
    "Quantization and Huffman Coding. ICLR 2016, Table 1"
)
LI2017 = "Li, Kadav, Durdanovic, Samet, Graf. Pruning Filters for Efficient ConvNets. ICLR 2017, Table 1"


@dataclass(frozen=True)
class PaperResult:
    """One row of a paper's results table, as the preset ``preset`` reproduces it."""

    preset: str
    citation: str
    model: str
    dataset: str
    baseline_error: float | None = None
    pruned_error: float | None = None
    weights_x: float | None = None
    storage_x: float | None = None
    flops_reduction: float | None = None
    params_reduction: float | None = None
    note: str = ""


PAPERS: dict[str, PaperResult] = {
    p.preset: p
    for p in (
        PaperResult("han2015_lenet300", HAN2015, "LeNet-300-100", "MNIST", 1.64, 1.59, weights_x=12.0),
        PaperResult("han2015_lenet5", HAN2015, "LeNet-5", "MNIST", 0.80, 0.77, weights_x=12.0),
        PaperResult(
            "deep_compression_lenet300",
            DEEP_COMPRESSION,
            "LeNet-300-100",
            "MNIST",
            1.64,
            1.58,
            storage_x=40.0,
            note="no accuracy loss (1070 KB -> 27 KB)",
        ),
        PaperResult(
            "deep_compression_lenet5",
            DEEP_COMPRESSION,
            "LeNet-5",
            "MNIST",
            0.80,
            0.74,
            storage_x=39.0,
            note="no accuracy loss (1720 KB -> 44 KB)",
        ),
        PaperResult(
            "li2017_vgg16_a",
            LI2017,
            "VGG-16-pruned-A",
            "CIFAR-10",
            6.75,
            6.60,
            flops_reduction=34.2,
            params_reduction=64.0,
        ),
        PaperResult(
            "li2017_resnet56_a",
            LI2017,
            "ResNet-56-pruned-A",
            "CIFAR-10",
            6.96,
            6.90,
            flops_reduction=10.4,
            params_reduction=9.4,
        ),
        PaperResult(
            "li2017_resnet56_b",
            LI2017,
            "ResNet-56-pruned-B",
            "CIFAR-10",
            6.96,
            6.94,
            flops_reduction=27.6,
            params_reduction=13.7,
        ),
        PaperResult(
            "li2017_resnet110_a",
            LI2017,
            "ResNet-110-pruned-A",
            "CIFAR-10",
            6.47,
            6.45,
            flops_reduction=15.9,
            params_reduction=2.3,
        ),
        PaperResult(
            "li2017_resnet110_b",
            LI2017,
            "ResNet-110-pruned-B",
            "CIFAR-10",
            6.47,
            6.70,
            flops_reduction=38.6,
            params_reduction=32.4,
        ),
    )
}
