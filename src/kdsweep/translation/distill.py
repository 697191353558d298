"""Stage `distill` for translation: train one student LM per sweep point (learning rate,
alpha, temperature) with token-level KD from the teacher's cache (a top-k cache: losses.topk_kd,
with the config's loss kind and tail option; a sampled cache: losses.sampled_kd, forward KL at the
sampling temperature only) mixed with CE on the cached targets (the references, or the teacher's
translations); `ce_only_tokens` take CE only. The student trains on the token ids
stored in the cache, so teacher and student must share a vocabulary (checked before training,
naming both sizes) and the student's own tokenization of the data must give the cached ids
(checked example by example against the cache's digests). The teacher model is never loaded,
except by init_student_lm, which builds the base student when the config does not name one."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdsweep.core.cache import open_pointer
from kdsweep.core.config import training_seed
from kdsweep.core.hub import hub_path
from kdsweep.core.io import atomic_path, read_jsonl
from kdsweep.core.models import student_from_teacher, tokenizer_fingerprint
from kdsweep.core.provenance import write_record
from kdsweep.core.spec import setting
from kdsweep.translation.batching import TranslationCollator
from kdsweep.translation.generation import load_lm_tokenizer
from kdsweep.translation.loss import TokenKD
from kdsweep.translation.mapped_cache import open_cache_examples
from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
from kdsweep.translation.prompt import ce_only_token_ids, check_same_vocabulary, make_prompt
from kdsweep.translation.teacher import check_cache_alignment, translation_examples

if TYPE_CHECKING:  # the stages that do not train skip transformers' Trainer
    from kdsweep.core.tracking import Tracking

log = logging.getLogger(__name__)


@dataclass
class InitStudentLMSpec:
    """Stage init-student-lm."""

    student: dict = setting("translation.student.model: from_teacher layers or a model built from a config")
    seed: int = setting("translation.distill.training.seed")

    def __post_init__(self):
        if not isinstance(self.student, dict):
            raise ValueError(
                f"translation.student.model: {self.student!r} names a model, used as it is; "
                "init-student-lm builds a student from teacher layers or a config"
            )


@dataclass
class DistillLMSpec:
    """Stage distill-lm: one sweep point's job. Its fields, as a dict, are part of the job record
    that decides whether checkpoints are resumed (train_and_save)."""

    point: dict = setting(
        "the sweep point: learning_rate, alpha, temperature, seed (default: distill.training.seed); an "
        "experiment's run may override distill.loss and distill.tail (loss, tail)"
    )
    distill: dict = setting("translation.distill without sweep and experiments")
    prompt: dict = setting("translation.prompt")
    max_length: int = setting("translation.max_length: tokens, prompt + response")
    packing: bool = setting("translation.packing")
    eval_batch_size: int = setting("translation.evaluate.batch_size")

    def __post_init__(self):
        missing = [k for k in ("learning_rate", "alpha", "temperature") if k not in self.point]
        if missing:
            raise ValueError(f"translation.distill.sweep: the point {self.point} has no {', '.join(missing)}")


def init_student_lm(teacher_path: str, tokenizer_path: str, out: str | Path, spec: InitStudentLMSpec) -> None:
    """The base student, before distillation, for a student kdsweep builds: from teacher layers
    (DistilBERT's construction; the only case that loads the teacher's weights) or from a config.
    Saved with its tokenizer, after checking its vocabulary against the teacher's."""
    from transformers import AutoConfig

    student_spec, seed = spec.student, spec.seed

    tokenizer = load_lm_tokenizer(tokenizer_path)
    if "from_teacher" in student_spec:
        opts = student_spec["from_teacher"]
        teacher = load_causal_lm(teacher_path, torch.float32)
        student = student_from_teacher(teacher, opts.get("layers"), opts.get("copy_head", True), seed)
    else:
        student = causal_lm_from_config(student_spec, tokenizer, seed)
    teacher_vocab = AutoConfig.from_pretrained(hub_path(teacher_path, needs=("config.json",))).vocab_size
    check_same_vocabulary(load_lm_tokenizer(teacher_path), tokenizer, teacher_vocab, student.config.vocab_size)
    job = {"stage": "init_student_lm", "spec": asdict(spec), "teacher": teacher_path, "tokenizer": tokenizer_path}
    with atomic_path(out, is_dir=True) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_record(tmp, job)


def check_sampled_temperature(key_parts: dict, temperature: float, loss: str, tail: str = "ignore") -> None:
    """A sampled cache's draws estimate forward KL at their own temperature only (losses.py):
    another distillation temperature or divergence, or a tail option, is refused (the config
    refuses them before any job; this guards a cache passed by hand)."""
    if key_parts.get("method") != "sampled":
        return
    if float(temperature) != float(key_parts["temperature"]):
        raise ValueError(
            f"translation.distill.sweep.temperature: {temperature:g}, but the sampled teacher cache drew its tokens "
            f"at temperature {key_parts['temperature']:g} (translation.teacher.cache.temperature): its draws "
            "estimate the KD target at that temperature only"
        )
    if loss != "forward_kl":
        raise ValueError(f"translation.distill.loss: {loss}; a sampled teacher cache estimates forward_kl only")
    if tail != "ignore":
        raise ValueError(f"translation.distill.tail: {tail} applies to a top-k cache; a sampled cache has no tail")


def distill_student_lm(
    student_path: str,
    teacher_tokenizer: str,
    data_dir: str | Path,
    cache_pointer: str | Path,
    model_out: str | Path,
    log_out: str | Path,
    checkpoint_dir: str | Path,
    spec: DistillLMSpec,
    deepspeed_config: str | None = None,
    tracking: Tracking | None = None,
) -> dict:
    """student_path: the base student (a hub name or kdsweep's init_student output)."""
    # Here, not at the top: init-student-lm, which does not train, skips transformers' Trainer.
    from kdsweep.core.trainer import DistillTrainer, process_rank, train_and_save, training_arguments

    point = spec.point
    distill_cfg, train_cfg = spec.distill, training_seed(spec.distill["training"], point)  # sweep.seed
    data_dir = Path(data_dir)
    entry = open_pointer(cache_pointer, data_dir / "train.jsonl")
    # an experiment's run may set its own KD loss kind and tail option (config.experiment_tables)
    kd_loss, tail = point.get("loss", distill_cfg["loss"]), point.get("tail", distill_cfg["tail"])
    check_sampled_temperature(entry.key_parts, point["temperature"], kd_loss, tail)
    tokenizer = load_lm_tokenizer(student_path)
    teacher_tok = load_lm_tokenizer(teacher_tokenizer)
    if tokenizer_fingerprint(teacher_tok) != entry.key_parts["tokenizer"]:
        raise RuntimeError(f"{cache_pointer}: cache built with another tokenizer than {teacher_tokenizer}")
    student = load_causal_lm(student_path, torch.float32)  # fp32 master weights; mixed precision: precision.py
    check_same_vocabulary(teacher_tok, tokenizer, entry.manifest()["teacher_vocab_size"], student.config.vocab_size)
    prompt = make_prompt(tokenizer, spec.prompt)
    dev = translation_examples(data_dir / "dev.jsonl", tokenizer, prompt, spec.max_length)  # fails if none fits
    check_cache_alignment(
        entry, read_jsonl(data_dir / "train.jsonl"), tokenizer, prompt, entry.key_parts["targets"] == "reference"
    )
    args = training_arguments(train_cfg, point["learning_rate"], checkpoint_dir, spec.eval_batch_size, deepspeed_config)
    # Memory-mapped (mapped_cache.py): each process verifies its share of the shards, all refuse a
    # damaged cache together, and each reads only its own batches' examples from the page cache.
    train = open_cache_examples(entry, *process_rank(args))
    trainer = DistillTrainer(
        model=student,
        args=args,
        tracking=tracking,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=TranslationCollator(tokenizer.pad_token_id, spec.max_length if spec.packing else None),
        loss=TokenKD(
            alpha=point["alpha"],
            temperature=point["temperature"],
            kd_loss=kd_loss,
            tail=tail,
            chunk_size=distill_cfg["chunk_size"],
            ce_only_ids=ce_only_token_ids(tokenizer, spec.prompt, distill_cfg["ce_only_tokens"]),
        ),
    )
    job = {"stage": "distill_lm", "point": point, "spec": asdict(spec), "student": student_path, "cache": entry.key}
    return train_and_save(trainer, job, model_out, log_out, tokenizer=tokenizer, cache=entry)
