"""Student distillation throughput with the teacher's top-k read from the cache vs the teacher
run online in the same process: same student, same batches, same loss (kdsweep's chunked top-k KD).
The cache's rows are kept as a shard stores them (translation.cache_format.TopkFormat: ids
bit-packed) and decoded each step, as the distill job's dataset does; online, the teacher's rows
come from the same code (teacher.teacher_rows) and are decoded the same way.

    python benchmarks/cached_vs_online.py [--steps 20] [--repeats 3] [--device cpu|cuda] [--shape tiny|real]

tiny (CPU): Llama-architecture teacher and student whose parameter ratio is that of
Llama-3.2-3B / Llama-3.2-1B (about 2.6x); real (GPU): LlamaConfig of the two real models, random
weights, bf16. Cached and online steps are timed alternately, in several rounds, in one run;
the figure is the ratio of their tokens/s (response tokens, the ones with a loss).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import SHAPES, build, example_lengths, examples, sync

from kdsweep.core.losses import TopkKD, chunked_token_losses
from kdsweep.translation.batching import TranslationCollator, response_hidden_states
from kdsweep.translation.cache_format import TopkFormat
from kdsweep.translation.teacher import teacher_rows

KD = TopkKD(temperature=1.0, kind="forward_kl", tail="ignore")


def student_step(student, optimizer, batch, rows: dict[str, torch.Tensor], chunk_size: int) -> None:
    hidden, targets = response_hidden_states(student, student, batch)
    ce, kd = chunked_token_losses(hidden, student.get_output_embeddings(), targets, rows, KD, chunk_size)
    (0.5 * kd.mean() + 0.5 * ce.mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round and mode")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (cached and online alternate)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--response", type=int, default=64, help="response tokens per sequence (with a loss)")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    teacher = build(SHAPES[args.shape]["teacher"], args.device, dtype).eval().requires_grad_(False)
    student = build(SHAPES[args.shape]["student"], args.device, dtype).train()
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    print(f"shape {args.shape} on {args.device} ({dtype}), {torch.get_num_threads()} CPU threads")
    print(f"teacher {n_t / 1e6:.1f} M params, student {n_s / 1e6:.1f} M params, ratio {n_t / n_s:.2f}")
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    lengths = example_lengths(f"fixed:{args.length}/{args.response}", args.steps * args.batch_size)
    items = examples(lengths, student.config.vocab_size)
    collate = TranslationCollator(pad_token_id=0)
    data = [
        {k: v.to(args.device) for k, v in collate(items[i : i + args.batch_size]).items()}
        for i in range(0, len(items), args.batch_size)
    ]
    # The cache: the teacher's top-k rows of every batch as a shard stores them, computed once (not timed).
    fmt = TopkFormat(args.top_k, teacher.config.vocab_size, "float16")
    cache = [teacher_rows(teacher, b, fmt, args.chunk_size) for b in data]
    tokens = args.steps * args.batch_size * args.response

    def run(mode: str) -> float:
        sync(args.device)
        start = time.perf_counter()
        for batch, stored in zip(data, cache, strict=True):
            if mode == "online":
                stored = teacher_rows(teacher, batch, fmt, args.chunk_size)
            rows = {name: t.to(args.device) for name, t in fmt.decode(stored).items()}
            student_step(student, optimizer, batch, rows, args.chunk_size)
        sync(args.device)
        return tokens / (time.perf_counter() - start)

    run("cached"), run("online")  # warm-up
    rates = {"cached": [], "online": []}
    for _ in range(args.repeats):
        for mode in rates:
            rates[mode].append(run(mode))
    for mode, r in rates.items():
        print(f"{mode:7s} tokens/s per round: " + ", ".join(f"{x:,.0f}" for x in r))
    cached, online = (sorted(rates[m])[len(rates[m]) // 2] for m in ("cached", "online"))
    print(
        f"median: cached {cached:,.0f} tokens/s, online {online:,.0f} tokens/s, cached/online = {cached / online:.2f}x"
    )


if __name__ == "__main__":
    main()
