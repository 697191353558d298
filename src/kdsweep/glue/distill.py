"""Stage `distill` for classification: train one student per sweep point (learning rate, alpha,
temperature) from the teacher's cached logits; the teacher model is loaded only when the cosine
loss on hidden states needs it online."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from kdsweep.core.cache import open_pointer
from kdsweep.core.config import training_seed
from kdsweep.core.io import read_jsonl
from kdsweep.core.models import check_tokenizer_fits, load_tokenizer, student_from_teacher
from kdsweep.core.spec import setting
from kdsweep.core.tracking import Tracking
from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments
from kdsweep.glue.data import GLUE_TASKS
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator
from kdsweep.glue.loss import ClassificationKD
from kdsweep.glue.metrics import training_metrics
from kdsweep.glue.models import classifier_from_config, load_classifier, name_labels
from kdsweep.glue.teacher import check_max_length, class_logits_problem

log = logging.getLogger(__name__)


def builds_from_teacher(student_spec) -> bool:
    return isinstance(student_spec, dict) and "from_teacher" in student_spec


def build_student(student_spec, teacher, num_labels: int, tokenizer, seed: int, init: str = "config"):
    """The student the config names (`teacher`: the loaded teacher, for a student built from its
    layers); init "random": the same architecture with fresh random weights (the ablation's
    baseline for teacher-layer or pretrained initialization)."""
    if isinstance(student_spec, str):
        student = load_classifier(student_spec, num_labels)
    elif builds_from_teacher(student_spec):
        opts = student_spec["from_teacher"]
        student = student_from_teacher(teacher, opts.get("layers"), opts.get("copy_head", False), seed)
    else:
        student = classifier_from_config(student_spec, num_labels, tokenizer, seed)
    if init == "random":
        torch.manual_seed(seed)
        student = AutoModelForSequenceClassification.from_config(student.config)
    return student


@dataclass
class GlueDistillSpec:
    """Stage distill (GLUE): one sweep point's job. Its fields, as a dict, are part of the job record
    that decides whether checkpoints are resumed (train_and_save)."""

    point: dict = setting(
        "the sweep point (config.distill_points): learning_rate, alpha, temperature, seed (default: "
        "distill.training.seed); may override "
        "glue.distill.cosine_weight and the student's initialization (init: random)"
    )
    student: dict = setting("glue.student: its model (a hub name, a config, or from_teacher layers)")
    distill: dict = setting("glue.distill without sweep and experiments")
    max_length: int = setting("glue.max_length: tokens per pair")
    eval_batch_size: int = setting("glue.evaluate.batch_size")

    def __post_init__(self):
        check_max_length(self.max_length)
        missing = [k for k in ("learning_rate", "alpha", "temperature") if k not in self.point]
        if missing:
            raise ValueError(f"glue.distill.sweep: the point {self.point} has no {', '.join(missing)}")


def distill_student(
    task: str,
    teacher_path: str,
    teacher_tokenizer: str,
    student_tokenizer: str,
    data_dir: str | Path,
    cache_pointer: str | Path,
    model_out: str | Path,
    log_out: str | Path,
    checkpoint_dir: str | Path,
    spec: GlueDistillSpec,
    deepspeed_config: str | None = None,
    tracking: Tracking | None = None,
) -> dict:
    """Runs in every process that kdsweep.cluster.launch started; only the main one writes the outputs."""
    labels = GLUE_TASKS[task].labels
    point = spec.point
    distill_cfg, train_cfg = spec.distill, training_seed(spec.distill["training"], point)  # sweep.seed
    cosine_weight = point.get("cosine_weight", distill_cfg["cosine_weight"])
    data_dir = Path(data_dir)
    train_file = data_dir / "train.jsonl"
    entry = open_pointer(cache_pointer, train_file)
    cached = entry.read_all(class_logits_problem(len(labels)))  # checksums and values, before training

    tokenizer = load_tokenizer(student_tokenizer)
    student_spec = spec.student["model"]
    # The cosine loss runs the teacher online, on its own tokenization of each pair (checked to
    # give the student's token ids; its token_type_ids may differ, e.g. BERT vs DistilBERT).
    online_tokenizer = load_tokenizer(teacher_tokenizer) if cosine_weight > 0 else None
    # Loaded once, only when needed: its layers build the student, or the cosine loss runs it online.
    # The same checks as the cache job's: a trained classifier of kdsweep's labels, a tokenizer that fits it.
    needs_teacher = cosine_weight > 0 or builds_from_teacher(student_spec)
    teacher = None
    if needs_teacher:
        teacher = load_classifier(teacher_path, len(labels), trained_labels=labels, key="glue.teacher.model")
    if online_tokenizer is not None:
        check_tokenizer_fits(online_tokenizer, teacher, "glue.teacher.tokenizer", teacher_path)
    student = build_student(
        student_spec, teacher, len(labels), tokenizer, train_cfg["seed"], point.get("init", "config")
    )
    name_labels(student, labels)  # trained on kdsweep's label order

    max_length = spec.max_length
    train = PairClassificationDataset(
        read_jsonl(train_file),
        tokenizer,
        max_length,
        teacher_logits=cached["logits"],
        teacher_labels=cached["pseudo_labels"],
        teacher_tokenizer=online_tokenizer,
    )
    dev = PairClassificationDataset(
        read_jsonl(data_dir / f"{GLUE_TASKS[task].eval_splits[0]}.jsonl"), tokenizer, max_length
    )
    args = training_arguments(train_cfg, point["learning_rate"], checkpoint_dir, spec.eval_batch_size, deepspeed_config)
    trainer = DistillTrainer(
        model=student,
        args=args,
        tracking=tracking,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=PairCollator(tokenizer, online_tokenizer),
        compute_metrics=training_metrics(train_cfg),  # dev accuracy for keep: best on accuracy
        loss=ClassificationKD(
            alpha=point["alpha"],
            temperature=point["temperature"],
            hard_labels=distill_cfg["hard_labels"],
            cosine_weight=cosine_weight,
            teacher=teacher if cosine_weight > 0 else None,
        ),
    )
    job = {"stage": "distill", "task": task, "point": point, "spec": asdict(spec), "cache": entry.key}
    return train_and_save(trainer, job, model_out, log_out, tokenizer=tokenizer, cache=entry)
