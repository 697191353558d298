"""Teacher caching throughput and peak memory: kdsweep's top-k pass (kdsweep.translation.teacher.cache_rows
with a TopkFormat, the loop of the cache_teacher_lm stage: the rows as a shard stores them, ids
bit-packed) over the same examples, batches padded to their longest pair vs packed into rows of
max_length tokens, timed alternately in one run.

    python benchmarks/teacher_caching.py                                     # CPU, tiny teacher, demo lengths
    python benchmarks/teacher_caching.py --shape real --device cuda --lengths fixed:384/192   # Llama-3.2-3B shape

tokens/s counts the pairs' tokens (prompt + response, no padding) the teacher reads; the cache
holds the top-k of the response tokens. On a GPU the teacher runs in bf16 (as the stage loads a
bf16 checkpoint) and peak memory is the allocator's; on the CPU it is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import (
    SHAPES,
    build,
    computed_per_real_token,
    example_lengths,
    examples,
    peak_memory,
    reset_peak_memory,
    sync,
)

from kdsweep.translation.cache_format import TopkFormat
from kdsweep.translation.teacher import cache_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", default="demo", help="fixed:L/R, demo, or cache:<pointer.json> (common.py)")
    parser.add_argument("--examples", type=int, default=512, help="examples per timed round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=96, help="row capacity when packing")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="padded,packed")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    teacher = build(SHAPES[args.shape]["teacher"], args.device, dtype).eval()
    lengths = example_lengths(args.lengths, args.examples)
    items = examples(lengths, teacher.config.vocab_size)
    ids, starts = [it["input_ids"] for it in items], [it["response_start"] for it in items]
    tokens = sum(n for n, _ in lengths)
    params = sum(p.numel() for p in teacher.parameters())
    print(
        f"teacher {args.shape} {params / 1e9:.2f} B params on {args.device} ({dtype}), {torch.get_num_threads()} threads"
    )
    print(
        f"{len(items)} examples ({args.lengths}): mean length {tokens / len(items):.1f} tokens, "
        f"{sum(n - r for n, r in lengths) / len(items):.1f} response; batch {args.batch_size}, top-{args.top_k}"
    )
    settings = {"max_length": args.max_length, "batch_size": args.batch_size, "chunk_size": args.chunk_size}
    fmt = TopkFormat(args.top_k, teacher.config.vocab_size, "bfloat16" if dtype == torch.bfloat16 else "float16")
    modes = args.modes.split(",")
    padded, packed = (computed_per_real_token(lengths, args.batch_size, m) for m in (None, args.max_length))
    print(
        f"token positions computed per real token: padded {padded:.2f}, packed into rows of {args.max_length}: {packed:.2f}"
    )

    def run(mode: str) -> float:
        sync(args.device)
        start = time.perf_counter()
        cache_rows(teacher, ids, starts, {**settings, "packing": mode == "packed"}, fmt, pad_token_id=0, desc=mode)
        sync(args.device)
        return tokens / (time.perf_counter() - start)

    rates, peaks = {m: [] for m in modes}, {}
    for mode in modes:  # warm-up, and each mode's peak memory on its own
        reset_peak_memory(args.device)
        run(mode)
        peaks[mode] = peak_memory(args.device)
    for _ in range(args.repeats):
        for mode in modes:
            rates[mode].append(run(mode))
    for mode in modes:
        rounds = ", ".join(f"{r:,.0f}" for r in rates[mode])
        print(
            f"{mode:7s} tokens/s per round: {rounds}; median {statistics.median(rates[mode]):,.0f}; peak {peaks[mode]}"
        )
    if len(modes) == 2:
        a, b = (statistics.median(rates[m]) for m in modes)
        print(f"{modes[1]}/{modes[0]} = {b / a:.2f}x")


if __name__ == "__main__":
    main()
