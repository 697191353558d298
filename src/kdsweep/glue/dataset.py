"""GLUE examples for the Trainer: tokenized sentence pairs with their label and, for
distillation, the cached teacher logits and pseudo-label (and the teacher's own tokenization,
for the cosine loss); the collator that pads them; and batched prediction of logits."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from kdsweep.core.progress import progress


class PairClassificationDataset(Dataset):
    """Tokenized sentence pairs with labels and, for distillation, the teacher's cached outputs.
    With `teacher_tokenizer` (the cosine loss runs the teacher online) each pair is also encoded
    with the teacher's own tokenizer (teacher_* fields: BERT's token_type_ids mark sentence B,
    which DistilBERT's tokenizer leaves out); the token ids must be the student's, since the loss
    compares hidden states position by position."""

    def __init__(
        self,
        rows: list[dict],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        teacher_logits: torch.Tensor | None = None,
        teacher_labels: torch.Tensor | None = None,
        teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        if teacher_logits is not None and len(teacher_logits) != len(rows):
            raise ValueError(f"teacher cache has {len(teacher_logits)} rows, the data {len(rows)}")
        texts = [r["text_a"] for r in rows], [r["text_b"] for r in rows]
        self.encodings = tokenizer(*texts, truncation=True, max_length=max_length)
        self.labels = [r["label"] for r in rows]
        self.teacher_logits = teacher_logits
        self.teacher_labels = teacher_labels
        self.teacher_encodings = None
        if teacher_tokenizer is not None:
            self.teacher_encodings = teacher_tokenizer(*texts, truncation=True, max_length=max_length)
            pairs = zip(self.teacher_encodings["input_ids"], self.encodings["input_ids"], strict=True)
            for i, (teacher_ids, student_ids) in enumerate(pairs):
                if teacher_ids != student_ids:
                    raise ValueError(
                        f"glue.distill.cosine_weight > 0 compares hidden states token by token, but training example {i} "
                        f"tokenizes to other ids for the teacher ({len(teacher_ids)} tokens) than for the student "
                        f"({len(student_ids)} tokens): give the student the teacher's vocabulary, or set cosine_weight 0"
                    )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
            item["teacher_labels"] = self.teacher_labels[i]
        if self.teacher_encodings is not None:
            item["teacher_inputs"] = {k: v[i] for k, v in self.teacher_encodings.items()}
        return item


class PairCollator:
    """Pads the token fields with the tokenizer (the teacher's own inputs with the teacher's);
    stacks labels and teacher outputs."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase | None = None):
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer

    def __call__(self, items: list[dict]) -> dict:
        special = ("labels", "teacher_logits", "teacher_labels", "teacher_inputs")
        token_keys = [k for k in items[0] if k not in special]
        batch = self.tokenizer.pad([{k: it[k] for k in token_keys} for it in items], return_tensors="pt")
        batch = dict(batch)
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        if "teacher_logits" in items[0]:
            batch["teacher_logits"] = torch.stack([torch.as_tensor(it["teacher_logits"]) for it in items]).float()
            batch["teacher_labels"] = torch.tensor([int(it["teacher_labels"]) for it in items], dtype=torch.long)
        if "teacher_inputs" in items[0]:
            pad = self.teacher_tokenizer or self.tokenizer
            teacher = pad.pad([it["teacher_inputs"] for it in items], return_tensors="pt")
            batch.update({f"teacher_{k}": v for k, v in teacher.items()})
        return batch


@torch.no_grad()
def predict_logits(
    model, dataset: PairClassificationDataset, collator: PairCollator, batch_size: int, desc: str = "predict"
) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().to(device)
    out = []
    for batch in progress(DataLoader(dataset, batch_size=batch_size, collate_fn=collator), desc=desc, unit="batches"):
        batch.pop("labels")
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out)
