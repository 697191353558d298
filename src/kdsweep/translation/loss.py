"""The translation family's loss object for the DistillTrainer: per response token
alpha * T^2 * topk_kd + (1 - alpha) * CE, computed in chunks over the vocabulary
(kdsweep.core.losses.chunked_token_losses: `kd_loss` and `tail`). Tokens in `ce_only_ids`
(targets the teacher was never trained on, e.g. the end marker for an Instruct teacher) get their
CE alone, with full weight. Without teacher rows (evaluation, teacher training) the loss is the
response CE. Summed; the DistillTrainer divides by the global batch's response tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdsweep.core.losses import chunked_token_losses
from kdsweep.translation.batching import response_hidden_states


@dataclass
class TokenKD:
    alpha: float = 0.0
    temperature: float = 1.0
    kd_loss: str = "forward_kl"
    tail: str = "ignore"
    chunk_size: int = 1024
    ce_only_ids: list[int] | tuple[int, ...] = ()
    _ce_only: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        self._ce_only = torch.tensor(sorted(self.ce_only_ids), dtype=torch.long)

    def prepare(self, device: torch.device) -> None:
        pass

    def __call__(self, trainer, model, inputs: dict):
        topk_logprobs, topk_indices = inputs.pop("topk_logprobs", None), inputs.pop("topk_indices", None)
        topk_tail = inputs.pop("topk_tail", None)
        unwrapped = trainer.accelerator.unwrap_model(model)
        hidden, targets = response_hidden_states(model, unwrapped, inputs)
        use_kd = topk_logprobs is not None and self.alpha > 0
        if topk_logprobs is not None and len(topk_logprobs) != len(targets):
            raise RuntimeError(f"teacher cache rows ({len(topk_logprobs)}) != response tokens ({len(targets)})")
        ce, kd = chunked_token_losses(
            hidden,
            unwrapped.get_output_embeddings(),
            targets,
            topk_logprobs if use_kd else None,
            topk_indices if use_kd else None,
            self.temperature,
            self.kd_loss,
            self.tail,
            self.chunk_size,
            topk_tail if use_kd else None,
        )
        if not use_kd:
            return ce.sum(), {"ce": ce.sum()}, len(targets), {}
        kd_on = ~torch.isin(targets, self._ce_only.to(targets.device))
        per_token = torch.where(kd_on, self.alpha * kd + (1 - self.alpha) * ce, ce)
        return per_token.sum(), {"ce": ce.sum(), "kd": torch.where(kd_on, kd, 0.0).sum()}, len(targets), {}
