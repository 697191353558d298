"""Distillation losses (DistilBERT/Hinton). The teacher's outputs never receive gradients.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

alpha weights the KD term (alpha = 1: pure KD, alpha = 0: plain fine-tuning). T^2 keeps the
KD gradients' scale independent of T. The functions return one value per item (a GLUE example,
a response token): the trainer sums them and divides by the items of the whole global batch
(kdsweep/core/trainer.py), so the result does not depend on how a batch is split over devices and
gradient-accumulation steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per row (all leading dims flattened); its mean
    over rows with reduction "mean", the rows [N] with "none"."""
    t = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    s = student_logits.float().reshape(-1, student_logits.shape[-1])
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(-1) * temperature**2
    return kl.mean() if reduction == "mean" else kl


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * KD + (1 - alpha) * CE per example [B], and its parts per example (for logging)."""
    parts: dict[str, torch.Tensor] = {}
    loss = student_logits.new_zeros(student_logits.shape[0], dtype=torch.float32)
    if alpha > 0:
        if teacher_logits is None:
            raise ValueError("alpha > 0 needs teacher logits")
        parts["kd"] = kd_kl(student_logits, teacher_logits, temperature, reduction="none")
        loss = loss + alpha * parts["kd"]
    if alpha < 1:
        parts["ce"] = F.cross_entropy(student_logits.float(), labels, reduction="none")
        loss = loss + (1 - alpha) * parts["ce"]
    return loss, parts


def cosine_hidden_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """DistilBERT's L_cos per example [B]: the mean over its non-padding tokens of
    1 - cos(h_student, h_teacher). (DistilBERT averages over the batch's tokens; per example,
    the sum over a global batch does not depend on how it is split.)"""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"cosine loss needs equal hidden sizes: student {student_hidden.shape[-1]}, teacher {teacher_hidden.shape[-1]}"
        )
    mask = attention_mask.float()
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.detach().float(), dim=-1)
    return ((1 - cos) * mask).sum(-1) / mask.sum(-1).clamp_min(1)


# Token-level KD for language models from the teacher's cached top-k.
#
# The cache holds, for every response token, the teacher's k most likely tokens (indices) with
# their log-probabilities at temperature 1 (logits minus the full row's log-sum-exp) and the log
# of the mass of the other V - k tokens, computed from the full row (the teacher's tail). The
# student's logits are always normalized over the full vocabulary: q = softmax(s / T) over V.
#
# `tail` says what happens to the teacher's tail (DistillKit-style named option):
#   ignore  the target is the top-k renormalized at T, p_hat = softmax(values / T) over the k
#           tokens; the tail gets no target mass. Per kind, with Q = the student's mass on the
#           top-k at T:
#             forward_kl  sum_k p_hat log(p_hat / q)                  (>= -log Q: student mass
#                         outside the top-k is penalized)
#             reverse_kl  sum_k q log(q / p_hat) + (1 - Q)            (KL(q || p_hat) is infinite
#                         when q has mass where p_hat has none; this is the KL of positive
#                         measures restricted to the top-k, sum q log(q/p) - q + p: >= 0 and zero
#                         only when q = p_hat on the top-k, hence Q = 1)
#             jsd         JSD(p_hat, q) over the full vocabulary: the top-k terms with
#                         m = (p_hat + q) / 2, plus (1 - Q) log(2) / 2 for the tail, where p_hat is 0
#   bucket  the tail is a (k+1)-th category: the teacher's tail mass (exact at T = 1: the cache
#           stores its log, computed from the full row in fp32), the student's 1 - Q (computed
#           in log space from its own tail logits). Every kind is the
#           plain divergence between these two (k+1)-category distributions, so it is finite,
#           >= 0, and at T = 1 a lower bound of the dense divergence (coarse-graining never
#           increases an f-divergence). At T != 1 the teacher's tail tokens are not cached
#           individually: the (k+1) teacher categories are tempered as p^(1/T) (renormalized),
#           an approximation; the student's categories are exact at T.
# At T != 1 neither option is close to the dense loss (benchmarks/README.md: 9-253 % at T = 2,
# k = 64, on the demo teacher), so the config refuses it unless allow_tempered_topk is set.
# With k = V both options equal the dense loss exactly for every kind (tested). Every term is
# multiplied by T^2, as in the classification loss above.
TOKEN_KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
TAIL_OPTIONS = ("ignore", "bucket")


def _weighted_log_ratio(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """a * (log a - log b) elementwise, 0 where a = 0 (log a = -inf), as in xlogy."""
    return torch.where(log_a == float("-inf"), 0.0, log_a.exp() * (log_a - log_b))


def _divergence(kind: str, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """forward KL(p || q), reverse KL(q || p) or JSD(p, q) summed over the last dimension."""
    if kind == "forward_kl":
        return _weighted_log_ratio(log_p, log_q).sum(-1)
    if kind == "reverse_kl":
        return _weighted_log_ratio(log_q, log_p).sum(-1)
    if kind == "jsd":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return 0.5 * _weighted_log_ratio(log_p, log_m).sum(-1) + 0.5 * _weighted_log_ratio(log_q, log_m).sum(-1)
    raise ValueError(f"unknown token KD loss {kind!r}; one of {TOKEN_KD_LOSSES}")


def topk_kd(
    student_logits: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_indices: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    tail: str = "ignore",
    teacher_tail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KD loss [N] of student logits [N, V] against the teacher's top-k [N, k]
    (log-probabilities at T = 1 and token ids), see the definitions above. teacher_tail [N]: the
    log of the teacher's tail mass (the cache's `tail_logmass`, computed from the full row: 1 -
    sum(exp(topk_logprobs)) would lose a tiny tail to rounding), needed by tail "bucket"."""
    if tail not in TAIL_OPTIONS:
        raise ValueError(f"unknown tail option {tail!r}; one of {TAIL_OPTIONS}")
    if kind not in TOKEN_KD_LOSSES:
        raise ValueError(f"unknown token KD loss {kind!r}; one of {TOKEN_KD_LOSSES}")
    s = student_logits.float() / temperature
    indices = topk_indices.long()
    student_lse = torch.logsumexp(s, dim=-1, keepdim=True)
    log_q = s.gather(-1, indices) - student_lse  # the student's full-vocabulary log-probs on the top-k
    t = topk_logprobs.float()
    has_tail = indices.shape[-1] < s.shape[-1]
    if tail == "bucket" and has_tail:
        if teacher_tail is None:
            raise ValueError("tail \"bucket\" needs the teacher's tail log-mass (the cache's tail_logmass)")
        log_p = F.log_softmax(torch.cat([t, teacher_tail.float().reshape(-1, 1)], -1) / temperature, dim=-1)
        student_tail = torch.logsumexp(s.scatter(-1, indices, float("-inf")), dim=-1, keepdim=True) - student_lse
        return _divergence(kind, log_p, torch.cat([log_q, student_tail], -1)) * temperature**2
    log_p = F.log_softmax(t / temperature, dim=-1)  # p_hat: the top-k renormalized at T
    loss = _divergence(kind, log_p, log_q)
    if has_tail and kind != "forward_kl":
        outside = 1 - log_q.exp().sum(-1)  # the student's mass outside the top-k, 1 - Q
        loss = loss + (outside if kind == "reverse_kl" else 0.5 * math.log(2.0) * outside)
    return loss * temperature**2


@dataclass
class TopkKD:
    """The KD term from a top-k cache's rows (topk_kd): rows topk_logprobs, topk_indices, topk_tail."""

    temperature: float = 1.0
    kind: str = "forward_kl"
    tail: str = "ignore"

    def __call__(self, student_logits: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return topk_kd(
            student_logits,
            rows["topk_logprobs"],
            rows["topk_indices"],
            self.temperature,
            self.kind,
            self.tail,
            rows.get("topk_tail"),
        )


def _chunk_losses(hidden, lm_head, targets, rows, kd):
    logits = lm_head(hidden).float()  # [chunk, V]: the only full-vocabulary tensor, one chunk at a time
    ce = F.cross_entropy(logits, targets, reduction="none")
    if rows is None:
        return ce, ce.new_zeros(ce.shape)
    return ce, kd(logits, rows)


def chunked_token_losses(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    teacher_rows: dict[str, torch.Tensor] | None = None,
    kd: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token CE (on `targets`) and KD (None without teacher rows), each [N], for N response
    tokens from their final hidden states [N, d]; kd(student_logits [n, V], rows) is the KD term
    of the cache's method (TopkKD, SampledKD) on the teacher's rows for those tokens (each
    tensor of teacher_rows has N rows). The caller weights and sums them (the trainer divides by
    the global batch's response tokens). Logits are computed `chunk_size` rows at a time and
    recomputed in the backward pass (activation checkpointing), so a 128k vocabulary never has
    fp32 logits for all N rows alive at once: peak is chunk_size x V x 4 bytes."""
    if teacher_rows is not None and kd is None:
        raise ValueError("teacher rows need a KD term (kd)")
    n = hidden.shape[0]
    if n == 0:
        zero = hidden.sum() * 0.0
        return zero.reshape(1)[:0], None if teacher_rows is None else zero.reshape(1)[:0]
    ce_parts, kd_parts = [], []
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        rows = None if teacher_rows is None else {name: t[sl] for name, t in teacher_rows.items()}
        args = (hidden[sl], lm_head, targets[sl], rows, kd)
        if torch.is_grad_enabled() and hidden.requires_grad:
            ce, kd_part = torch.utils.checkpoint.checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            ce, kd_part = _chunk_losses(*args)
        ce_parts.append(ce)
        kd_parts.append(kd_part)
    return torch.cat(ce_parts), None if teacher_rows is None else torch.cat(kd_parts)


# Sampled KD (Anshumann et al., ACL 2025, "Sparse Logit Sampling"; a cache of method "sampled"):
# instead of its top-k, the teacher's distribution at temperature T is represented by `draws`
# tokens drawn from it, kept as unique ids with their counts c (sum c = draws). For one response
# token,
#
#   sampled_kd = T^2 * ((1/draws) * sum_v c_v * (-log q_T(v)) - H(p_T))
#
# is an unbiased estimate of the forward KL, T^2 * KL(p_T || q_T) = T^2 * (CE(p_T, q_T) - H(p_T)):
# the draws' average of -log q_T is an unbiased estimate of the cross-entropy, and H(p_T), the
# teacher's entropy at T, is computed exactly from the full row when the cache is built (without
# it, the value estimates the cross-entropy; the gradient is the same). The gradient in the
# student's logits is T * (q_T - c / draws), whose expectation is T * (q_T - p_T), the dense
# forward KL's gradient: unbiased. Only forward KL: reverse KL and JSD need the teacher's
# probability of every token the student puts mass on, which draws do not give.
# Draws made at another temperature estimate another target: the distillation temperature must be
# the sampling temperature (the config refuses any other; a reweighted estimator would need the
# teacher's log-probabilities of the drawn tokens, which the cache does not store).


CDF_BLOCK = 256  # tokens per block of the two-level cumulative sum (128,256 = 501 blocks)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of probs [N, V] and each of its uniforms [N, D] in [0, 1), the token v whose
    cumulative probability interval holds u * total: the first v with P(<= v) > u * total. The
    cumulative sums are float64 (an fp32 cumulative sum over 128k tokens loses about 1e-3 of the
    distribution: a token below ~6e-8 behind a running sum near 1 is never drawn), taken in two
    levels so no [N, V] float64 tensor exists: block totals over the row, then within the block
    each uniform lands in."""
    n, v = probs.shape
    pad = (-v) % CDF_BLOCK
    blocks = (F.pad(probs, (0, pad)) if pad else probs).reshape(n, -1, CDF_BLOCK)  # [N, blocks, B]
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [N, blocks]
    target = uniforms.double() * block_cdf[:, -1:]  # [N, D]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner = blocks.gather(1, block[..., None].expand(-1, -1, CDF_BLOCK)).double().cumsum(-1)  # [N, D, B]
    within = torch.searchsorted(inner, (target - before)[..., None], right=True).squeeze(-1)
    return (block * CDF_BLOCK + within.clamp_(max=CDF_BLOCK - 1)).clamp_(max=v - 1)


def sample_teacher_tokens(
    teacher_logits: torch.Tensor,
    draws: int,
    temperature: float,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`draws` tokens per row of teacher_logits [N, V] from softmax(logits / temperature), with
    replacement, as (ids [N, draws], counts [N, draws]): each row's distinct ids in increasing
    order with how often each was drawn, then padding (id 0, count 0). Each draw inverts the row's
    cumulative distribution at a uniform in [0, 1): `uniforms` [N, draws], or drawn from
    `generator`. Same uniforms, same draws: a cache that gives each row its own uniforms draws the
    same tokens whatever the batch a row is computed in."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if uniforms is None:
        uniforms = torch.rand(teacher_logits.shape[0], draws, generator=generator)
    if uniforms.shape != (teacher_logits.shape[0], draws):
        raise ValueError(
            f"uniforms of shape {tuple(uniforms.shape)} for {teacher_logits.shape[0]} rows of {draws} draws"
        )
    probs = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    drawn, _ = inverse_cdf(probs, uniforms.to(probs.device)).sort(dim=-1)
    new = torch.ones_like(drawn, dtype=torch.bool)
    new[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    slot = new.long().cumsum(-1) - 1  # each draw's place among its row's distinct ids
    ids = torch.zeros_like(drawn).scatter_(1, slot, drawn)
    counts = torch.zeros_like(drawn).scatter_add_(1, slot, torch.ones_like(drawn))
    return ids, counts


def teacher_entropy(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """H(softmax(logits / T)) per row [N], in nats, in fp32."""
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def sampled_kd(
    student_logits: torch.Tensor,
    sample_ids: torch.Tensor,
    sample_counts: torch.Tensor,
    temperature: float = 1.0,
    entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token sampled KD [N] of student logits [N, V] against drawn teacher tokens (ids and
    counts [N, m], padding has count 0), drawn at `temperature`, with the teacher's entropy at
    that temperature [N] (None: the cross-entropy estimate, same gradient): see above."""
    s = student_logits.float() / temperature
    log_q = s.gather(-1, sample_ids.long()) - torch.logsumexp(s, dim=-1, keepdim=True)
    counts = sample_counts.float()
    ce = -torch.where(counts > 0, counts * log_q, 0.0).sum(-1) / counts.sum(-1)  # padding: 0, even at log q = -inf
    return (ce if entropy is None else ce - entropy.float()) * temperature**2


@dataclass
class SampledKD:
    """The KD term from a sampled cache's rows (sampled_kd): sample_ids, sample_counts and
    teacher_entropy, drawn at `temperature`."""

    temperature: float = 1.0

    def __call__(self, student_logits: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return sampled_kd(
            student_logits, rows["sample_ids"], rows["sample_counts"], self.temperature, rows.get("teacher_entropy")
        )
