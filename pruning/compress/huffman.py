"""Canonical, length-limited Huffman coding of small-integer streams.

The code table is stored as code lengths only (canonical codes are rebuilt from them),
either for the whole alphabet or, when shorter, as (symbol, length) pairs. The bit
stream is cut into blocks of ``block`` symbols whose starting bit offsets are stored,
so decoding runs vectorised over all blocks at once (a few thousand numpy steps for
millions of symbols) instead of one Python step per symbol.
"""

from __future__ import annotations

import heapq

import numpy as np

from pruning.compress.bitstream import (
    ByteReader,
    ByteWriter,
    CompressedFormatError,
    fixed_nbytes,
    pack_fixed,
    pack_varlen,
    peek,
    unpack_fixed,
)

MAX_CODE_LEN = 16
DEFAULT_BLOCK = 4096
_LEN_BITS = 5  # a code length 0..16 takes 5 bits in the table


def code_lengths(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Huffman code length per symbol (0 = unused), limited to ``max_len`` bits."""
    freqs = np.asarray(freqs, dtype=np.int64)
    used = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.size, dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    f = freqs[used]
    while True:
        depth = _tree_depths(f.tolist())
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        f = np.maximum(f >> 1, 1)  # flatten the distribution until the code fits


def _tree_depths(freqs: list[int]) -> np.ndarray:
    m = len(freqs)
    heap = [(f, i) for i, f in enumerate(freqs)]
    heapq.heapify(heap)
    parent = [0] * (2 * m - 1)
    nxt = m
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (fa + fb, nxt))
        nxt += 1
    depth = [0] * (2 * m - 1)
    for node in range(2 * m - 3, -1, -1):  # parents have larger ids than children
        depth[node] = depth[parent[node]] + 1
    return np.asarray(depth[:m], dtype=np.int64)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol from its length (shorter codes first, then by symbol)."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    code, prev = 0, 0
    for sym in order.tolist():
        length = int(lengths[sym])
        code <<= length - prev
        codes[sym] = code
        code, prev = code + 1, length
    return codes


def encode(symbols: np.ndarray, alphabet_bits: int, block: int = DEFAULT_BLOCK) -> bytes:
    """Huffman-code ``symbols`` (ints < 2**alphabet_bits) into a self-describing stream."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b""
    lengths = code_lengths(np.bincount(symbols, minlength=1 << alphabet_bits))
    codes = canonical_codes(lengths)
    out = ByteWriter()
    _write_table(out, lengths, alphabet_bits)
    sym_lens = lengths[symbols]
    cum = np.cumsum(sym_lens)
    total_bits = int(cum[-1])
    n_blocks = -(-symbols.size // block)
    offsets = cum[np.arange(1, n_blocks) * block - 1]
    width = max(1, total_bits.bit_length())
    if width > 32:
        raise ValueError("Huffman stream over 4 Gbit: split the layer or disable Huffman coding")
    out.varint(block)
    out.u8(width)
    out.raw(pack_fixed(offsets, width))
    data = pack_varlen(codes[symbols], sym_lens, int(lengths.max()))
    out.varint(len(data))
    out.raw(data)
    return out.getvalue()


def decode(reader: ByteReader, alphabet_bits: int, count: int) -> np.ndarray:
    """Read a stream written by :func:`encode` holding ``count`` symbols."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = _read_table(reader, alphabet_bits)
    block = reader.varint(limit=1 << 30)
    width = reader.u8()
    if block < 1 or not 1 <= width <= 32:
        raise CompressedFormatError(f"bad Huffman block header (block={block}, width={width})")
    n_blocks = -(-count // block)
    offsets = unpack_fixed(reader.raw(fixed_nbytes(n_blocks - 1, width)), width, n_blocks - 1)
    nbytes = reader.varint(limit=reader.remaining)
    if count > 8 * nbytes:
        raise CompressedFormatError(f"Huffman stream of {nbytes} bytes cannot hold {count} symbols")
    data = np.frombuffer(reader.raw(nbytes), dtype=np.uint8)
    total_bits = 8 * nbytes
    starts = np.concatenate([[0], offsets]).astype(np.int64)
    if np.any(np.diff(starts) < 0) or starts[-1] > total_bits:
        raise CompressedFormatError("corrupt Huffman stream: block offsets out of order")
    table_sym, table_len, max_len = _decode_table(lengths)
    padded = np.concatenate([data, np.zeros(4, dtype=np.uint8)])
    steps = min(block, count)
    out = np.empty((n_blocks, steps), dtype=np.int64)
    used = np.empty((n_blocks, steps), dtype=np.int64)
    pos = starts.copy()
    for j in range(steps):  # one step decodes the next symbol of every block at once
        window = peek(padded, np.minimum(pos, total_bits), max_len)
        out[:, j] = table_sym[window]
        used[:, j] = table_len[window]
        pos += used[:, j]
    last = count - (n_blocks - 1) * steps
    valid = np.ones((n_blocks, steps), dtype=bool)
    valid[-1, last:] = False
    if np.any(used[valid] == 0):
        raise CompressedFormatError("corrupt Huffman stream: bit pattern matches no code")
    ends = starts + np.where(valid, used, 0).sum(axis=1)
    if np.any(ends[:-1] != starts[1:]) or not total_bits - 8 < ends[-1] <= total_bits:
        raise CompressedFormatError("corrupt Huffman stream: block lengths do not add up")
    return out.ravel()[:count]


def _write_table(out: ByteWriter, lengths: np.ndarray, alphabet_bits: int) -> None:
    used = np.flatnonzero(lengths)
    dense_bytes = fixed_nbytes(lengths.size, _LEN_BITS)
    sparse_bytes = fixed_nbytes(used.size, alphabet_bits + _LEN_BITS) + 3
    if dense_bytes <= sparse_bytes:
        out.u8(0)
        out.raw(pack_fixed(lengths, _LEN_BITS))
    else:
        out.u8(1)
        out.varint(used.size)
        out.raw(pack_fixed((used << _LEN_BITS) | lengths[used], alphabet_bits + _LEN_BITS))


def _read_table(reader: ByteReader, alphabet_bits: int) -> np.ndarray:
    size = 1 << alphabet_bits
    form = reader.u8()
    if form == 0:
        lengths = unpack_fixed(reader.raw(fixed_nbytes(size, _LEN_BITS)), _LEN_BITS, size)
    elif form == 1:
        m = reader.varint(limit=size)
        bits = alphabet_bits + _LEN_BITS
        pairs = unpack_fixed(reader.raw(fixed_nbytes(m, bits)), bits, m)
        symbols, lens = pairs >> _LEN_BITS, pairs & ((1 << _LEN_BITS) - 1)
        if np.any(np.diff(symbols) <= 0):
            raise CompressedFormatError("corrupt Huffman table: symbols not strictly increasing")
        lengths = np.zeros(size, dtype=np.int64)
        lengths[symbols] = lens
    else:
        raise CompressedFormatError(f"unknown Huffman table form {form}")
    if lengths.max(initial=0) > MAX_CODE_LEN or not lengths.any():
        raise CompressedFormatError("corrupt Huffman table: code lengths out of range")
    kraft = int(np.sum(np.where(lengths > 0, 1 << (MAX_CODE_LEN - lengths), 0)))
    if kraft > 1 << MAX_CODE_LEN:
        raise CompressedFormatError("corrupt Huffman table: lengths violate the Kraft inequality")
    return lengths


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables indexed by the next ``max_len`` bits: symbol and its code length."""
    max_len = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.zeros(1 << max_len, dtype=np.int64)
    table_len = np.zeros(1 << max_len, dtype=np.int64)  # 0 marks a pattern with no code
    for sym in np.flatnonzero(lengths).tolist():
        shift = max_len - int(lengths[sym])
        lo = int(codes[sym]) << shift
        table_sym[lo : lo + (1 << shift)] = sym
        table_len[lo : lo + (1 << shift)] = lengths[sym]
    return table_sym, table_len, max_len
