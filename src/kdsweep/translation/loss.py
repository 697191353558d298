"""The translation family's loss object for the DistillTrainer: per response token
alpha * KD + (1 - alpha) * CE, computed in chunks over the vocabulary
(kdsweep.core.losses.chunked_token_losses). The KD term follows the teacher cache's method, told
by the rows the batch carries: a top-k cache's (losses.TopkKD: `kd_loss`, `tail`, times T^2) or a
sampled cache's (losses.SampledKD: the unbiased forward-KL estimate at the sampling temperature,
times T^2). Tokens in `ce_only_ids` (targets the teacher was never trained on, e.g. the end marker
for an Instruct teacher) get their CE alone, with full weight. Without teacher rows (evaluation,
teacher training) the loss is the response CE. Summed; the DistillTrainer divides by the global
batch's response tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdsweep.core.losses import SampledKD, TopkKD, chunked_token_losses
from kdsweep.translation.batching import TEACHER_KEYS, response_hidden_states


@dataclass
class TokenKD:
    items = "tokens"  # response tokens, what the loss counts: the throughput's unit (TrainingMeter)
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

    def kd_term(self, rows: dict[str, torch.Tensor]):
        """The KD term for the cache's rows: sampled rows (sample_ids) or top-k rows."""
        if "sample_ids" in rows:
            if self.kd_loss != "forward_kl":
                raise ValueError(f"a sampled teacher cache estimates forward KL only, not {self.kd_loss}")
            return SampledKD(self.temperature)
        return TopkKD(self.temperature, self.kd_loss, self.tail)

    def __call__(self, trainer, model, inputs: dict):
        rows = {key: inputs.pop(key) for key in TEACHER_KEYS if key in inputs}
        unwrapped = trainer.accelerator.unwrap_model(model)
        hidden, targets = response_hidden_states(model, unwrapped, inputs)
        use_kd = bool(rows) and self.alpha > 0
        for name, t in rows.items():
            if len(t) != len(targets):
                raise RuntimeError(f"teacher cache rows {name} ({len(t)}) != response tokens ({len(targets)})")
        ce, kd = chunked_token_losses(
            hidden,
            unwrapped.get_output_embeddings(),
            targets,
            rows if use_kd else None,
            self.kd_term(rows) if use_kd else None,
            self.chunk_size,
        )
        if not use_kd:
            return ce.sum(), {"ce": ce.sum()}, len(targets), {}
        kd_on = ~torch.isin(targets, self._ce_only.to(targets.device))
        per_token = torch.where(kd_on, self.alpha * kd + (1 - self.alpha) * ce, ce)
        return per_token.sum(), {"ce": ce.sum(), "kd": torch.where(kd_on, kd, 0.0).sum()}, len(targets), {}
