"""Sampled teacher cache (Anshumann et al. 2025, "Sparse Logit Sampling") against top-k caches: bytes
per token and how well each represents the teacher in the forward-KL KD loss and its gradient.

    python benchmarks/sampled_kd.py [--demo results/demo] [--point lr0.003_a0.5_T1] [--tokens 256]

For T = 1 and T = 2, on synthetic peaked rows at Llama-3's vocabulary (V = 128256, --tokens rows,
student = teacher + noise, topk_cache.py's synthetic_peaked) and on the demo teacher's real
distributions (dev split of a finished demo run, --demo; topk_cache.py's demo_logits) against the
base student (distillation starts) and a distilled one (--point), one table per case:

- top-16 and top-64 with tail "ignore" and "bucket" (kdsweep.core.losses.topk_kd, forward KL; the
  cache holds T = 1 log-probabilities, tempered at T by the loss),
- sampled-12: 12 draws from the teacher at the distillation temperature T (one draw set, seed 0;
  kdsweep.core.losses.sampled_kd with the cached teacher entropy: an unbiased forward-KL estimate),
- sampled-12, 16 sets: the loss and gradient averaged over draw sets of seeds 0..15 (16 caches
  built with different seeds; a cache's draws are fixed, so epochs over one cache do not average
  them): unbiased, so its error should be ~1/4 of one set's.

Every cache row goes through kdsweep.translation.cache_format's encode and decode (fp16 rounding,
bit packing). The reference is the dense loss written out here: T^2 * KL(softmax(t/T) || softmax(s/T))
over the full vocabulary, its gradient by autograd. Columns: bytes/token of the format's rows
(cache_format.bytes_per_token; dense bf16 rows are V x 2), the mean number of ids a row holds
(distinct ids for sampled), the teacher mass at T on those ids, the mean per-token loss and its
signed relative error against the dense mean, and the gradient of the mean loss w.r.t. the student
logits against the dense one: cosine similarity and ||g - g_dense|| / ||g_dense||. Under each table:
the spread of the 16 single draw sets, and the sampled loss's exact expectation over draws (from the
teacher's probabilities and the cached entropy), which should equal the dense loss.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from topk_cache import demo_teacher_and_students, synthetic_peaked

from kdsweep.core.losses import sampled_kd, topk_kd
from kdsweep.translation.cache_format import SampledFormat, TopkFormat, bytes_per_token

TOPK = (16, 64)
DRAWS = 12
SETS = 16


def dense_forward_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token T^2 * KL(p_T || q_T) over the full vocabulary [N], the gradient of its mean w.r.t.
    the student logits [N, V], and the teacher's log-probabilities at T [N, V] (written out, not
    kdsweep's)."""
    s = student.detach().float().clone().requires_grad_()
    log_p = F.log_softmax(teacher.float() / temperature, -1)
    log_q = F.log_softmax(s / temperature, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    (grad,) = torch.autograd.grad(per_token.mean(), s)
    return per_token.detach(), grad, log_p


def loss_and_grad(
    student: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A method's per-token loss [N] and the gradient of its mean w.r.t. the student logits."""
    s = student.detach().float().clone().requires_grad_()
    per_token = loss_fn(s)
    (grad,) = torch.autograd.grad(per_token.mean(), s)
    return per_token.detach(), grad


def grad_error(grad: torch.Tensor, dense: torch.Tensor) -> tuple[float, float]:
    """Cosine similarity and relative norm of the difference, over the whole [N, V] gradient."""
    g, d = grad.reshape(-1).double(), dense.reshape(-1).double()
    cos = (g @ d / (g.norm() * d.norm())).item()
    return cos, ((g - d).norm() / d.norm()).item()


def row(name, n_bytes, full_bytes, ids, mass, loss, dense_mean, grad, dense_grad) -> str:
    cos, rel = grad_error(grad, dense_grad)
    err = 100 * (loss - dense_mean) / dense_mean
    return (
        f"| {name} | {n_bytes:,} | 1/{full_bytes / n_bytes:,.0f} | {ids:.1f} | {mass:.4f} | {loss:.4f} "
        f"| {err:+.2f} | {cos:.4f} | {rel:.3f} |"
    )


def table(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> None:
    n, vocab = teacher.shape
    dense, dense_grad, log_p = dense_forward_kl(student, teacher, temperature)
    dense_mean = dense.mean().item()
    full = vocab * 2
    print(f"## {name}: {n} tokens, vocabulary {vocab}, T = {temperature:g}")
    print(f"dense forward KL (x T^2) {dense_mean:.4f} per token; dense bf16 rows {full:,} B/token")
    print()
    print(
        "| method | B/token | vs dense bf16 | ids/token | teacher mass at T | loss | loss error % "
        "| grad cosine | grad rel. error |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in TOPK:
        if k >= vocab:
            continue
        fmt = TopkFormat(k, vocab, "float16")
        rows = fmt.decode(fmt.encode(teacher.float().clone()))
        mass = log_p.gather(-1, rows["topk_indices"]).exp().sum(-1).mean().item()
        for tail in ("ignore", "bucket"):
            loss, grad = loss_and_grad(
                student,
                lambda s, rows=rows, tail=tail: topk_kd(
                    s,
                    rows["topk_logprobs"],
                    rows["topk_indices"],
                    temperature,
                    "forward_kl",
                    tail,
                    rows["topk_tail"],
                ),
            )
            mean = loss.mean().item()
            print(row(f"top-{k} {tail}", bytes_per_token(fmt), full, k, mass, mean, dense_mean, grad, dense_grad))
    fmt = SampledFormat(DRAWS, temperature, vocab)
    losses, grad_sum, singles, distinct, masses = [], torch.zeros_like(dense_grad), [], [], []
    for seed in range(SETS):
        uniforms = fmt.uniforms(len(teacher), torch.Generator().manual_seed(seed))  # as a cache shard draws them
        rows = fmt.decode(fmt.encode(teacher.float().clone(), uniforms))
        present = rows["sample_counts"] > 0
        distinct.append(present.sum(-1).float().mean().item())
        masses.append((log_p.gather(-1, rows["sample_ids"]).exp() * present).sum(-1).mean().item())
        loss, grad = loss_and_grad(
            student,
            lambda s, rows=rows: sampled_kd(
                s, rows["sample_ids"], rows["sample_counts"], temperature, rows["teacher_entropy"]
            ),
        )
        losses.append(loss.mean().item())
        grad_sum += grad
        singles.append(grad_error(grad, dense_grad))
        if seed == 0:
            b, entropy = bytes_per_token(fmt), rows["teacher_entropy"]
            print(row(f"sampled-{DRAWS}", b, full, distinct[0], masses[0], losses[0], dense_mean, grad, dense_grad))
    mean_loss = sum(losses) / SETS
    ids, mass = sum(distinct) / SETS, sum(masses) / SETS
    print(row(f"sampled-{DRAWS}, {SETS} sets", b, full, ids, mass, mean_loss, dense_mean, grad_sum / SETS, dense_grad))
    print()
    errs = torch.tensor([100 * (x - dense_mean) / dense_mean for x in losses])
    cos = torch.tensor([c for c, _ in singles])
    rel = torch.tensor([r for _, r in singles])
    print(
        f"Single draw sets, seeds 0..{SETS - 1}: loss error {errs.mean():+.2f} % mean, {errs.std():.2f} % sd "
        f"(~{errs.std() / SETS**0.5:.2f} % sd expected for the {SETS}-set mean if unbiased), "
        f"|error| {errs.abs().mean():.2f} % mean; grad cosine {cos.mean():.4f} mean "
        f"({cos.min():.4f}..{cos.max():.4f}), grad rel. error {rel.mean():.3f} mean."
    )
    # The exact expectation over draws: T^2 * (sum_v p_T(v) * -log q_T(v) - the cached entropy).
    log_q = F.log_softmax(student.float() / temperature, -1)
    expected = ((-(log_p.exp() * log_q).sum(-1) - entropy) * temperature**2).mean().item()
    print(
        f"Exact expectation over draws (sum p_T * -log q_T minus the cached entropy, x T^2): {expected:.6f}, "
        f"error {100 * (expected - dense_mean) / dense_mean:+.5f} %."
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("results/demo"), help="a finished demo run")
    parser.add_argument("--point", default="lr0.003_a0.5_T1", help="the distilled demo student to compare")
    parser.add_argument("--tokens", type=int, default=256, help="synthetic rows at V = 128256")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    student, teacher = synthetic_peaked(args.tokens)
    for temperature in (1.0, 2.0):
        table("Synthetic peaked rows (student = teacher + noise)", student, teacher, temperature)
    del student, teacher
    demo = demo_teacher_and_students(args.demo, args.point)
    if demo is None:
        return
    teacher, base, distilled = demo
    for temperature in (1.0, 2.0):
        table("Demo teacher vs the base student (distillation starts)", base, teacher, temperature)
        table(f"Demo teacher vs distilled student {args.point}", distilled, teacher, temperature)
    print(f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
