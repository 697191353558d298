"""Top-k teacher cache: bytes per token on disk and KD-loss fidelity against the dense loss.

    python benchmarks/topk_cache.py [--demo results/demo] [--point lr0.003_a0.5_T1]

1. Bytes/token of real cache shards (kdsweep's shard format, translation.cache_format.TopkFormat:
   fp16 top-k log-probabilities, ids bit-packed in 17 bits, fp32 tail log-mass and log-sum-exp per
   response token) for k in {8, 16, 32, 64, 128} at Llama-3's vocabulary (128256), against full
   bf16 rows (128256 x 2 bytes).
2. Relative error of the sparse KD loss (kdsweep.core.losses.topk_kd) against the dense one, for every
   kind (forward KL, reverse KL, JSD) and tail option (ignore, bucket), with the teacher mass the
   top-k captures: on synthetic peaked distributions at V = 128256, and on the demo teacher's real
   distributions (dev split of a finished demo run, --demo) against two students: the base
   student as distillation starts (built from teacher layers, not trained) and a distilled one.
   "batch" is the error of the mean loss over all tokens (what a training step sees), "token" the
   mean of the per-token relative errors. The sparse loss reads the rows as the cache stores them
   (TopkFormat's encode, then decode: fp16 rounding, bit packing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from kdsweep.core.cache import CacheEntry
from kdsweep.core.losses import TAIL_OPTIONS, TOKEN_KD_LOSSES, topk_kd
from kdsweep.translation.cache_format import TopkFormat
from kdsweep.translation.cache_format import bytes_per_token as format_bytes_per_token

KS = (8, 16, 32, 64, 128)
LLAMA3_VOCAB = 128256


def dense_kd(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """The divergence over the full vocabulary, per token, times T^2 (written out, not kdsweep's)."""
    log_p, log_q = F.log_softmax(teacher / temperature, -1), F.log_softmax(student / temperature, -1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        d = (p * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        d = (q * (log_q - log_p)).sum(-1)
    else:
        log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0))
        d = 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
    return d * temperature**2


def bytes_per_token(tokens: int = 4096) -> None:
    print(f"## Cache size at vocabulary {LLAMA3_VOCAB} ({tokens} response tokens per shard)")
    full = LLAMA3_VOCAB * 2
    print(f"full bf16 rows: {full} B/token ({full / 1024:.1f} KiB)")
    print("k     B/token (shard file)   B/token (rows only)   vs full bf16")
    with tempfile.TemporaryDirectory() as tmp:
        for k in KS:
            fmt = TopkFormat(k, LLAMA3_VOCAB, "float16")
            entry = CacheEntry(tmp, {"method": "topk", "top_k": k, "value_dtype": fmt.value_dtype})
            entry.dir.mkdir(parents=True)
            # Values only matter for their dtype and the ids for their packed width (bits of the
            # vocabulary, whatever the ids): logits over V / 8 tokens keep this quick.
            tensors = fmt.encode(torch.randn(tokens, LLAMA3_VOCAB // 8))
            entry.write_shard(0, tensors)
            on_disk = entry.shard_path(0).stat().st_size / tokens
            payload = sum(t.numel() * t.element_size() for t in tensors.values()) / tokens
            assert payload == format_bytes_per_token(fmt)
            print(f"{k:<5} {on_disk:>10.1f}             {payload:>10.1f}            1/{full / on_disk:,.0f}")


def cached(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What training reads from the cache for the top-k: fp16 log-probabilities, ids and the
    tail's log-mass (TopkFormat's rows, encoded and decoded)."""
    fmt = TopkFormat(k, teacher.shape[1], "float16")
    rows = fmt.decode(fmt.encode(teacher.float().clone()))  # encode overwrites its logits
    return rows["topk_logprobs"], rows["topk_indices"], rows["topk_tail"]


def fidelity_table(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> None:
    print(f"## {name}: {teacher.shape[0]} tokens, vocabulary {teacher.shape[1]}, T = {temperature:g}")
    dense = {kind: dense_kd(student, teacher, kind, temperature) for kind in TOKEN_KD_LOSSES}
    print("dense loss (mean per token): " + ", ".join(f"{kind} {d.mean():.4f}" for kind, d in dense.items()))
    header = " | ".join(f"{kind} {tail}" for kind in TOKEN_KD_LOSSES for tail in TAIL_OPTIONS)
    print(f"k   | mass (mean / min) | {header}   (relative error, batch / token, %)")
    for k in KS:
        if k > teacher.shape[1]:
            continue
        logprobs, indices, tail_mass = cached(teacher, k)
        mass = logprobs.float().exp().sum(-1)
        cells = []
        for kind in TOKEN_KD_LOSSES:
            for tail in TAIL_OPTIONS:
                sparse = topk_kd(student, logprobs, indices, temperature, kind, tail, tail_mass)
                d = dense[kind]
                batch = ((sparse.mean() - d.mean()).abs() / d.mean()).item()
                token = ((sparse - d).abs() / d.clamp_min(1e-8)).mean().item()
                cells.append(f"{100 * batch:.2f} / {100 * token:.2f}")
        print(f"{k:<3} | {mass.mean():.4f} / {mass.min():.4f} | " + " | ".join(cells))


def synthetic_peaked(tokens: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """LM-like rows: a long tail of logits ~N(0, 2), a handful of boosted candidates; the student
    is the teacher plus noise (a partly trained student)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(tokens, LLAMA3_VOCAB, generator=g) * 2.0
    boost = torch.randint(0, LLAMA3_VOCAB, (tokens, 5), generator=g)
    teacher.scatter_add_(-1, boost, torch.tensor([18.0, 16.0, 15.0, 14.0, 13.0]).expand(tokens, 5).contiguous())
    student = teacher + torch.randn(tokens, LLAMA3_VOCAB, generator=g) * 2.0
    return student, teacher


@torch.no_grad()
def demo_logits(run: Path, model_dirs: list[Path], max_examples: int = 100) -> list[torch.Tensor]:
    """Each model's logits on the response tokens of the demo's dev split (unpacked batches)."""
    from kdsweep.families import load_config
    from kdsweep.translation.batching import TranslationCollator
    from kdsweep.translation.generation import load_lm_tokenizer
    from kdsweep.translation.models import load_causal_lm
    from kdsweep.translation.prompt import make_prompt
    from kdsweep.translation.teacher import translation_examples

    tok = load_lm_tokenizer(str(run / "teacher" / "europarl_en_fr" / "model"))
    prompt_cfg = load_config(Path(__file__).parents[1] / "config" / "demo.yaml")["translation"]["prompt"]
    data = translation_examples(run / "data" / "europarl_en_fr" / "dev.jsonl", tok, make_prompt(tok, prompt_cfg), 256)
    batch = TranslationCollator(tok.pad_token_id)([data[i] for i in range(min(max_examples, len(data)))])
    mask = batch["labels"][:, 1:] != -100
    out = []
    for path in model_dirs:
        model = load_causal_lm(str(path), torch.float32).eval()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        out.append(logits[mask].float())
    return out


def demo_teacher_and_students(demo: Path, point: str) -> list[torch.Tensor] | None:
    """The logits of the demo's teacher, base student and distilled student `point` on its dev
    split (demo_logits), or None (said) without a finished demo run."""
    task = "europarl_en_fr"
    if not (demo / "teacher" / task / "model").is_dir():
        print(f"(no finished demo run under {demo}: run `make demo` for the trained-teacher tables)")
        return None
    models = [
        demo / "teacher" / task / "model",
        demo / "student_init" / task,
        demo / "distill" / task / point / "model",
    ]
    return demo_logits(demo, models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("results/demo"), help="a finished demo run")
    parser.add_argument("--point", default="lr0.003_a0.5_T1", help="the distilled demo student to compare")
    args = parser.parse_args()
    torch.manual_seed(0)
    bytes_per_token()
    print()
    fidelity_table("Synthetic peaked distributions", *synthetic_peaked())
    print()
    demo = demo_teacher_and_students(args.demo, args.point)
    if demo is None:
        return
    teacher, base, distilled = demo
    for temperature in (1.0, 2.0):
        fidelity_table(
            f"Demo teacher vs the base student (distillation starts), T={temperature:g}", base, teacher, temperature
        )
        print()
        fidelity_table(f"Demo teacher vs distilled student {args.point}", distilled, teacher, temperature)
        print()


if __name__ == "__main__":
    main()
