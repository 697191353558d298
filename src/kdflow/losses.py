"""Distillation losses (DistilBERT/Hinton). The teacher's outputs never receive gradients.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

alpha weights the KD term (alpha = 1: pure KD, alpha = 0: plain fine-tuning). T^2 keeps the
KD gradients' scale independent of T. KL is averaged over examples (batchmean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
