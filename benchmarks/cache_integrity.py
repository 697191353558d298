"""What checking the teacher cache costs: reading a top-k shard (k = 64, Llama-3's vocabulary, the
real shard format: translation.cache_format.TopkFormat's rows, ids bit-packed) through
CacheEntry.read_shard (every tensor's SHA-256 recomputed and compared) and then the value check
(translation.teacher.cache_shard_check: finite, ranges, lengths, every packed id unpacked and
checked against the vocabulary), against a plain safetensors read of the same file into memory
(load_file maps the file; its tensors are copied, as read_shard's are), side by side.

    HF_HUB_OFFLINE=1 python benchmarks/cache_integrity.py [--tokens 2000000]

Prints ratios only (absolute times count only from a GPU machine's storage and CPUs)."""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from kdsweep.core.cache import CacheEntry
from kdsweep.translation.cache_format import TopkFormat, bytes_per_token
from kdsweep.translation.teacher import cache_shard_check

VOCAB, K = 128256, 64
FORMAT = TopkFormat(K, VOCAB, "float16")
BLOCK = 256  # token rows encoded from full-vocabulary logits, then repeated to fill the shard


def fake_shard(tokens: int, seq: int = 64) -> dict[str, torch.Tensor]:
    """A shard shaped like the real one: `tokens` response tokens (a multiple of seq / 2) in
    examples of `seq` tokens (half prompt, half response), the token rows made by the format's own
    encode from random full-vocabulary logits, BLOCK rows of them repeated (hashing and checking
    cost the same whatever the values)."""
    g = torch.Generator().manual_seed(0)
    examples = tokens // (seq // 2)
    tokens = examples * (seq // 2)
    rows = FORMAT.encode(torch.randn(min(BLOCK, tokens), VOCAB, generator=g) * 3)
    repeats = -(-tokens // len(rows["lse"]))
    rows = {name: t.repeat(repeats, *([1] * (t.dim() - 1)))[:tokens].contiguous() for name, t in rows.items()}
    return {
        "example_index": torch.arange(examples),
        "lengths": torch.full((examples,), seq),
        "response_start": torch.full((examples,), seq // 2),
        "input_ids": torch.randint(0, VOCAB, (examples * seq,), generator=g, dtype=torch.int32),
        "prompt_digest": torch.zeros(examples, 16, dtype=torch.uint8),
        "response_digest": torch.zeros(examples, 16, dtype=torch.uint8),
        **rows,
        "dropped_too_long": torch.zeros(1, dtype=torch.int64),
    }


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="response tokens in the shard")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        key_parts = {"kind": "lm_topk", "method": "topk", "top_k": K, "value_dtype": FORMAT.value_dtype}
        entry = CacheEntry(store, key_parts)
        shard = fake_shard(args.tokens)
        entry.write_shard(0, shard)
        path = str(entry.shard_path(0))
        size = entry.shard_path(0).stat().st_size
        check = cache_shard_check(FORMAT)
        assert check(entry.read_shard(0)) is None
        plain = best_of(lambda: {k: v.clone() for k, v in load_file(path).items()})  # in memory, like read_shard
        verified = best_of(lambda: entry.read_shard(0))
        checked = best_of(lambda: check(entry.read_shard(0)))
        plain_write = best_of(lambda: save_file(shard, path + ".plain"))
        hashed_write = best_of(lambda: entry.write_shard(1, shard))
    tokens = len(shard["lse"])
    per_token = sum(shard[n].numel() * shard[n].element_size() for n in FORMAT.dtypes()) / tokens
    assert per_token == bytes_per_token(FORMAT)
    print(
        f"shard: {tokens:,} response tokens, k = {K}, {size / 2**20:,.0f} MiB ({per_token:.0f} B/token top-k rows, "
        f"ids packed in {FORMAT.index_bits} bits)"
    )
    print(f"read, checksums verified / plain safetensors read:         {verified / plain:6.2f}x")
    print(f"read, checksums and values checked / plain safetensors read: {checked / plain:6.2f}x")
    print(f"write with checksums / plain safetensors write:            {hashed_write / plain_write:6.2f}x")


if __name__ == "__main__":
    main()
