"""The compressed model file: header, checksum, one record per state-dict tensor.

Layout and every field are specified in docs/compressed_format.md. Writing is atomic
(temporary file + ``os.replace``); reading checks magic, version, length and CRC32
before parsing, and every parse error is a :class:`CompressedFormatError`.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning.compress import huffman
from pruning.compress.bitstream import (
    ByteReader,
    ByteWriter,
    CompressedFormatError,
    check_bits,
    fixed_nbytes,
    pack_fixed,
    unpack_fixed,
)
from pruning.compress.csr import absolute_positions, nonzero_positions, relative_indices, scatter_dense
from pruning.compress.kmeans import SharedWeights, kmeans_1d, layer_bits
from pruning.compress.report import LayerSize, SizeReport
from pruning.unstructured.masks import Include, select_parameters

MAGIC = b"PKDC"
VERSION = 1
HEADER = struct.Struct("<4sBBQI")  # magic, version, flags, payload bytes, CRC32
VALUE_FORMATS = ("fp32", "fp16", "codebook")
CODEBOOK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
REST_FORMATS = ("exact", "fp16")
MAX_NUMEL = 1 << 34  # per tensor; guards allocations requested by a damaged file

_DTYPES = {
    1: torch.float32,
    2: torch.float16,
    3: torch.bfloat16,
    4: torch.float64,
    5: torch.int64,
    6: torch.int32,
    7: torch.int16,
    8: torch.int8,
    9: torch.uint8,
    10: torch.bool,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
RAW, SPARSE, DENSE_VALUES = 0, 1, 2  # record layouts
VAL_RAW, VAL_CODEBOOK = 0, 1  # value block kinds
FIXED, HUFFMAN = 0, 1  # integer stream methods


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    index_bits: int | str = 5,
    values: str = "fp32",
    bits: int | Mapping[str, int] | None = None,
    huffman: bool = False,
    include: Include = None,
    shared: Mapping[str, SharedWeights] | None = None,
    codebook_dtype: str = "fp32",
    rest: str = "exact",
) -> SizeReport:
    """Write ``model``'s whole state dict compactly to ``path``; return the size report.

    Included weights (default: conv/linear weights) with zeros are stored as relative-index
    CSR (``index_bits`` in [1, 16], or ``"auto"``: per layer the width that stores it in
    the fewest bits) and their values as ``values``: raw ``"fp32"`` (bit-exact), ``"fp16"``
    (lossy) or ``"codebook"`` (k-means with ``bits`` per layer, default conv 8 / fc 5, or
    the given ``shared`` codebooks; unused centroids are dropped; ``codebook_dtype``
    ``"fp32"`` or ``"fp16"``). ``huffman`` entropy-codes index gaps and value codes where
    that is smaller. Everything else (biases, BatchNorm) is stored raw (``rest="exact"``)
    or, with ``rest="fp16"``, its floating-point tensors as half precision.
    """
    payload, report = encode_state(
        model,
        index_bits=index_bits,
        values=values,
        bits=bits,
        huffman=huffman,
        include=include,
        shared=shared,
        codebook_dtype=codebook_dtype,
        rest=rest,
    )
    blob = _header(payload) + payload
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    report.file_bytes = len(blob)
    return report


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module | dict[str, torch.Tensor]:
    """Read a file written by :func:`save_compressed`.

    Returns the state dict, or loads it into ``model`` (strict: names and shapes must
    match) and returns the model.
    """
    state = decode_file(Path(path).read_bytes())
    if model is None:
        return state
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {wrong}. Build the same architecture first (replay its pruning record)."
        )
    model.load_state_dict(state, strict=True)
    return model


def compression_report(model: nn.Module, **options) -> SizeReport:
    """The size report :func:`save_compressed` would return, without writing a file."""
    payload, report = encode_state(model, **options)
    report.file_bytes = HEADER.size + len(payload)
    return report


def encode_state(
    model: nn.Module,
    *,
    index_bits: int | str = 5,
    values: str = "fp32",
    bits: int | Mapping[str, int] | None = None,
    huffman: bool = False,
    include: Include = None,
    shared: Mapping[str, SharedWeights] | None = None,
    codebook_dtype: str = "fp32",
    rest: str = "exact",
) -> tuple[bytes, SizeReport]:
    """The payload (everything after the header) and its size report."""
    if sys.byteorder != "little":
        raise RuntimeError("the compressed format is little-endian; big-endian hosts are not supported")
    if index_bits != "auto":
        check_bits(index_bits, "index_bits")
    if codebook_dtype not in CODEBOOK_DTYPES:
        raise ValueError(f"codebook_dtype={codebook_dtype!r}: choose one of {tuple(CODEBOOK_DTYPES)}")
    if rest not in REST_FORMATS:
        raise ValueError(f"rest={rest!r}: choose one of {REST_FORMATS}")
    if values not in VALUE_FORMATS:
        raise ValueError(f"values={values!r}: choose one of {VALUE_FORMATS}")
    if values != "codebook" and bits is not None:
        raise ValueError("bits= only applies with values='codebook'")
    shared = dict(shared or {})
    state = model.state_dict()
    unknown = [n for n in shared if n not in state]
    if unknown:
        raise KeyError(f"shared codebooks for unknown parameters {unknown}")
    candidates = list(select_parameters(model, include, allow_empty=include is None))
    candidates += [n for n in shared if n not in candidates]
    quantize = [n for n in candidates if n not in shared] if values == "codebook" else []
    per_layer_bits = layer_bits(model, quantize, bits) if quantize else {}
    out, report = ByteWriter(), SizeReport()
    out.varint(len(state))
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if name in shared or (name in candidates and tensor.is_floating_point()):
            sw = shared.get(name)
            if sw is None and name in per_layer_bits:
                mask = tensor != 0
                codebook, codes = kmeans_1d(tensor[mask], per_layer_bits[name])
                sw = SharedWeights(codebook, codes, mask)
            size = _write_weight(out, name, tensor, index_bits, values, huffman, sw, CODEBOOK_DTYPES[codebook_dtype])
        elif rest == "fp16" and tensor.dtype in (torch.float32, torch.float64) and tensor.numel():
            size = _write_half(out, name, tensor)
        else:
            size = _write_raw(out, name, tensor)
        report.layers.append(size)
    return out.getvalue(), report


def _header(payload: bytes) -> bytes:
    fields = HEADER.pack(MAGIC, VERSION, 0, len(payload), 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields[4:])))


def _write_meta(out: ByteWriter, name: str, tensor: torch.Tensor, layout: int) -> None:
    if tensor.dtype not in _CODES:
        raise TypeError(f"'{name}' has dtype {tensor.dtype}, which the format cannot store")
    if tensor.layout != torch.strided:
        raise TypeError(f"'{name}' is a {tensor.layout} tensor: save the dense model (before sparsify)")
    out.text(name)
    out.u8(_CODES[tensor.dtype])
    out.u8(tensor.dim())
    for dim in tensor.shape:
        out.varint(dim)
    out.u8(layout)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _write_raw(out: ByteWriter, name: str, tensor: torch.Tensor) -> LayerSize:
    _write_meta(out, name, tensor, RAW)
    out.raw(_raw_bytes(tensor))
    n = tensor.numel() * tensor.element_size()
    return LayerSize(name, tensor.numel(), int((tensor != 0).sum()), n, n, n, n, "raw")


def _write_half(out: ByteWriter, name: str, tensor: torch.Tensor) -> LayerSize:
    """A float tensor as a DENSE_VALUES record of raw fp16 values (lossy: half precision)."""
    _write_meta(out, name, tensor, DENSE_VALUES)
    stored = _write_raw_values(out, tensor.reshape(-1).half())
    n = tensor.numel() * tensor.element_size()
    return LayerSize(name, tensor.numel(), int((tensor != 0).sum()), n, n, stored, stored, "dense+fp16")


def best_index_bits(positions: np.ndarray, use_huffman: bool) -> int:
    """The relative-index width in [1, 16] that stores ``positions`` in the fewest bits.

    Wider codes need fewer fillers but cost more per code; with Huffman coding the cost of
    each width is its histogram's code length (plus a table estimate), computed without
    encoding.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return 1
    gaps = np.diff(positions, prepend=-1) - 1
    best, best_cost = 1, math.inf
    for width in range(1, 17):
        escape = (1 << width) - 1
        fill = gaps // escape
        fillers = int(fill.sum())
        cost = (positions.size + fillers) * width
        if use_huffman:
            hist = np.bincount(gaps - fill * escape, minlength=escape + 1)
            hist[escape] += fillers
            lengths = huffman.code_lengths(hist)
            used = int(np.count_nonzero(hist))
            table = min((escape + 1) * 5, used * (width + 5))
            cost = min(cost, int((hist * lengths).sum()) + table)
        if cost < best_cost:
            best, best_cost = width, cost
        if int(gaps.max()) < escape:  # no fillers left: wider codes only cost more
            break
    return best


def _write_weight(
    out,
    name,
    tensor,
    index_bits,
    values,
    use_huffman,
    sw: SharedWeights | None,
    codebook_dtype: torch.dtype = torch.float32,
) -> LayerSize:
    """Choose the smallest layout for one weight and write it."""
    dense = tensor.numel() * tensor.element_size()
    if sw is not None:
        sw = sw.compact()
    positions = nonzero_positions(sw.mask if sw is not None else tensor)
    nnz = positions.size
    if index_bits == "auto":
        index_bits = best_index_bits(positions, use_huffman)
    codes = relative_indices(positions, index_bits)
    idx_fixed = fixed_nbytes(codes.size, index_bits)
    pruned = min(dense, idx_fixed + nnz * tensor.element_size())
    has_zeros = nnz < tensor.numel()
    if sw is not None:
        if sw.mask.shape != tensor.shape:
            raise ValueError(f"codebook for '{name}' has shape {tuple(sw.mask.shape)}, weight {tuple(tensor.shape)}")
        itemsize = torch.empty(0, dtype=codebook_dtype).element_size()
        quantized = (idx_fixed if has_zeros else 0) + fixed_nbytes(nnz, sw.bits) + itemsize * sw.codebook.numel()
        block = ByteWriter()
        value_bytes = _write_codebook_values(block, sw, use_huffman, codebook_dtype)
        kind = f"cb{sw.bits}"
    elif values == "fp16":
        quantized = (idx_fixed if has_zeros else 0) + 2 * nnz
        block = ByteWriter()
        value_bytes = _write_raw_values(block, tensor.reshape(-1)[torch.from_numpy(positions)].half())
        kind = "fp16"
    else:  # fp32: sparse only where it is smaller than raw
        if pruned >= dense:
            return _write_raw(out, name, tensor)
        quantized = pruned
        block = ByteWriter()
        value_bytes = _write_raw_values(block, tensor.reshape(-1)[torch.from_numpy(positions)])
        kind = "fp32" if tensor.dtype == torch.float32 else str(tensor.dtype).replace("torch.", "")
    if has_zeros:
        _write_meta(out, name, tensor, SPARSE)
        out.u8(index_bits)
        out.varint(nnz)
        out.varint(codes.size)
        method, index_bytes = _write_stream(out, codes, index_bits, use_huffman)
        encoding = f"csr{index_bits}{'h' if method == HUFFMAN else ''}+{kind}"
    else:
        _write_meta(out, name, tensor, DENSE_VALUES)
        index_bytes, encoding = 0, f"dense+{kind}"
    out.raw(block.getvalue())
    stored = index_bytes + value_bytes  # stream data only: record fields count in file_bytes
    return LayerSize(
        name, tensor.numel(), nnz, dense, pruned, quantized, stored if use_huffman else quantized, encoding
    )


def _write_raw_values(out: ByteWriter, vals: torch.Tensor) -> int:
    """Write a raw value block; return its data bytes."""
    data = _raw_bytes(vals)
    out.u8(VAL_RAW)
    out.u8(_CODES[vals.dtype])
    out.raw(data)
    return len(data)


def _write_codebook_values(
    out: ByteWriter, sw: SharedWeights, use_huffman: bool, dtype: torch.dtype = torch.float32
) -> int:
    """Write a codebook value block; return its data bytes (codebook + code stream)."""
    codebook = _raw_bytes(sw.codebook.to(dtype))
    out.u8(VAL_CODEBOOK)
    out.u8(_CODES[dtype])
    out.varint(sw.codebook.numel())
    out.raw(codebook)
    out.u8(sw.bits)
    return len(codebook) + _write_stream(out, sw.codes.numpy(), sw.bits, use_huffman)[1]


def _write_stream(out: ByteWriter, symbols: np.ndarray, bits: int, use_huffman: bool) -> tuple[int, int]:
    """Write integers < 2**bits, Huffman-coded if asked and smaller; return (method, data bytes)."""
    fixed = pack_fixed(symbols, bits)
    coded = huffman.encode(symbols, bits) if use_huffman and symbols.size else None
    if coded is not None and len(coded) < len(fixed):
        out.u8(HUFFMAN)
        out.raw(coded)
        return HUFFMAN, len(coded)
    out.u8(FIXED)
    out.raw(fixed)
    return FIXED, len(fixed)


# ----------------------------------------------------------------------------- reading
def decode_file(blob: bytes) -> dict[str, torch.Tensor]:
    """Validate the header and checksum of a whole file, then decode its tensors."""
    if len(blob) < HEADER.size:
        raise CompressedFormatError(
            f"file is {len(blob)} bytes, shorter than the {HEADER.size}-byte header: truncated or not a prunekit file"
        )
    magic, version, flags, length, crc = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CompressedFormatError(f"bad magic {magic!r} (expected {MAGIC!r}): not a prunekit compressed file")
    if version != VERSION:
        raise CompressedFormatError(
            f"format version {version} is not supported (this prunekit reads version {VERSION}); "
            "re-save the model with a matching prunekit"
        )
    if flags != 0:
        raise CompressedFormatError(f"unknown header flags {flags:#x}: file corrupted or from a newer prunekit")
    payload = blob[HEADER.size :]
    if len(payload) != length:
        raise CompressedFormatError(
            f"payload is {len(payload)} bytes but the header says {length}: the file is truncated or has trailing data"
        )
    if zlib.crc32(payload, zlib.crc32(blob[4:14])) != crc:
        raise CompressedFormatError("checksum mismatch (CRC32): the file is corrupted")
    try:
        return decode_payload(payload)
    except CompressedFormatError:
        raise
    except (ValueError, IndexError, RuntimeError, MemoryError, OverflowError, KeyError) as err:
        raise CompressedFormatError(f"corrupt payload: {err}") from err


def decode_payload(payload: bytes) -> dict[str, torch.Tensor]:
    """Decode the tensors of a payload (no checksum check: see :func:`decode_file`)."""
    reader = ByteReader(payload)
    state: dict[str, torch.Tensor] = OrderedDict()
    for _ in range(reader.varint(limit=len(payload))):
        name = reader.text()
        if name in state:
            raise CompressedFormatError(f"tensor '{name}' appears twice")
        state[name] = _read_record(reader)
    if reader.remaining:
        raise CompressedFormatError(f"{reader.remaining} unexpected bytes after the last tensor")
    return state


def _dtype(code: int) -> torch.dtype:
    if code not in _DTYPES:
        raise CompressedFormatError(f"unknown dtype code {code}")
    return _DTYPES[code]


def _read_record(reader: ByteReader) -> torch.Tensor:
    dtype = _dtype(reader.u8())
    shape = tuple(reader.varint(limit=MAX_NUMEL) for _ in range(reader.u8()))
    numel = math.prod(shape)  # Python ints: no overflow
    if numel > MAX_NUMEL:
        raise CompressedFormatError(f"tensor of shape {shape} is implausibly large")
    layout = reader.u8()
    if layout == RAW:
        return _from_raw(reader.raw(numel * _itemsize(dtype)), dtype, shape)
    if layout == DENSE_VALUES:
        return _read_values(reader, numel).to(dtype).reshape(shape)
    if layout != SPARSE:
        raise CompressedFormatError(f"unknown record layout {layout}")
    index_bits = reader.u8()
    if not 1 <= index_bits <= 16:
        raise CompressedFormatError(f"index_bits={index_bits} outside [1, 16]")
    nnz = reader.varint(limit=numel)
    entries = reader.varint(limit=numel)
    if entries < nnz:
        raise CompressedFormatError(f"{entries} index entries cannot hold {nnz} non-zeros")
    codes = _read_stream(reader, index_bits, entries)
    positions = absolute_positions(codes, index_bits, numel, nnz)
    vals = _read_values(reader, nnz)
    return scatter_dense(positions, vals.to(dtype), shape)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _from_raw(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _read_values(reader: ByteReader, count: int) -> torch.Tensor:
    kind = reader.u8()
    store = _dtype(reader.u8())
    if kind == VAL_RAW:
        return _from_raw(reader.raw(count * _itemsize(store)), store, (count,))
    if kind != VAL_CODEBOOK:
        raise CompressedFormatError(f"unknown value block kind {kind}")
    k = reader.varint(limit=1 << 16)
    codebook = _from_raw(reader.raw(k * _itemsize(store)), store, (k,))
    bits = reader.u8()
    if not 1 <= bits <= 16 or k > 1 << bits or (count and k == 0):
        raise CompressedFormatError(f"codebook of {k} entries with {bits}-bit codes is invalid")
    codes = _read_stream(reader, bits, count)
    if codes.size and codes.max() >= k:
        raise CompressedFormatError(f"a code points past the {k}-entry codebook")
    return codebook[torch.from_numpy(codes)]


def _read_stream(reader: ByteReader, bits: int, count: int) -> np.ndarray:
    method = reader.u8()
    if method == FIXED:
        return unpack_fixed(reader.raw(fixed_nbytes(count, bits)), bits, count)
    if method == HUFFMAN:
        return huffman.decode(reader, bits, count)
    raise CompressedFormatError(f"unknown stream method {method}")
