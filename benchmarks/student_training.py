"""Student training throughput from the teacher cache: kdsweep's DistillTrainer with the TokenKD loss (the distill_lm
stage's Hugging Face Trainer: fp32 master weights, bf16 autocast on a GPU, AdamW, chunked top-k
KD + CE) on examples with cached top-k rows (random, as a top-k cache's rows decode for training:
common.examples), batches padded vs packed, timed alternately in one run. Prints tokens/s, peak
memory, MFU (GPU) and the collator's share of the step.

    python benchmarks/student_training.py                                    # CPU, tiny student, demo lengths
    python benchmarks/student_training.py --shape real --device cuda --lengths fixed:384/192  # Llama-3.2-1B shape

tokens/s counts the pairs' tokens (prompt + response, no padding) per second of training steps
(after warm-up steps; data loading included, evaluation and checkpoints off). MFU = model FLOPs
(common.training_flops) / time / --peak-tflops.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from common import (
    H100_BF16_TFLOPS,
    SHAPES,
    build,
    computed_per_real_token,
    example_lengths,
    examples,
    peak_memory,
    reset_peak_memory,
    sync,
    training_config,
    training_flops,
)
from transformers import TrainerCallback

from kdsweep.core.trainer import DistillTrainer, training_arguments
from kdsweep.translation.batching import TranslationCollator, TranslationExamples
from kdsweep.translation.loss import TokenKD


class TimedCollator(TranslationCollator):
    """Records each batch's pair lengths and the time spent collating it."""

    def __init__(self, pad_token_id: int, pack_length: int | None):
        super().__init__(pad_token_id, pack_length)
        self.batches, self.seconds = [], 0.0

    def __call__(self, items):
        start = time.perf_counter()
        batch = super().__call__(items)
        self.seconds += time.perf_counter() - start
        self.batches.append([(len(it["input_ids"]), it["response_start"]) for it in items])
        return batch


class StepTimes(TrainerCallback):
    def __init__(self, device: str):
        self.device, self.ends = device, []

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", default="demo", help="fixed:L/R, demo, or cache:<pointer.json> (common.py)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=96, help="row capacity when packing")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="padded,packed")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="for MFU, GPU only")
    args = parser.parse_args()
    torch.manual_seed(0)
    student = build(SHAPES[args.shape]["student"], args.device, torch.float32)  # fp32 master weights
    steps = args.warmup + args.steps
    lengths = example_lengths(args.lengths, steps * args.batch_size)
    items = examples(lengths, student.config.vocab_size, args.top_k)
    dataset = TranslationExamples(
        [it["input_ids"] for it in items],
        [it["response_start"] for it in items],
        [{k: it[k] for k in ("topk_logprobs", "topk_indices", "topk_tail")} for it in items],
    )
    params = sum(p.numel() for p in student.parameters())
    print(f"student {args.shape} {params / 1e9:.2f} B params on {args.device}, {torch.get_num_threads()} threads")
    print(
        f"{args.lengths}: mean length {sum(n for n, _ in lengths) / len(lengths):.1f} tokens, "
        f"{sum(n - r for n, r in lengths) / len(lengths):.1f} response; batch {args.batch_size}, top-{args.top_k}"
    )
    train_cfg = training_config(batch_size=args.batch_size, max_steps=steps, save_total_limit=1, seed=0)
    modes = args.modes.split(",")

    def run(mode: str) -> tuple[float, float, float, float]:
        """tokens/s, model TFLOP/s, the collator's share of the timed steps and the token positions
        computed per real token in the Trainer's (shuffled) batches."""
        collator = TimedCollator(0, args.max_length if mode == "packed" else None)
        timer = StepTimes(args.device)
        with tempfile.TemporaryDirectory() as out:
            trainer = DistillTrainer(
                model=student,
                args=training_arguments(train_cfg, 1e-5, out),
                train_dataset=dataset,
                eval_dataset=dataset,
                # never evaluated (eval_steps beyond the run)
                data_collator=collator,
                callbacks=[timer],
                loss=TokenKD(
                    alpha=0.5,
                    temperature=1.0,
                    chunk_size=args.chunk_size,
                ),
            )
            trainer.train()
        seconds = timer.ends[-1] - timer.ends[args.warmup - 1]
        timed = [pair for batch in collator.batches[args.warmup : steps] for pair in batch]
        collate_share = collator.seconds * args.steps / steps / seconds
        positions = computed_per_real_token(timed, args.batch_size, collator.pack_length)
        tokens = sum(n for n, _ in timed)
        return tokens / seconds, training_flops(student.config, timed) / seconds / 1e12, collate_share, positions

    results, peaks = {m: [] for m in modes}, {}
    for mode in modes:  # warm-up round, and each mode's peak memory on its own
        reset_peak_memory(args.device)
        run(mode)
        peaks[mode] = peak_memory(args.device)
    for _ in range(args.repeats):
        for mode in modes:
            results[mode].append(run(mode))
    cuda = args.device.startswith("cuda")
    for mode in modes:
        rates = [r[0] for r in results[mode]]
        tflops = statistics.median(r[1] for r in results[mode])
        mfu = f", MFU {100 * tflops / args.peak_tflops:.1f} %" if cuda else ""
        collate = statistics.median(r[2] for r in results[mode])
        positions = statistics.median(r[3] for r in results[mode])
        print(
            f"{mode:7s} tokens/s per round: {', '.join(f'{r:,.0f}' for r in rates)}; median {statistics.median(rates):,.0f}; "
            f"{positions:.2f} token positions per real token; {tflops:.3g} model TFLOP/s{mfu}; collator {100 * collate:.1f} % of step time; peak {peaks[mode]}"
        )
    if len(modes) == 2:
        a, b = (statistics.median(r[0] for r in results[m]) for m in modes)
        print(f"{modes[1]}/{modes[0]} = {b / a:.2f}x")


if __name__ == "__main__":
    main()
