"""GLUE's loss object for the DistillTrainer: per example
alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE (kdsweep.core.losses.distillation_loss),
the CE on the gold label or, with hard_labels, on the teacher's pseudo-label; plus
cosine_weight * the cosine loss between the last hidden states of the student and of the teacher
run online on its own inputs (the `teacher_*` fields of the batch). Without teacher logits
(evaluation, teacher fine-tuning) the loss is the CE on the gold labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from kdsweep.core.losses import cosine_hidden_loss, distillation_loss


@dataclass
class ClassificationKD:
    items = "examples"  # what the loss counts (num_items_in_batch): the throughput's unit (TrainingMeter)
    alpha: float = 0.0
    temperature: float = 1.0
    hard_labels: bool = False
    cosine_weight: float = 0.0
    teacher: PreTrainedModel | None = None  # online, for the cosine loss only

    def __post_init__(self):
        if self.cosine_weight > 0 and self.teacher is None:
            raise ValueError("cosine_weight > 0 needs the teacher model online")

    def prepare(self, device: torch.device) -> None:
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
            self.teacher.to(device)

    def __call__(self, trainer, model, inputs: dict):
        teacher_logits = inputs.pop("teacher_logits", None)
        teacher_labels = inputs.pop("teacher_labels", None)
        teacher_inputs = {k.removeprefix("teacher_"): inputs.pop(k) for k in list(inputs) if k.startswith("teacher_")}
        labels = inputs.pop("labels")
        use_cosine = self.cosine_weight > 0 and model.training
        outputs = model(**inputs, output_hidden_states=use_cosine)
        if teacher_logits is None:  # evaluation, or plain fine-tuning
            loss, parts = distillation_loss(outputs.logits, None, labels, alpha=0.0, temperature=1.0)
        else:
            ce_labels = teacher_labels if self.hard_labels else labels
            loss, parts = distillation_loss(outputs.logits, teacher_logits, ce_labels, self.alpha, self.temperature)
        if use_cosine:
            if not teacher_inputs:
                raise ValueError("the cosine loss needs the teacher's own inputs (teacher_input_ids, ...) in the batch")
            with torch.no_grad():
                teacher_out = self.teacher(**teacher_inputs, output_hidden_states=True)
            parts["cos"] = cosine_hidden_loss(
                outputs.hidden_states[-1], teacher_out.hidden_states[-1], inputs["attention_mask"]
            )
            loss = loss + self.cosine_weight * parts["cos"]
        return loss.sum(), {k: v.sum() for k, v in parts.items()}, len(labels), outputs
