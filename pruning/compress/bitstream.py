"""Bit-level building blocks of the compressed format, vectorised with numpy.

Fixed-width packing of small unsigned integers (MSB first), variable-length packing
(for Huffman codes), and a bounds-checked byte reader/writer with LEB128 varints.
Every decoding error raises :class:`CompressedFormatError`, never IndexError or a hang.
"""

from __future__ import annotations

import struct

import numpy as np

from pruning.checks import check_number

# Values per chunk when expanding integers to bits (bounds peak memory to ~16 MiB).
_CHUNK = 1 << 20


class CompressedFormatError(ValueError):
    """A compressed file or stream is malformed, truncated, corrupted or of another version."""


def check_bits(bits: int, what: str) -> int:
    """Validate a bit width in [1, 16]; return it as int."""
    return int(check_number(what, bits, 1, 16, integer=True))


def fixed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits each, bit-packed."""
    return (count * bits + 7) // 8


def pack_fixed(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits into ``bits`` bits each, MSB first."""
    values = np.asarray(values, dtype=np.uint32).ravel()
    if values.size and int(values.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    parts = []
    for start in range(0, values.size, _CHUNK):  # _CHUNK % 8 == 0: chunks stay byte aligned
        chunk = values[start : start + _CHUNK]
        parts.append(np.packbits(((chunk[:, None] >> shifts) & 1).astype(np.uint8)).tobytes())
    return b"".join(parts)


def unpack_fixed(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``count`` integers (int64)."""
    need = fixed_nbytes(count, bits)
    if len(data) < need:
        raise CompressedFormatError(f"bit stream too short: {len(data)} bytes, need {need}")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        byte0 = start * bits // 8  # start is a multiple of 8, so this is exact
        chunk = np.unpackbits(raw[byte0 : byte0 + fixed_nbytes(n, bits)])[: n * bits]
        out[start : start + n] = chunk.reshape(n, bits).astype(np.int64) @ weights
    return out


def pack_varlen(codes: np.ndarray, lengths: np.ndarray, max_len: int) -> bytes:
    """Concatenate codes of varying length (``lengths[i]`` bits of ``codes[i]``, MSB first)."""
    codes = np.asarray(codes, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.uint32)
    shifts = np.arange(max_len - 1, -1, -1, dtype=np.uint32)
    columns = np.arange(max_len, dtype=np.uint32)
    bit_parts = []
    for start in range(0, codes.size, _CHUNK):
        c, n = codes[start : start + _CHUNK], lengths[start : start + _CHUNK]
        aligned = c << (max_len - n)  # left-align every code in a max_len-bit window
        bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
        bit_parts.append(bits[columns[None, :] < n[:, None]])
    if not bit_parts:
        return b""
    return np.packbits(np.concatenate(bit_parts)).tobytes()


def peek(padded: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` (<= 17) bits starting at each bit position, as integers.

    ``padded`` is the byte stream followed by at least 3 zero bytes.
    """
    byte = positions >> 3
    window = (
        (padded[byte].astype(np.int64) << 16)
        | (padded[byte + 1].astype(np.int64) << 8)
        | padded[byte + 2].astype(np.int64)
    )
    return (window >> (24 - (positions & 7) - width)) & ((1 << width) - 1)


class ByteWriter:
    """Append-only byte buffer with LEB128 varints."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def raw(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self.size += len(data)

    def u8(self, value: int) -> None:
        self.raw(struct.pack("<B", value))

    def varint(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"varint must be >= 0, got {value}")
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self.raw(bytes(out))

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        self.varint(len(data))
        self.raw(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class ByteReader:
    """Bounds-checked reader over a bytes payload; overruns raise CompressedFormatError."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self._view) - self.pos

    def raw(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise CompressedFormatError(
                f"truncated payload: need {n} bytes at offset {self.pos}, {self.remaining} left"
            )
        out = self._view[self.pos : self.pos + n].tobytes()
        self.pos += n
        return out

    def u8(self) -> int:
        return self.raw(1)[0]

    def varint(self, limit: int = 1 << 62) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise CompressedFormatError(f"varint too long at offset {self.pos}")
        if value > limit:
            raise CompressedFormatError(f"value {value} at offset {self.pos} exceeds {limit}")
        return value

    def text(self) -> str:
        data = self.raw(self.varint(limit=1 << 16))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CompressedFormatError(f"invalid UTF-8 name at offset {self.pos}") from err
