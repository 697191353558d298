"""Stage `teacher` for classification: fine-tune the teacher on the task (optional), then cache
its class logits and pseudo-labels (argmax) for every training example.

The cache entry's key covers the teacher's weights, the tokenizer, the training data file and
max_length (see kdsweep/core/cache.py): an unchanged input reuses the entry, a changed one rebuilds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdsweep.core.cache import CacheEntry, teacher_key_parts, write_pointer
from kdsweep.core.io import read_json, read_jsonl, sha256_file
from kdsweep.core.models import check_tokenizer_fits, load_tokenizer
from kdsweep.core.spec import setting
from kdsweep.glue.data import GLUE_TASKS
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator, predict_logits
from kdsweep.glue.loss import ClassificationKD
from kdsweep.glue.metrics import training_metrics
from kdsweep.glue.models import classifier_from_config, load_classifier, name_labels

if TYPE_CHECKING:  # the stages that do not train skip transformers' Trainer
    from kdsweep.core.tracking import Tracking

log = logging.getLogger(__name__)


def check_max_length(max_length: int) -> None:
    if max_length < 8:
        raise ValueError(f"glue.max_length: {max_length} tokens leave no room for a pair (at least 8)")


@dataclass
class GlueTeacherSpec:
    """Stage finetune-teacher."""

    model: str | dict = setting("glue.teacher.model: a hub name or local dir, or a model built from a config")
    finetune: dict = setting("glue.teacher.finetune: learning_rate and the training block")
    max_length: int = setting("glue.max_length: tokens per pair")
    eval_batch_size: int = setting("glue.evaluate.batch_size", default=128)

    def __post_init__(self):
        check_max_length(self.max_length)


@dataclass
class GlueCacheSpec:
    """Stage cache-teacher."""

    max_length: int = setting("glue.max_length: tokens per pair")
    batch_size: int = setting("glue.teacher.cache.batch_size", default=128)

    def __post_init__(self):
        check_max_length(self.max_length)


def finetune_teacher(
    task: str,
    tokenizer_path: str,
    data_dir: str | Path,
    model_out: str | Path,
    log_out: str | Path,
    checkpoint_dir: str | Path,
    spec: GlueTeacherSpec,
    tracking: Tracking | None = None,
) -> dict:
    """Train the teacher on the task's train split (CE only); eval loss on the first dev split."""
    # Here, not at the top: the cache stage, which does not train, skips transformers' Trainer.
    from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments

    model_spec, finetune_cfg, max_length = spec.model, spec.finetune, spec.max_length
    labels = GLUE_TASKS[task].labels
    tokenizer = load_tokenizer(tokenizer_path)
    seed = finetune_cfg["training"]["seed"]
    if isinstance(model_spec, dict):
        model = classifier_from_config(model_spec, len(labels), tokenizer, seed)
    else:
        model = load_classifier(model_spec, len(labels))
    name_labels(model, labels)  # it is trained on kdsweep's label order: its config says so
    data_dir = Path(data_dir)
    train = PairClassificationDataset(read_jsonl(data_dir / "train.jsonl"), tokenizer, max_length)
    dev = PairClassificationDataset(
        read_jsonl(data_dir / f"{GLUE_TASKS[task].eval_splits[0]}.jsonl"), tokenizer, max_length
    )
    args = training_arguments(
        finetune_cfg["training"], finetune_cfg["learning_rate"], checkpoint_dir, spec.eval_batch_size
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        tracking=tracking,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=PairCollator(tokenizer),
        compute_metrics=training_metrics(finetune_cfg["training"]),  # dev accuracy for keep: best on accuracy
        loss=ClassificationKD(),
    )
    job = {
        "stage": "teacher_finetune",
        "task": task,
        "model": model_spec,
        "finetune": finetune_cfg,
        "data": sha256_file(data_dir / "train.jsonl"),
        "max_length": max_length,
    }
    return train_and_save(trainer, job, model_out, log_out, tokenizer=tokenizer)


def cache_teacher_logits(
    task: str,
    teacher_path: str,
    tokenizer_path: str,
    data_dir: str | Path,
    store: str | Path,
    pointer_out: str | Path,
    spec: GlueCacheSpec,
) -> dict:
    """Cache the teacher's logits on the train split (reused when the key is unchanged). The
    teacher must be a classifier trained for the task's labels in kdsweep's order, and the
    tokenizer's ids must fit it (models.load_classifier, check_tokenizer_fits): checked before
    anything is predicted."""
    max_length = spec.max_length
    labels = GLUE_TASKS[task].labels
    train_file = Path(data_dir) / "train.jsonl"
    tokenizer = load_tokenizer(tokenizer_path)
    model = load_classifier(teacher_path, len(labels), trained_labels=labels, key="glue.teacher.model")
    check_tokenizer_fits(tokenizer, model, "glue.teacher.tokenizer", teacher_path)
    key_parts = teacher_key_parts("class_logits", model, tokenizer, train_file, max_length=max_length)
    entry = CacheEntry(store, key_parts)
    check = class_logits_problem(len(labels))
    reused = entry.reuse(check)
    if reused:
        log.info("teacher cache %s is up to date, not recomputed", entry.dir)
    else:
        log.info("building teacher cache %s", entry.dir)
        rows = read_jsonl(train_file)

        def shard(start: int, stop: int, label: str) -> dict[str, torch.Tensor]:
            dataset = PairClassificationDataset(rows[start:stop], tokenizer, max_length)
            collator = PairCollator(tokenizer)
            logits = predict_logits(model, dataset, collator, spec.batch_size, desc=f"cache {task} {label}")
            return {"logits": logits, "pseudo_labels": logits.argmax(-1)}

        # One shard: a GLUE cache is a few floats per example (MNLI: 5 MB).
        num_shards = entry.fill(len(rows), max(1, len(rows)), shard, check)
        pseudo = torch.cat([entry.read_shard(i, ("pseudo_labels",))["pseudo_labels"] for i in range(num_shards)])
        gold = torch.tensor([r["label"] for r in rows])
        entry.finish(
            num_shards,
            {
                "task": task,
                "rows": len(rows),
                "teacher_path": str(teacher_path),
                "teacher_train_accuracy": (pseudo == gold).float().mean().item(),
            },
        )
    write_pointer(pointer_out, entry, reused)
    return read_json(entry.manifest_path)


def class_logits_problem(num_labels: int):
    """The value check of a GLUE cache shard: finite logits, one row of num_labels per example,
    pseudo-labels that are the logits' argmax."""

    def check(shard: dict[str, torch.Tensor]) -> str | None:
        logits, pseudo = shard["logits"], shard["pseudo_labels"]
        if logits.ndim != 2 or logits.shape[1] != num_labels or len(pseudo) != len(logits):
            return f"logits of shape {tuple(logits.shape)} and {len(pseudo)} pseudo-labels for {num_labels} classes"
        bad = (~torch.isfinite(logits)).any(-1).nonzero()
        if len(bad):
            return f"non-finite teacher logits for {len(bad)} examples (the first: training example {int(bad[0])})"
        if not torch.equal(pseudo, logits.argmax(-1)):
            return "pseudo-labels that are not the logits' argmax"
        return None

    return check
