"""Training pieces of the translation (decoder LM) path, on top of the shared trainer in
training.py: tokenized prompt+response examples, their collator, the final hidden states of
the response tokens, and the Trainer whose loss is token-level KD from the cached top-k.

Positions: in a sequence of L tokens whose response starts at r, the response tokens r..L-1
are predicted from the hidden states at r-1..L-2. The teacher cache stores its top-k for
exactly those rows, in the same order, so the student's selected rows line up with them.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .losses import chunked_token_losses
from .prompt import IGNORE_INDEX
from .training import KDTrainer


class TranslationExamples(Dataset):
    """Encoded examples: input_ids and the response start; with the teacher's top-k rows
    (values, indices) for every response token when distilling."""

    def __init__(self, input_ids: list[list[int]], response_starts: list[int], topk: list[tuple] | None = None):
        if topk is not None and len(topk) != len(input_ids):
            raise ValueError(f"teacher cache has {len(topk)} examples, the data {len(input_ids)}")
        self.input_ids, self.response_starts, self.topk = input_ids, response_starts, topk

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "response_start": self.response_starts[i]}
        if self.topk is not None:
            item["topk_values"], item["topk_indices"] = self.topk[i]
        return item


class TranslationCollator:
    """Right-pads a batch; labels are IGNORE_INDEX on the prompt and the padding. Teacher rows
    are concatenated in batch order, matching the student's response rows (see module doc)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, it in enumerate(items):
            ids = torch.as_tensor(it["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, it["response_start"] : len(ids)] = ids[it["response_start"] :]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "topk_values" in items[0]:
            batch["topk_values"] = torch.cat([torch.as_tensor(it["topk_values"]) for it in items])
            batch["topk_indices"] = torch.cat([torch.as_tensor(it["topk_indices"]) for it in items])
        return batch


def _final_norm(model) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ValueError(f"{type(model).__name__}: no final norm (decoder.norm) to read hidden states from")
    return norm


def response_hidden_states(model, unwrapped, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (normed) hidden states [N, d] of the rows that predict the N response tokens, and
    those tokens [N]. `model` may be wrapped (DDP, DeepSpeed): the forward goes through it, asking
    the LM for the last position's logits only; the states come from a hook on the final norm."""
    captured = {}
    hook = _final_norm(unwrapped).register_forward_hook(lambda mod, args, out: captured.update(h=out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    mask = labels[:, 1:] != IGNORE_INDEX
    return captured["h"][:, :-1][mask], labels[:, 1:][mask]


class TokenKDTrainer(KDTrainer):
    """KDTrainer for decoder LMs: alpha * T^2 * topk_kd + (1 - alpha) * CE on the response
    tokens, computed in chunks over the vocabulary. Without teacher rows (evaluation, teacher
    training) the loss is the response CE."""

    def __init__(self, *args, kd_loss: str = "forward_kl", chunk_size: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd_loss, self.chunk_size = kd_loss, chunk_size

    def loss_and_parts(self, model, inputs):
        topk_values, topk_indices = inputs.pop("topk_values", None), inputs.pop("topk_indices", None)
        unwrapped = self.accelerator.unwrap_model(model)
        hidden, targets = response_hidden_states(
            model, unwrapped, inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        )
        use_kd = topk_values is not None and self.alpha > 0
        if topk_values is not None and len(topk_values) != len(targets):
            raise RuntimeError(f"teacher cache rows ({len(topk_values)}) != response tokens ({len(targets)})")
        ce, kd = chunked_token_losses(
            hidden,
            unwrapped.get_output_embeddings(),
            targets,
            topk_values if use_kd else None,
            topk_indices if use_kd else None,
            self.temperature,
            self.kd_loss,
            self.chunk_size,
        )
        parts = {"ce": ce.item()}
        if not use_kd:
            return ce, parts, {}
        parts["kd"] = kd.item()
        return self.alpha * kd + (1 - self.alpha) * ce, parts, {}
