"""Teacher caching throughput and peak memory: kdsweep's cache pass (kdsweep.translation.teacher.cache_rows,
the loop of the cache_teacher_lm stage: the rows as a shard stores them, ids bit-packed) over the
same examples, batches padded to their longest pair vs packed into rows of max_length tokens, and
top-k vs sampled rows (--formats topk64,sampled12), every combination timed alternately in one run.

    python benchmarks/teacher_caching.py                                     # CPU, tiny teacher, demo lengths
    python benchmarks/teacher_caching.py --modes packed --formats topk64,sampled12   # top-64 vs sampled-12
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

from kdsweep.translation.cache_format import SampledFormat, TopkFormat, bytes_per_token
from kdsweep.translation.teacher import cache_rows


def cache_format(name: str, vocab_size: int, value_dtype: str):
    """topk<k> or sampled<draws> (at T = 1)."""
    if name.startswith("topk"):
        return TopkFormat(int(name[4:]), vocab_size, value_dtype)
    if name.startswith("sampled"):
        return SampledFormat(int(name[7:]), 1.0, vocab_size)
    raise ValueError(f"--formats: {name!r} is neither topk<k> nor sampled<draws>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", default="demo", help="fixed:L/R, demo, or cache:<pointer.json> (common.py)")
    parser.add_argument("--examples", type=int, default=512, help="examples per timed round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=96, help="row capacity when packing")
    parser.add_argument("--formats", default="topk64", help="comma-separated topk<k> and sampled<draws>")
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
        f"{sum(n - r for n, r in lengths) / len(items):.1f} response; batch {args.batch_size}"
    )
    settings = {"max_length": args.max_length, "batch_size": args.batch_size, "chunk_size": args.chunk_size}
    value_dtype = "bfloat16" if dtype == torch.bfloat16 else "float16"
    formats = {f: cache_format(f, teacher.config.vocab_size, value_dtype) for f in args.formats.split(",")}
    for name, fmt in formats.items():
        print(f"{name}: {bytes_per_token(fmt)} B/token of cache rows")
    modes = [f"{layout}/{f}" if len(formats) > 1 else layout for layout in args.modes.split(",") for f in formats]
    padded, packed = (computed_per_real_token(lengths, args.batch_size, m) for m in (None, args.max_length))
    print(
        f"token positions computed per real token: padded {padded:.2f}, packed into rows of {args.max_length}: {packed:.2f}"
    )

    def run(mode: str) -> float:
        layout, _, name = mode.partition("/")
        fmt = formats[name or next(iter(formats))]
        generator = torch.Generator().manual_seed(0)  # the stage's: a sampled format's uniforms
        sync(args.device)
        start = time.perf_counter()
        cache_rows(teacher, ids, starts, {**settings, "packing": layout == "packed"}, fmt, 0, generator, desc=mode)
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
    first = statistics.median(rates[modes[0]])
    for mode in modes[1:]:
        print(f"{mode}/{modes[0]} = {statistics.median(rates[mode]) / first:.2f}x")


if __name__ == "__main__":
    main()
