"""Stage `evaluate` for classification: accuracy, macro-F1 and per-class F1 of one model on
every dev split of the task (MNLI: matched and mismatched), with 95 % bootstrap intervals of
accuracy and macro-F1 (glue/metrics.py), one JSON per model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdsweep.core.io import read_jsonl, write_json
from kdsweep.core.models import load_tokenizer, resolve
from kdsweep.core.provenance import evaluation_fields
from kdsweep.core.spec import setting
from kdsweep.glue.data import GLUE_TASKS
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator, predict_logits
from kdsweep.glue.metrics import bootstrap_intervals, classification_metrics
from kdsweep.glue.models import load_classifier


@dataclass
class GlueEvaluateSpec:
    """Stage evaluate (GLUE): evaluate_student and evaluate_teacher send it (the teacher without params)."""

    max_length: int = setting("glue.max_length: tokens per pair")
    batch_size: int = setting("glue.evaluate.batch_size", default=128)
    params: dict | None = setting(
        "the sweep point's settings, recorded in the result (None: the teacher)", default=None
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"glue.evaluate.batch_size: {self.batch_size} is not a positive number of pairs")


def evaluate_classifier(
    task: str, model_path: str, data_dir: str | Path, out: str | Path, name: str, spec: GlueEvaluateSpec
) -> dict:
    glue_task = GLUE_TASKS[task]
    max_length, params, batch_size = spec.max_length, spec.params, spec.batch_size
    tokenizer = load_tokenizer(model_path)
    model = load_classifier(model_path, len(glue_task.labels))
    result = {"task": task, "model": name, "model_path": str(model_path), "params": params or {}, "splits": {}}
    result.update(evaluation_fields(resolve(model_path, weights=True)))  # model_fingerprint, model_provenance
    for split in glue_task.eval_splits:
        rows = read_jsonl(Path(data_dir) / f"{split}.jsonl")
        dataset = PairClassificationDataset(rows, tokenizer, max_length)
        logits = predict_logits(
            model, dataset, PairCollator(tokenizer), batch_size, desc=f"evaluate {name} {task} {split}"
        )
        predictions = logits.argmax(-1).numpy()
        labels = [r["label"] for r in rows]
        result["splits"][split] = classification_metrics(labels, predictions, glue_task.labels)
        result["splits"][split]["ci95"] = bootstrap_intervals(labels, predictions, len(glue_task.labels))
    write_json(out, result)
    return result
