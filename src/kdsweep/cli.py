"""`python -m kdsweep <stage> ...`: the entry points the Snakemake rules call.

Paths come from the rule's input/output; settings come as one JSON object (--spec) holding only
what the job depends on, so Snakemake reruns a job exactly when its settings change. Each stage
reads it as one dataclass (kdsweep.core.spec.from_json: unknown and missing keys fail, naming them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _spec(text: str) -> dict:
    return json.loads(text)


def _build(cls, a):
    """The stage's settings (a dataclass of kdsweep.core.spec) from the rule's --spec."""
    from kdsweep.core.spec import from_json

    return from_json(cls, a.spec, f"kdsweep {a.command} --spec")


def _tracking(a):
    """The training job's tracking (kdsweep.core.tracking) from --tracking-dir/-backend/-project;
    None without --tracking-dir. Not part of --spec: another backend does not restart a job."""
    if a.tracking_dir is None:
        return None
    from pathlib import Path

    from kdsweep.core.tracking import Tracking

    folder = Path(a.tracking_dir)
    name = f"{folder.parent.name}/{folder.name}"  # <task>/<point or teacher>: the wandb/MLflow run name
    return Tracking(a.tracking_backend, a.tracking_dir, a.tracking_project, name)


def _threads() -> None:
    n = os.environ.get("KDSWEEP_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def cmd_synthesize_glue(a) -> None:
    from kdsweep.glue.synthetic import SynthesizeGlueSpec, write_synthetic_glue

    write_synthetic_glue(a.task, a.out, _build(SynthesizeGlueSpec, a))


def cmd_prepare_glue(a) -> None:
    from kdsweep.glue.data import PrepareGlueSpec, prepare_glue

    prepare_glue(a.task, a.out, _build(PrepareGlueSpec, a), tsv_dir=a.tsv_dir)


def cmd_train_tokenizer(a) -> None:
    """WordPiece on GLUE's text pairs; with spec kind "bpe", byte-level BPE on translation pairs."""
    from kdsweep.core.io import read_jsonl
    from kdsweep.core.models import TokenizerSpec
    from kdsweep.glue.tokenizer import train_wordpiece_tokenizer
    from kdsweep.translation.tokenizer import train_bpe_tokenizer

    spec = _build(TokenizerSpec, a)
    rows = read_jsonl(a.train)
    if spec.kind == "bpe":
        train_bpe_tokenizer([r[f] for f in ("source", "target") for r in rows], a.out, spec.vocab_size)
    else:
        train_wordpiece_tokenizer([r[f] for f in ("text_a", "text_b") for r in rows], a.out, spec.vocab_size)


def cmd_synthesize_europarl(a) -> None:
    from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl

    write_synthetic_europarl(a.out, _build(SynthesizeEuroparlSpec, a))


def cmd_prepare_translation(a) -> None:
    from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation

    prepare_translation(a.out, _build(PrepareTranslationSpec, a), local_dir=a.local_dir)


def exits_when_preempted(command):
    """Training commands: a SIGTERM/SIGUSR1/SIGINT saves a checkpoint, then the job exits 128 +
    signal (non-zero, so Slurm and Snakemake see a failure; the rerun resumes from the checkpoint).
    A rerun while processes of the job still run fails at once: they hold its checkpoint folder
    (kdsweep.core.trainer.lock_checkpoint_dir)."""

    def run(a) -> None:
        from kdsweep.cluster.launch import report_stop
        from kdsweep.core.trainer import Preempted

        try:
            command(a)
        except Preempted as stop:
            logging.getLogger("kdsweep").error("%s", stop)
            report_stop(stop.signum)
            sys.exit(128 + stop.signum)

    run.__doc__ = command.__doc__
    return run


@exits_when_preempted
def cmd_finetune_teacher(a) -> None:
    from kdsweep.glue.teacher import GlueTeacherSpec, finetune_teacher

    spec = _build(GlueTeacherSpec, a)
    finetune_teacher(a.task, a.tokenizer, a.data_dir, a.model_out, a.log_out, a.checkpoints, spec, _tracking(a))


def cmd_cache_teacher(a) -> None:
    from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits

    spec = _build(GlueCacheSpec, a)
    cache_teacher_logits(a.task, a.teacher, a.tokenizer, a.data_dir, a.store, a.out, spec)


@exits_when_preempted
def cmd_distill(a) -> None:
    from kdsweep.glue.distill import GlueDistillSpec, distill_student

    spec = _build(GlueDistillSpec, a)
    paths = (a.teacher, a.teacher_tokenizer, a.student_tokenizer, a.data_dir, a.cache, a.model_out, a.log_out)
    distill_student(a.task, *paths, a.checkpoints, spec, a.deepspeed, _tracking(a))


@exits_when_preempted
def cmd_train_teacher_lm(a) -> None:
    from kdsweep.translation.teacher import TeacherLMSpec, train_teacher_lm

    spec = _build(TeacherLMSpec, a)
    train_teacher_lm(a.tokenizer, a.data_dir, a.model_out, a.log_out, a.checkpoints, spec, _tracking(a))


def cmd_cache_teacher_lm(a) -> None:
    from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_lm

    cache_teacher_lm(a.teacher, a.tokenizer, a.data_dir, a.store, a.out, _build(CacheTeacherLMSpec, a))


def cmd_init_student_lm(a) -> None:
    from kdsweep.translation.distill import InitStudentLMSpec, init_student_lm

    init_student_lm(a.teacher, a.tokenizer, a.out, _build(InitStudentLMSpec, a))


@exits_when_preempted
def cmd_distill_lm(a) -> None:
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    spec = _build(DistillLMSpec, a)
    paths = (a.student, a.teacher_tokenizer, a.data_dir, a.cache, a.model_out, a.log_out, a.checkpoints)
    distill_student_lm(*paths, spec, a.deepspeed, _tracking(a))


def cmd_evaluate_translation(a) -> None:
    from kdsweep.translation.evaluate import EvaluateTranslationSpec, evaluate_translation

    spec = _build(EvaluateTranslationSpec, a)
    evaluate_translation(a.model, a.data_dir, a.out, a.translations, a.name, spec)


def cmd_score_comet(a) -> None:
    """COMET of one model's translations (runs in COMET's own environment: kdsweep is on PYTHONPATH)."""
    from kdsweep.translation.comet_score import ScoreCometSpec, score_comet

    score_comet(a.translations, a.out, _build(ScoreCometSpec, a))


def cmd_evaluate(a) -> None:
    from kdsweep.glue.evaluate import GlueEvaluateSpec, evaluate_classifier

    evaluate_classifier(a.task, a.model, a.data_dir, a.out, a.name, _build(GlueEvaluateSpec, a))


def cmd_report(a) -> None:
    from kdsweep.core.paths import RunPaths
    from kdsweep.families import write_report

    write_report(RunPaths(a.root), a.spec)


def cmd_prefetch(a) -> None:
    """Download the hub assets in --spec ({"assets": [Asset fields]}) and write the manifest."""
    from kdsweep.core.hub import Asset, prefetch

    prefetch([Asset(**asset) for asset in a.spec["assets"]], a.out)


COMMANDS = {
    "prefetch": (cmd_prefetch, ["out"]),
    "synthesize-glue": (cmd_synthesize_glue, ["task", "out"]),
    "prepare-glue": (cmd_prepare_glue, ["task", "out", "tsv_dir?"]),
    "train-tokenizer": (cmd_train_tokenizer, ["train", "out"]),
    "finetune-teacher": (
        cmd_finetune_teacher,
        ["task", "tokenizer", "data_dir", "model_out", "log_out", "checkpoints"],
    ),
    "cache-teacher": (cmd_cache_teacher, ["task", "teacher", "tokenizer", "data_dir", "store", "out"]),
    "distill": (
        cmd_distill,
        [
            "task",
            "teacher",
            "teacher_tokenizer",
            "student_tokenizer",
            "data_dir",
            "cache",
            "model_out",
            "log_out",
            "checkpoints",
            "deepspeed?",
        ],
    ),
    "evaluate": (cmd_evaluate, ["task", "model", "data_dir", "out", "name"]),
    "synthesize-europarl": (cmd_synthesize_europarl, ["out"]),
    "prepare-translation": (cmd_prepare_translation, ["out", "local_dir?"]),
    "train-teacher-lm": (cmd_train_teacher_lm, ["tokenizer", "data_dir", "model_out", "log_out", "checkpoints"]),
    "cache-teacher-lm": (cmd_cache_teacher_lm, ["teacher", "tokenizer", "data_dir", "store", "out"]),
    "init-student-lm": (cmd_init_student_lm, ["teacher", "tokenizer", "out"]),
    "distill-lm": (
        cmd_distill_lm,
        ["student", "teacher_tokenizer", "data_dir", "cache", "model_out", "log_out", "checkpoints", "deepspeed?"],
    ),
    "evaluate-translation": (cmd_evaluate_translation, ["model", "data_dir", "out", "translations", "name"]),
    "score-comet": (cmd_score_comet, ["translations", "out"]),
    "report": (cmd_report, ["root"]),
}


# The commands that train (DistillTrainer): they take --tracking-dir/-backend/-project.
TRAINING_COMMANDS = ("finetune-teacher", "distill", "train-teacher-lm", "distill-lm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdsweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, args) in COMMANDS.items():
        p = sub.add_parser(name, help=func.__doc__ or name)
        for arg in args:
            optional = arg.endswith("?")
            arg = arg.rstrip("?")
            p.add_argument("--" + arg.replace("_", "-"), dest=arg, required=not optional)
        if name in TRAINING_COMMANDS:
            p.add_argument(
                "--tracking-dir", dest="tracking_dir", help="the job's tracking logs (RunPaths.tracking_dir)"
            )
            p.add_argument(
                "--tracking-backend",
                dest="tracking_backend",
                choices=["tensorboard", "wandb", "mlflow", "none"],
                default="tensorboard",
                help="config tracking.backend",
            )
            p.add_argument(
                "--tracking-project", dest="tracking_project", default="kdsweep", help="config tracking.project"
            )
        p.add_argument("--spec", type=_spec, default={}, help="job settings as a JSON object")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    _threads()
    logging.getLogger("kdsweep").info("kdsweep %s %s", args.command, json.dumps(args.spec, sort_keys=True))
    args.func(args)


if __name__ == "__main__":
    main()
