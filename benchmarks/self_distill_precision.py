"""Self-distillation through the cache and the trainer in the device's precision against fp32 on
the CPU: the check of issue 12 for a lent GPU (Llama-3.2-1B shape from its config, random weights).

    python benchmarks/self_distill_precision.py                                  # tiny shape, CPU only
    python benchmarks/self_distill_precision.py --shape real --device cuda       # Llama-3.2-1B shape on a GPU

The student is the teacher. The teacher's top-k rows are cached with kdsweep's caching code
(teacher_rows with a TopkFormat: fp32 LM head; the model in precision.inference_dtype() on the
device: bf16 where native), stored as the cache stores them (fp16 log-probabilities, bit-packed
ids) and decoded as the distill job's dataset decodes them, and the TokenKD loss
(alpha 0.5, forward KL, T = 1) is computed on them under the Trainer's own mixed-precision
context (training.precision auto: bf16 autocast on an H100/H200, fp32 master weights). The same
is computed in fp32 on the CPU. Printed: per-token CE and KD in both, their differences, and how
far the cached top-k agrees (ids, log-probabilities). With k = V (--top-k 0) the fp32 KD is the
KL of the model with itself: ~0.
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
from common import SHAPES, build, example_lengths, examples, training_config

from kdsweep.core.precision import current_device, inference_dtype, training_precision
from kdsweep.core.trainer import DistillTrainer, training_arguments
from kdsweep.translation.batching import TranslationCollator
from kdsweep.translation.cache_format import TopkFormat
from kdsweep.translation.loss import TokenKD
from kdsweep.translation.teacher import fp32_head, teacher_rows

TRAIN = training_config(batch_size=8, max_steps=1, seed=0)


def run(model, batch: dict, top_k: int, device: str) -> dict[str, torch.Tensor]:
    """Cache the model's top-k on the batch, then the trainer's per-token CE and KD with the model
    as its own student, on `device` in the precision kdsweep picks there."""
    cache_dtype = inference_dtype() if device.startswith("cuda") else torch.float32
    teacher = copy.deepcopy(model).to(device=device, dtype=cache_dtype).eval()
    fmt = TopkFormat(top_k, model.config.vocab_size, "float16")
    rows = fmt.decode(teacher_rows(teacher, batch, fmt, 1024, fp32_head(teacher)))
    del teacher
    with tempfile.TemporaryDirectory() as out:
        trainer = DistillTrainer(
            model=copy.deepcopy(model).to(device=device, dtype=torch.float32),
            args=training_arguments(TRAIN, 1e-5, out),
            train_dataset=[],
            eval_dataset=[],
            data_collator=TranslationCollator(0),
            loss=TokenKD(
                alpha=0.5,
                temperature=1.0,
            ),
        )
        inputs = {k: v.to(device) for k, v in batch.items()}
        inputs |= {name: t.to(device) for name, t in rows.items()}
        with torch.no_grad(), trainer.compute_loss_context_manager():
            _, parts, count, _ = trainer.loss_terms(trainer.model, dict(inputs))
    return {
        "ce": parts["ce"].float().cpu() / count,
        "kd": parts["kd"].float().cpu() / count,
        "logprobs": rows["topk_logprobs"].float(),
        "indices": rows["topk_indices"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", default="fixed:256/128")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=64, help="0: the whole vocabulary")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(SHAPES[args.shape]["student"], "cpu", torch.float32)
    k = args.top_k or model.config.vocab_size
    lengths = example_lengths(args.lengths, args.examples)
    batch = TranslationCollator(0, max(n for n, _ in lengths))(examples(lengths, model.config.vocab_size))
    device = current_device() if args.device.startswith("cuda") else None
    print(
        f"{args.shape} student ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params), "
        f"{sum(n - r for n, r in lengths)} response tokens, top-{k}; device {args.device}"
        + (
            f" ({device.name}: training {training_precision('auto', device)}, cache {inference_dtype(device)})"
            if device
            else ""
        )
    )
    reference = run(model, batch, k, "cpu")
    print(f"fp32 CPU:  CE {reference['ce']:.6f}  KD {reference['kd']:.3e} (per token)")
    if not args.device.startswith("cuda"):
        print("(no GPU: run with --device cuda on one to compare its precision with these fp32 values)")
        return
    got = run(model, batch, k, args.device)
    print(f"{args.device}: CE {got['ce']:.6f}  KD {got['kd']:.3e} (per token)")
    print(
        f"CE difference {abs(got['ce'] - reference['ce']):.2e} ({100 * abs(got['ce'] / reference['ce'] - 1):.3f} %), "
        f"KD difference {abs(got['kd'] - reference['kd']):.2e}"
    )
    same = (got["indices"] == reference["indices"]).float()
    print(
        f"cached top-{k}: ids equal {100 * same.mean():.2f} % (top-1 {100 * same[:, 0].mean():.2f} %), "
        f"log-prob max |diff| on the top-1 {(got['logprobs'][:, 0] - reference['logprobs'][:, 0]).abs().max():.2e}"
    )


if __name__ == "__main__":
    main()
