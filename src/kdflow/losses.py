"""Distillation losses (DistilBERT/Hinton). The teacher's outputs never receive gradients.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

alpha weights the KD term (alpha = 1: pure KD, alpha = 0: plain fine-tuning). T^2 keeps the
KD gradients' scale independent of T. KL is averaged over examples (batchmean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over rows (all leading dims flattened)."""
    t = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    s = student_logits.float().reshape(-1, student_logits.shape[-1])
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return kl * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * KD + (1 - alpha) * CE; returns the loss and its parts (for logging)."""
    parts: dict[str, float] = {}
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        if teacher_logits is None:
            raise ValueError("alpha > 0 needs teacher logits")
        kd = kd_kl(student_logits, teacher_logits, temperature)
        loss = loss + alpha * kd
        parts["kd"] = kd.item()
    if alpha < 1:
        ce = F.cross_entropy(student_logits.float(), labels)
        loss = loss + (1 - alpha) * ce
        parts["ce"] = ce.item()
    return loss, parts


def cosine_hidden_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """DistilBERT's L_cos: mean over non-padding tokens of 1 - cos(h_student, h_teacher)."""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"cosine loss needs equal hidden sizes: student {student_hidden.shape[-1]}, teacher {teacher_hidden.shape[-1]}"
        )
    mask = attention_mask.bool()
    cos = F.cosine_similarity(student_hidden[mask].float(), teacher_hidden.detach()[mask].float(), dim=-1)
    return (1 - cos).mean()


# Token-level KD for language models from the teacher's cached top-k logits.
#
# The cache holds, for every response token, the teacher's k largest logits (values, indices) at
# temperature 1 and the log-sum-exp of the full row. At temperature T the teacher target is the
# top-k renormalized: p_hat = softmax(values / T) over the k entries; the teacher's tail (the
# other V - k tokens) gets no target mass. Its size at T = 1, 1 - sum(exp(values - lse)), is
# what the cache manifest reports as the captured mass. With k = V every loss below equals the
# dense one exactly (tested); at small k the error is bounded by the tail mass.
#   forward KL  KL(p_hat || q_T): q_T is the student's full softmax at T, so student mass
#               outside the teacher's top-k is penalized (the default, as in the study).
#   reverse KL  KL(q_hat || p_hat) and JSD use q_hat, the student renormalized over the same
#               top-k (p_hat is zero outside it, where a reverse KL would be infinite).
# Every term is multiplied by T^2, as in the classification loss above.
TOKEN_KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


def topk_kd(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    temperature: float,
    kind: str = "forward_kl",
) -> torch.Tensor:
    """Per-token KD loss [N] of student logits [N, V] against the teacher's top-k [N, k]."""
    s = student_logits.float() / temperature
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    s_k = s.gather(-1, topk_indices.long())
    if kind == "forward_kl":
        log_q = s_k - torch.logsumexp(s, dim=-1, keepdim=True)
        loss = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        log_q = F.log_softmax(s_k, dim=-1)
        loss = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif kind == "jsd":
        log_q = F.log_softmax(s_k, dim=-1)
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        loss = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
    else:
        raise ValueError(f"unknown token KD loss {kind!r}; one of {TOKEN_KD_LOSSES}")
    return loss * temperature**2


def _chunk_losses(hidden, lm_head, targets, topk_values, topk_indices, temperature, kind):
    logits = lm_head(hidden).float()  # [chunk, V]: the only full-vocabulary tensor, one chunk at a time
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if topk_values is None:
        return ce, ce.new_zeros(())
    return ce, topk_kd(logits, topk_values, topk_indices, temperature, kind).sum()


def chunked_token_losses(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    topk_values: torch.Tensor | None = None,
    topk_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE (on `targets`) and mean top-k KD over N response tokens, from their final hidden
    states [N, d]. Logits are computed `chunk_size` rows at a time and recomputed in the backward
    pass (activation checkpointing), so a 128k vocabulary never has fp32 logits for all N rows
    alive at once: peak is chunk_size x V x 4 bytes."""
    n = hidden.shape[0]
    if n == 0:
        zero = hidden.sum() * 0.0
        return zero, zero
    ce_sum, kd_sum = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (
            hidden[sl],
            lm_head,
            targets[sl],
            None if topk_values is None else topk_values[sl],
            None if topk_indices is None else topk_indices[sl],
            temperature,
            kind,
        )
        if torch.is_grad_enabled() and hidden.requires_grad:
            ce, kd = torch.utils.checkpoint.checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            ce, kd = _chunk_losses(*args)
        ce_sum, kd_sum = ce_sum + ce, kd_sum + kd
    return ce_sum / n, kd_sum / n
