"""Training pieces of the translation (decoder LM) path, for the shared DistillTrainer
(kdsweep/core/trainer.py): tokenized prompt+response examples, their collator, the final hidden states of
the response tokens (the loss object is in loss.py).

Positions: in a sequence of L tokens whose response starts at r, the response tokens r..L-1
are predicted from the hidden states at r-1..L-2. The teacher cache stores one row for each of
those tokens, in the same order, so the student's selected rows line up with them.

Packing (the default; `translation.packing`): instead of padding every sequence to the longest
of its batch, the collator places the batch's examples into rows of at most `max_length` tokens
(first-fit decreasing) with position ids restarting at 0 for each example and no attention mask.
Transformers then builds a block-diagonal causal mask from the position ids (sdpa, eager; torch
>= 2.6), so no token attends to another example: the loss and gradients equal the padded batch's
(tested), for fewer tokens (Europarl-length pairs in batches of 32: about half of a padded batch
is padding). Response rows, and the teacher rows the collator concatenates, follow the packed
order; `batch["order"]` lists the items in that order (restore_item_order undoes it).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from kdsweep.translation.prompt import IGNORE_INDEX

# The teacher rows an item may carry, one row per response token (cache_format.py decodes them):
# a top-k cache's, or a sampled cache's.
TEACHER_KEYS = ("topk_logprobs", "topk_indices", "topk_tail", "sample_ids", "sample_counts", "teacher_entropy")


class TranslationExamples(Dataset):
    """Encoded examples: input_ids and the response start; when distilling, each example's
    teacher rows (a dict of TEACHER_KEYS tensors, one row per response token)."""

    def __init__(self, input_ids: list[list[int]], response_starts: list[int], teacher: list[dict] | None = None):
        if teacher is not None and len(teacher) != len(input_ids):
            raise ValueError(f"teacher cache has {len(teacher)} examples, the data {len(input_ids)}")
        self.input_ids, self.response_starts, self.teacher = input_ids, response_starts, teacher

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "response_start": self.response_starts[i]}
        if self.teacher is not None:
            item.update(self.teacher[i])
        return item


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Item indices per row, first-fit decreasing: each row holds at most `capacity` tokens (an
    item longer than that gets a row of its own). Ties keep the items' order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


class TranslationCollator:
    """Right-pads a batch, or packs it (pack_length: the row capacity in tokens, see the module
    doc); labels are IGNORE_INDEX on the prompt and the padding. Teacher rows are concatenated in
    the order of the items in the batch's rows, matching the student's response rows."""

    def __init__(self, pad_token_id: int, pack_length: int | None = None):
        self.pad_token_id, self.pack_length = pad_token_id, pack_length

    def __call__(self, items: list[dict]) -> dict:
        lengths = [len(it["input_ids"]) for it in items]
        if self.pack_length:
            rows = pack_rows(lengths, self.pack_length)
        else:
            rows = [[i] for i in range(len(items))]
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                ids, end = torch.as_tensor(items[i]["input_ids"], dtype=torch.long), at + lengths[i]
                input_ids[r, at:end] = ids
                labels[r, at + items[i]["response_start"] : end] = ids[items[i]["response_start"] :]
                position_ids[r, at:end] = torch.arange(lengths[i])
                at = end
            position_ids[r, at:] = torch.arange(width - at)  # the padding: a segment of its own
        batch = {"input_ids": input_ids, "labels": labels}
        if self.pack_length:
            batch["position_ids"] = position_ids
            batch["order"] = torch.tensor([i for row in rows for i in row], dtype=torch.long)
        else:
            batch["attention_mask"] = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
        order = [i for row in rows for i in row]
        for key in TEACHER_KEYS:
            if key in items[0]:
                batch[key] = torch.cat([torch.as_tensor(items[i][key]) for i in order])
        return batch


def restore_item_order(batch: dict, items: list[dict], *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Response rows computed on a (packed) batch, put back in the items' order."""
    if "order" not in batch:
        return rows
    order = batch["order"].tolist()
    counts = [len(items[i]["input_ids"]) - items[i]["response_start"] for i in order]
    position = {item: p for p, item in enumerate(order)}
    out = []
    for tensor in rows:
        pieces = tensor.split(counts)
        out.append(torch.cat([pieces[position[i]] for i in range(len(items))]))
    return tuple(out)


def _final_norm(model) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ValueError(f"{type(model).__name__}: no final norm (decoder.norm) to read hidden states from")
    return norm


def response_hidden_states(model, unwrapped, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Final (normed) hidden states [N, d] of the rows that predict the N response tokens of a
    collated batch (padded or packed), and those tokens [N]. `model` may be wrapped (DDP,
    DeepSpeed): the forward goes through it, asking the LM for the last position's logits only;
    the states come from a hook on the final norm."""
    captured = {}
    hook = _final_norm(unwrapped).register_forward_hook(lambda mod, args, out: captured.update(h=out))
    try:
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            logits_to_keep=1,
            use_cache=False,
        )
    finally:
        hook.remove()
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE_INDEX
    return captured["h"][:, :-1][mask], labels[:, 1:][mask]
