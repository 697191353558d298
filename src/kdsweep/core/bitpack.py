"""Token ids in the fewest bits: a cache row's vocabulary indices take ceil(log2 V) bits each
(17 for Llama-3's 128,256 tokens, against 32 as int32), and a sampled cache's counts the bits
that hold N. Values are laid end to end, least significant bit first, in little-endian bytes:
value i occupies bits [i * bits, (i + 1) * bits) of the stream, the last byte padded with zeros.

    bits = bits_for(128_256)                  # 17
    packed = pack(indices, bits)              # uint8, ceil(indices.size * 17 / 8) bytes
    unpack(packed, bits, indices.size)        # the indices again (int64, flat)

Part of issue 17 (sampled teacher caches); the caches do not use it yet.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 63  # values are carried as int64 on the way
# Values per step (a multiple of 8, so that each step's bytes end on a byte boundary): the bit
# matrix of a step takes CHUNK x bits bytes packing, 8 times that unpacking.
CHUNK = 1 << 16


def bits_for(count: int) -> int:
    """The bits that hold every value in [0, count): ceil(log2(count)), at least 1."""
    if count < 1:
        raise ValueError(f"bits_for: need at least one value to represent, got {count}")
    return max(1, (count - 1).bit_length())


def packed_size(n: int, bits: int) -> int:
    """Bytes that `n` values of `bits` bits take packed."""
    return (n * bits + 7) // 8


def pack(values, bits: int) -> np.ndarray:
    """`values` (any integer array, flattened in C order) packed `bits` bits each into a uint8
    array of packed_size(values.size, bits) bytes. ValueError naming the first value that does
    not fit (negative, or 2**bits or more): a token id outside the vocabulary is refused, not
    wrapped into another token."""
    _check_bits(bits)
    flat = np.asarray(values).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"pack: integer values needed, got dtype {flat.dtype}")
    flat = flat.astype(np.int64, copy=False)
    bad = np.flatnonzero((flat < 0) | (flat >= (1 << bits)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"pack: value {int(flat[i])} at position {i} does not fit in {bits} bits (0..{(1 << bits) - 1})"
        )
    shifts = np.arange(bits, dtype=np.int64)
    out = np.empty(packed_size(flat.size, bits), dtype=np.uint8)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        bit_matrix = ((chunk[:, None] >> shifts) & 1).astype(np.uint8)  # (n, bits), least significant first
        first = start * bits // 8
        out[first : first + packed_size(chunk.size, bits)] = np.packbits(bit_matrix.reshape(-1), bitorder="little")
    return out


def unpack(packed, bits: int, n: int) -> np.ndarray:
    """The `n` values (int64, flat) that pack() wrote into `packed`. ValueError when `packed` has
    another length than packed_size(n, bits) (a truncated or foreign buffer)."""
    _check_bits(bits)
    data = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if data.size != packed_size(n, bits):
        raise ValueError(f"unpack: {n} values of {bits} bits take {packed_size(n, bits)} bytes, got {data.size}")
    weights = np.left_shift(1, np.arange(bits, dtype=np.int64))
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        first = start * bits // 8
        chunk = data[first : first + packed_size(count, bits)]
        bit_matrix = np.unpackbits(chunk, count=count * bits, bitorder="little").reshape(count, bits)
        out[start : start + count] = bit_matrix.astype(np.int64) @ weights
    return out


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
