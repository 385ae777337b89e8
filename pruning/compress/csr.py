"""Relative-index sparse rows (Deep Compression's CSR with small index differences).

A weight is read in row-major order as a matrix ``[out, fan_in]`` (a conv filter is one
row), rows concatenated, so row pointers are implicit in the flat positions. Each
non-zero is stored with a ``b``-bit code: the number of zeros since the previous non-zero
(0 .. 2**b - 2). The largest code, ``2**b - 1``, is a *filler*: it skips ``2**b - 1``
zeros and carries no value. Gaps that do not fit are split into fillers, so any gap can
be written with any ``b`` in [1, 16]. See docs/compressed_format.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pruning.compress.bitstream import CompressedFormatError, check_bits, fixed_nbytes


@dataclass(frozen=True)
class RelativeCSR:
    """A tensor as relative-index codes (fillers included) and its non-zero values."""

    shape: tuple[int, ...]
    index_bits: int
    codes: np.ndarray  # one code per entry, fillers included
    values: torch.Tensor  # the non-zeros, in row-major order

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def fillers(self) -> int:
        return int(self.codes.size) - self.nnz

    def index_bytes(self) -> int:
        """Bytes of the index stream at the fixed width ``index_bits``."""
        return fixed_nbytes(int(self.codes.size), self.index_bits)


def nonzero_positions(tensor: torch.Tensor) -> np.ndarray:
    """Flat row-major positions of the non-zero entries (``-0.0`` counts as zero)."""
    return torch.nonzero(tensor.detach().reshape(-1) != 0).reshape(-1).cpu().numpy()


def relative_indices(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Codes for strictly increasing flat ``positions``, with fillers for long gaps."""
    index_bits = check_bits(index_bits, "index_bits")
    positions = np.asarray(positions, dtype=np.int64)
    escape = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    if np.any(gaps < 0):
        raise ValueError("positions must be strictly increasing and >= 0")
    fill = gaps // escape
    codes = np.full(positions.size + int(fill.sum()), escape, dtype=np.uint32)
    codes[np.arange(positions.size) + np.cumsum(fill)] = gaps - fill * escape
    return codes


def absolute_positions(codes: np.ndarray, index_bits: int, numel: int, nnz: int) -> np.ndarray:
    """Inverse of :func:`relative_indices`, validated against ``numel`` and ``nnz``."""
    codes = np.asarray(codes, dtype=np.int64)
    escape = (1 << index_bits) - 1
    is_entry = codes != escape
    if int(is_entry.sum()) != nnz:
        raise CompressedFormatError(f"index stream holds {int(is_entry.sum())} entries, header says {nnz}")
    if codes.size and not is_entry[-1]:
        raise CompressedFormatError("index stream ends with a filler")
    steps = np.where(is_entry, codes + 1, escape)
    positions = (np.cumsum(steps) - 1)[is_entry]
    if positions.size and positions[-1] >= numel:
        raise CompressedFormatError(f"index stream points past the end of a {numel}-element tensor")
    return positions


def csr_encode(tensor: torch.Tensor, index_bits: int) -> RelativeCSR:
    """Encode the non-zeros of ``tensor`` with ``index_bits``-bit relative indices."""
    positions = nonzero_positions(tensor)
    flat = tensor.detach().reshape(-1)
    values = flat[torch.from_numpy(positions).to(flat.device)].cpu()
    return RelativeCSR(tuple(tensor.shape), index_bits, relative_indices(positions, index_bits), values)


def csr_decode(csr: RelativeCSR) -> torch.Tensor:
    """Rebuild the dense tensor (zeros are +0.0)."""
    numel = int(np.prod(csr.shape, dtype=np.int64))
    positions = absolute_positions(csr.codes, csr.index_bits, numel, csr.nnz)
    return scatter_dense(positions, csr.values, csr.shape)


def scatter_dense(positions: np.ndarray, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A dense tensor of ``shape`` with ``values`` at flat ``positions``, zeros elsewhere."""
    out = torch.zeros(int(np.prod(shape, dtype=np.int64)), dtype=values.dtype)
    out[torch.from_numpy(positions)] = values
    return out.reshape(shape)
