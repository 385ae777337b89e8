"""Size breakdown per layer and in total, as in Deep Compression's tables.

Stages are cumulative: ``dense`` (the tensor as stored in memory), ``pruned`` (non-zeros
as raw values + fixed-width relative indices), ``quantized`` (+ weight sharing: codes of
``bits`` bits and the codebook, or fp16 values), ``huffman`` (+ entropy coding, the
bytes actually written, Huffman tables included). A stage that was not requested
repeats the previous one. Ratios are dense / stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerSize:
    """Bytes of one stored tensor at each compression stage."""

    name: str
    numel: int
    nnz: int
    dense: int
    pruned: int
    quantized: int
    huffman: int
    encoding: str  # e.g. "raw", "csr5+fp32", "csr5+cb5+huff"

    def ratios(self) -> dict[str, float]:
        return {stage: _ratio(self.dense, getattr(self, stage)) for stage in ("pruned", "quantized", "huffman")}


@dataclass
class SizeReport:
    """Per-layer sizes plus the file's real size (headers and names included)."""

    layers: list[LayerSize] = field(default_factory=list)
    file_bytes: int = 0

    def total(self) -> LayerSize:
        """The sum over all layers."""
        sums = {
            k: sum(getattr(layer, k) for layer in self.layers)
            for k in ("numel", "nnz", "dense", "pruned", "quantized", "huffman")
        }
        return LayerSize(name="total", encoding="", **sums)

    def ratio(self) -> float:
        """Dense bytes of the whole state over the bytes of the file on disk."""
        return _ratio(self.total().dense, self.file_bytes)

    def to_rows(self) -> list[dict]:
        """One dict per layer and a final ``total`` row, ratios included (for pandas/CSV)."""
        rows = []
        for layer in [*self.layers, self.total()]:
            row = asdict(layer)
            row.update({f"{k}_ratio": v for k, v in layer.ratios().items()})
            rows.append(row)
        return rows

    def __str__(self) -> str:
        head = (
            f"{'layer':<28} {'params':>10} {'kept':>7} {'dense B':>11} "
            f"{'pruned B':>18} {'+quant B':>18} {'+huffman B':>18}  encoding"
        )
        lines = [head, "-" * len(head)]
        for layer in [*self.layers, self.total()]:
            kept = f"{layer.nnz / layer.numel:.1%}" if layer.numel else "-"
            cells = [
                f"{getattr(layer, s):>10} {_ratio(layer.dense, getattr(layer, s)):>5.1f}x"
                for s in ("pruned", "quantized", "huffman")
            ]
            lines.append(
                f"{layer.name:<28} {layer.numel:>10} {kept:>7} {layer.dense:>11}  "
                + "  ".join(cells)
                + f"  {layer.encoding}"
            )
        lines.append(f"file on disk: {self.file_bytes} bytes, {self.ratio():.1f}x smaller than dense")
        return "\n".join(lines)


def _ratio(dense: int, stage: int) -> float:
    return dense / stage if stage else float("inf")
