"""Bit packing of token ids (kdsweep.core.bitpack), checked against Python's own integers: the
packed stream of values v_0, v_1, ... of b bits is the little-endian bytes of sum(v_i << i*b)."""

import math

import numpy as np
import pytest

from kdsweep.core import bitpack
from kdsweep.core.bitpack import bits_for, pack, packed_size, unpack

LLAMA3_VOCAB = 128_256


def reference_bytes(values, bits: int) -> bytes:
    total = sum(int(v) << (i * bits) for i, v in enumerate(values))
    return total.to_bytes(math.ceil(len(values) * bits / 8), "little")


@pytest.mark.parametrize("count", [2, 3, 255, 256, 257, 1000, 32_000, LLAMA3_VOCAB, 2**40 + 1])
def test_bits_for_is_the_ceiling_of_log2(count):
    assert bits_for(count) == math.ceil(math.log2(count))


def test_bits_for_llama3_is_17_and_one_value_needs_one_bit():
    assert bits_for(LLAMA3_VOCAB) == 17 and bits_for(1) == 1
    with pytest.raises(ValueError, match="at least one value"):
        bits_for(0)


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 9, 17, 33, 63])
def test_packed_bytes_are_pythons_integer_layout(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=301, dtype=np.uint64).astype(np.int64) if bits < 63 else None
    if values is None:  # 2**63 does not fit an int64 bound: draw the 63-bit values from two halves
        values = (rng.integers(0, 2**31, size=301) << 32) | rng.integers(0, 2**32, size=301)
    values[:2] = [0, 2**bits - 1]
    packed = pack(values, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(301, bits) == math.ceil(301 * bits / 8)
    assert packed.tobytes() == reference_bytes(values, bits)
    assert np.array_equal(unpack(packed, bits, 301), values)


def test_round_trip_of_llama3_token_ids_across_chunks(monkeypatch):
    """Rows of top-k indices of a 128,256-token vocabulary, the edges included, 2.125 bytes an id;
    with a small step size, so that values and bytes cross many step boundaries."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, LLAMA3_VOCAB, size=(37, 64))
    ids[0, :3] = [0, LLAMA3_VOCAB - 1, 2**17 - 1]
    bits = bits_for(LLAMA3_VOCAB)
    whole = pack(ids, bits)
    assert whole.size == 37 * 64 * 17 // 8  # against 4 bytes an id as int32
    monkeypatch.setattr(bitpack, "CHUNK", 24)
    assert np.array_equal(pack(ids, bits), whole)
    assert np.array_equal(unpack(whole, bits, ids.size).reshape(ids.shape), ids)
    assert whole.tobytes() == reference_bytes(ids.reshape(-1), bits)


def test_values_that_do_not_fit_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"value 131072 at position 2 does not fit in 17 bits"):
        pack(np.array([5, 7, 2**17, 3]), 17)
    with pytest.raises(ValueError, match=r"value -1 at position 0"):
        pack(np.array([-1]), 17)
    with pytest.raises(ValueError, match="integer values"):
        pack(np.array([1.0, 2.0]), 17)


def test_a_truncated_buffer_is_refused():
    packed = pack(np.arange(10), 17)
    with pytest.raises(ValueError, match=r"10 values of 17 bits take 22 bytes, got 21"):
        unpack(packed[:-1], 17, 10)
    assert unpack(pack(np.array([], dtype=np.int64), 17), 17, 0).size == 0


@pytest.mark.parametrize("bits, m", [(17, 64), (17, 12), (10, 16), (4, 12), (3, 5)])
def test_rows_are_packed_each_as_pack_lays_out_its_values_padded_to_whole_bytes(bits, m):
    rng = np.random.default_rng(bits * 100 + m)
    rows = rng.integers(0, 2**bits, size=(37, m))
    rows[0, :2] = [0, 2**bits - 1]
    packed = bitpack.pack_rows(rows, bits)
    assert packed.shape == (37, math.ceil(m * bits / 8))
    for r in range(37):  # each row is Python's integer layout of its own values
        assert packed[r].tobytes() == reference_bytes(rows[r], bits)
    assert np.array_equal(bitpack.unpack_rows(packed, bits, m), rows)
    assert np.array_equal(bitpack.unpack_rows(packed[5:9], bits, m), rows[5:9])  # any rows alone


def test_llama3_rows_round_trip_across_chunks(monkeypatch):
    monkeypatch.setattr(bitpack, "CHUNK", 256)  # several steps of rows
    rows = np.random.default_rng(3).integers(0, LLAMA3_VOCAB, size=(100, 64))
    rows[-1, -1] = LLAMA3_VOCAB - 1
    packed = bitpack.pack_rows(rows, bits_for(LLAMA3_VOCAB))
    assert packed.shape == (100, 136)  # 64 x 17 bits = 136 bytes, against 256 as int32
    assert np.array_equal(bitpack.unpack_rows(packed, 17, 64), rows)


def test_rows_that_do_not_fit_or_have_another_width_are_refused():
    with pytest.raises(ValueError, match="value 1024 at row 1, column 2 does not fit in 10 bits"):
        bitpack.pack_rows(np.array([[0, 1, 2], [3, 4, 1024]]), 10)
    with pytest.raises(ValueError, match="rows of 3 values of 10 bits take 4 bytes"):
        bitpack.unpack_rows(np.zeros((2, 5), dtype=np.uint8), 10, 3)


def test_no_rows_unpack_to_no_rows():  # a shard whose pairs were all too long
    assert bitpack.unpack_rows(np.zeros((0, 26), dtype=np.uint8), 17, 12).shape == (0, 12)
    assert bitpack.pack_rows(np.zeros((0, 12), dtype=np.int64), 17).shape == (0, 26)
