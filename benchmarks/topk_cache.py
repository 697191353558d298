"""Top-k teacher cache: bytes per token on disk and KD-loss fidelity against the dense loss.

    python benchmarks/topk_cache.py [--demo results/demo]

1. Bytes/token of real cache shards (kdflow's shard format: fp16 values, int32 indices, fp32
   log-sum-exp per response token) for k in {8, 16, 32, 64, 128} at Llama-3's vocabulary
   (128256), against full bf16 rows (128256 x 2 bytes).
2. Relative error of the sparse forward-KL KD loss (kdflow.losses.topk_kd) against the dense one,
   and the teacher probability mass the top-k captures: on synthetic peaked distributions at
   V = 128256, and on a trained teacher's real distributions (the demo's teacher and a distilled
   student on the dev split, when --demo points at a finished demo run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from kdflow.losses import topk_kd
from kdflow.teacher_cache import CacheEntry

KS = (8, 16, 32, 64, 128)
LLAMA3_VOCAB = 128256


def dense_forward_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    log_p, log_q = F.log_softmax(teacher / temperature, -1), F.log_softmax(student / temperature, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2


def bytes_per_token(tokens: int = 4096) -> None:
    print(f"## Cache size at vocabulary {LLAMA3_VOCAB} ({tokens} response tokens per shard)")
    full = LLAMA3_VOCAB * 2
    print(f"full bf16 rows: {full} B/token ({full / 1024:.1f} KiB)")
    print("k     B/token (shard file)   B/token (top-k + lse only)   vs full bf16")
    with tempfile.TemporaryDirectory() as tmp:
        for k in KS:
            entry = CacheEntry(tmp, {"k": k})
            entry.dir.mkdir(parents=True)
            logits = torch.randn(tokens, LLAMA3_VOCAB // 8)  # values only matter for their dtype
            top = logits.topk(k, dim=-1)
            tensors = {
                "topk_values": top.values.half(),
                "topk_indices": (top.indices * 8).int(),
                "lse": logits.logsumexp(-1),
            }
            entry.write_shard(0, tensors)
            on_disk = entry.shard_path(0).stat().st_size / tokens
            payload = sum(t.numel() * t.element_size() for t in tensors.values()) / tokens
            print(f"{k:<5} {on_disk:>10.1f}             {payload:>10.1f}                  1/{full / on_disk:,.0f}")


def fidelity_table(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> None:
    dense = dense_forward_kl(student, teacher, temperature)
    lse = teacher.logsumexp(-1, keepdim=True)
    print(f"## {name}: {teacher.shape[0]} tokens, vocabulary {teacher.shape[1]}, T = {temperature:g}")
    print(f"dense forward KL (mean): {dense.mean():.4f}")
    print("k     captured mass (mean / min)   KD relative error (mean-loss / per-token mean)")
    for k in KS:
        if k > teacher.shape[1]:
            continue
        top = teacher.topk(k, dim=-1)
        mass = (top.values - lse).exp().sum(-1)
        sparse = topk_kd(student, top.values.half(), top.indices.int(), temperature)
        rel_mean = ((sparse.mean() - dense.mean()).abs() / dense.mean()).item()
        rel_token = ((sparse - dense).abs() / dense.clamp_min(1e-8)).mean().item()
        print(
            f"{k:<5} {mass.mean():.4f} / {mass.min():.4f}            {100 * rel_mean:.3f} % / {100 * rel_token:.3f} %"
        )


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
def demo_distributions(run: Path, point: str, max_examples: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and distilled-student logits on the response tokens of the demo's dev split."""
    from kdflow.config import load_config
    from kdflow.generation import load_lm_tokenizer
    from kdflow.models import load_causal_lm
    from kdflow.prompt import make_prompt
    from kdflow.teacher_translation import translation_examples
    from kdflow.translation_training import TranslationCollator

    tok = load_lm_tokenizer(str(run / "teacher" / "europarl_en_fr" / "model"))
    prompt_cfg = load_config(Path(__file__).parents[1] / "config" / "demo.yaml")["translation"]["prompt"]
    data = translation_examples(run / "data" / "europarl_en_fr" / "dev.jsonl", tok, make_prompt(tok, prompt_cfg), 256)
    batch = TranslationCollator(tok.pad_token_id)([data[i] for i in range(min(max_examples, len(data)))])
    mask = batch["labels"][:, 1:] != -100
    out = []
    for path in (run / "distill" / "europarl_en_fr" / point / "model", run / "teacher" / "europarl_en_fr" / "model"):
        model = load_causal_lm(str(path), torch.float32).eval()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        out.append(logits[mask].float())
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("results/demo"), help="a finished demo run")
    parser.add_argument("--point", default="lr0.003_a0.5_T1", help="the demo student to compare")
    args = parser.parse_args()
    torch.manual_seed(0)
    bytes_per_token()
    print()
    fidelity_table("Synthetic peaked distributions", *synthetic_peaked())
    print()
    if (args.demo / "teacher" / "europarl_en_fr" / "model").is_dir():
        student, teacher = demo_distributions(args.demo, args.point)
        fidelity_table(f"Demo teacher vs distilled student {args.point}", student, teacher)
        print()
        fidelity_table(f"Demo teacher vs distilled student {args.point}", student, teacher, temperature=2.0)
    else:
        print(f"(no finished demo run under {args.demo}: run `make demo` for the trained-teacher table)")


if __name__ == "__main__":
    main()
