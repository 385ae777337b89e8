"""Deep Compression storage: relative-index CSR, k-means weight sharing, Huffman coding,
a checksummed file format (docs/compressed_format.md) and a per-layer size report."""

from pruning.compress.bitstream import CompressedFormatError
from pruning.compress.csr import RelativeCSR, csr_decode, csr_encode
from pruning.compress.fileformat import compression_report, load_compressed, save_compressed
from pruning.compress.kmeans import CentroidTuner, SharedWeights, kmeans_1d, share_weights
from pruning.compress.report import LayerSize, SizeReport

__all__ = [
    "CentroidTuner",
    "CompressedFormatError",
    "LayerSize",
    "RelativeCSR",
    "SharedWeights",
    "SizeReport",
    "compression_report",
    "csr_decode",
    "csr_encode",
    "kmeans_1d",
    "load_compressed",
    "save_compressed",
    "share_weights",
]
