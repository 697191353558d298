"""Stage `evaluate` for classification: accuracy, macro-F1 and per-class F1 of one model on
every dev split of the task (MNLI: matched and mismatched), one JSON per model."""

from __future__ import annotations

from pathlib import Path

from kdsweep.core.io import read_jsonl, write_json
from kdsweep.core.models import load_classifier, load_tokenizer
from kdsweep.glue.data import GLUE_TASKS
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator, predict_logits
from kdsweep.glue.metrics import classification_metrics


def evaluate_classifier(
    task: str,
    model_path: str,
    data_dir: str | Path,
    max_length: int,
    out: str | Path,
    name: str,
    params: dict | None = None,
    batch_size: int = 128,
) -> dict:
    spec = GLUE_TASKS[task]
    tokenizer = load_tokenizer(model_path)
    model = load_classifier(model_path, len(spec.labels))
    result = {"task": task, "model": name, "model_path": str(model_path), "params": params or {}, "splits": {}}
    for split in spec.eval_splits:
        rows = read_jsonl(Path(data_dir) / f"{split}.jsonl")
        dataset = PairClassificationDataset(rows, tokenizer, max_length)
        logits = predict_logits(
            model, dataset, PairCollator(tokenizer), batch_size, desc=f"evaluate {name} {task} {split}"
        )
        predictions = logits.argmax(-1).numpy()
        result["splits"][split] = classification_metrics([r["label"] for r in rows], predictions, spec.labels)
    write_json(out, result)
    return result
