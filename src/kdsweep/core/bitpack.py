"""Token ids in the fewest bits: a cache row's vocabulary indices take ceil(log2 V) bits each
(17 for Llama-3's 128,256 tokens, against 32 as int32), and a sampled cache's counts the bits
that hold N. Values are laid end to end, least significant bit first, in little-endian bytes:
value i occupies bits [i * bits, (i + 1) * bits) of the stream, the last byte padded with zeros.

    bits = bits_for(128_256)                  # 17
    packed = pack(indices, bits)              # uint8, ceil(indices.size * 17 / 8) bytes
    unpack(packed, bits, indices.size)        # the indices again (int64, flat)

The teacher caches store rows of ids (a top-k row, a sampled row) with pack_rows: each row packed
on its own and padded to whole bytes (under 1 byte per row), so a row range of the file is a byte
range (memory-mapped slicing, chunked checks) and unpack_rows reads any rows alone.
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
    return unpack_rows(data.reshape(1, -1), bits, n)[0]  # pack()'s stream is one row's layout


def pack_rows(values, bits: int) -> np.ndarray:
    """Rows of `values` [R, m] packed row by row: uint8 [R, packed_size(m, bits)], each row laid
    out as pack() lays out m values (its last byte zero-padded). ValueError as pack()."""
    rows = np.asarray(values)
    if rows.ndim != 2:
        raise ValueError(f"pack_rows: a 2-d array of rows needed, got shape {rows.shape}")
    r, m = rows.shape
    width = packed_size(m, bits)
    pad = width * 8 - m * bits  # whole bytes per row: zero bits appended to each row's stream
    if r == 0 or m == 0:
        return np.zeros((r, width), dtype=np.uint8)
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"pack_rows: integer values needed, got dtype {rows.dtype}")
    step = max(1, CHUNK // max(m, 1))
    out = np.empty((r, width), dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.int64)
    for start in range(0, r, step):
        chunk = rows[start : start + step].astype(np.int64, copy=False)
        bad = np.argwhere((chunk < 0) | (chunk >= (1 << bits)))
        if bad.size:
            i, j = (int(x) for x in bad[0])
            raise ValueError(
                f"pack_rows: value {int(chunk[i, j])} at row {start + i}, column {j} does not fit in {bits} bits "
                f"(0..{(1 << bits) - 1})"
            )
        bit_matrix = ((chunk[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(len(chunk), m * bits)
        if pad:
            bit_matrix = np.concatenate([bit_matrix, np.zeros((len(chunk), pad), dtype=np.uint8)], axis=1)
        out[start : start + len(chunk)] = np.packbits(bit_matrix, axis=1, bitorder="little")
    return out


def unpack_rows(packed, bits: int, m: int) -> np.ndarray:
    """The rows [R, m] (int64) that pack_rows wrote into `packed` [R, packed_size(m, bits)];
    ValueError for another row width. Values 8q + r of a row start at byte q * bits + (r * bits
    >> 3) of it: for each r, one strided view of 8-byte little-endian words, shifted and masked,
    so the memory taken is the output's and a padded copy of the input (bits <= 57)."""
    data = np.asarray(packed, dtype=np.uint8)
    _check_bits(bits)
    if data.ndim != 2 or data.shape[1] != packed_size(m, bits):
        raise ValueError(
            f"unpack_rows: rows of {m} values of {bits} bits take {packed_size(m, bits)} bytes, got shape {data.shape}"
        )
    rows, width = data.shape
    if rows == 0 or m == 0:
        return np.zeros((rows, m), dtype=np.int64)
    if bits > 57:  # a word would not hold the value and its shift: the bit matrix
        bit_matrix = np.unpackbits(data, axis=1, count=m * bits, bitorder="little").reshape(rows, m, bits)
        return bit_matrix.astype(np.int64) @ np.left_shift(1, np.arange(bits, dtype=np.int64))
    padded = np.zeros(rows * width + 8, dtype=np.uint8)  # 8 bytes past the end: the last word's
    padded[: rows * width] = data.reshape(-1)
    out = np.empty((rows, m), dtype=np.int64)
    mask = np.uint64((1 << bits) - 1)
    for r in range(min(8, m)):
        words = np.ndarray(
            shape=(rows, len(range(r, m, 8))), dtype="<u8", buffer=padded, offset=(r * bits) >> 3, strides=(width, bits)
        )
        out[:, r::8] = (words >> np.uint64((r * bits) & 7)) & mask
    return out


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
