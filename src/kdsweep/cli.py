"""`python -m kdsweep <stage> ...`: the entry points the Snakemake rules call.

Paths come from the rule's input/output; settings come as one JSON object (--spec) holding only
what the job depends on, so Snakemake reruns a job exactly when its settings change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _spec(text: str) -> dict:
    return json.loads(text)


def _threads() -> None:
    n = os.environ.get("KDSWEEP_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def cmd_synthesize_glue(a) -> None:
    from kdsweep.glue.synthetic import write_synthetic_glue

    s = a.spec
    write_synthetic_glue(
        a.task, a.out, train_size=s["train_size"], dev_size=s["dev_size"], label_noise=s["label_noise"], seed=s["seed"]
    )


def cmd_prepare_glue(a) -> None:
    from kdsweep.glue.data import prepare_glue

    s = a.spec
    prepare_glue(
        a.task,
        s["source"],
        a.out,
        tsv_dir=a.tsv_dir,
        hub_dataset=s["hub_dataset"],
        max_train_examples=s["max_train_examples"],
        subset_seed=s["subset_seed"],
    )


def cmd_train_tokenizer(a) -> None:
    """WordPiece on GLUE's text pairs; with spec kind "bpe", byte-level BPE on translation pairs."""
    from kdsweep.core.io import read_jsonl
    from kdsweep.core.models import train_bpe_tokenizer, train_wordpiece_tokenizer

    rows = read_jsonl(a.train)
    if a.spec.get("kind") == "bpe":
        train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], a.out, a.spec["vocab_size"])
    else:
        texts = [r["text_a"] for r in rows] + [r["text_b"] for r in rows]
        train_wordpiece_tokenizer(texts, a.out, a.spec["vocab_size"])


def cmd_synthesize_europarl(a) -> None:
    from kdsweep.translation.synthetic import write_synthetic_europarl

    s = a.spec
    write_synthetic_europarl(a.out, size=s["size"], seed=s["seed"], stem=s["file_stem"])


def cmd_prepare_translation(a) -> None:
    from kdsweep.translation.data import prepare_translation

    s = a.spec
    prepare_translation(
        s["source"],
        a.out,
        local_dir=a.local_dir,
        stem=s["file_stem"],
        hub_dataset=s["hub_dataset"],
        hub_config=s["hub_config"],
        source_lang=s["source_lang"],
        target_lang=s["target_lang"],
        train_size=s["train_size"],
        dev_size=s["dev_size"],
        test_size=s["test_size"],
        seed=s["subset_seed"],
        max_source_words=s["max_source_words"],
        overlong=s["overlong"],
        max_length_ratio=s["max_length_ratio"],
    )


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
    from kdsweep.glue.teacher import finetune_teacher

    s = a.spec
    finetune_teacher(
        a.task,
        s["model"],
        a.tokenizer,
        a.data_dir,
        s["finetune"],
        s["max_length"],
        a.model_out,
        a.log_out,
        a.checkpoints,
        s["eval_batch_size"],
    )


def cmd_cache_teacher(a) -> None:
    from kdsweep.glue.teacher import cache_teacher_logits

    s = a.spec
    cache_teacher_logits(a.task, a.teacher, a.tokenizer, a.data_dir, s["max_length"], a.store, a.out, s["batch_size"])


@exits_when_preempted
def cmd_distill(a) -> None:
    from kdsweep.glue.distill import distill_student

    distill_student(
        a.task,
        a.spec["point"],
        a.spec,
        a.teacher,
        a.teacher_tokenizer,
        a.student_tokenizer,
        a.data_dir,
        a.cache,
        a.model_out,
        a.log_out,
        a.checkpoints,
        a.deepspeed,
    )


@exits_when_preempted
def cmd_train_teacher_lm(a) -> None:
    from kdsweep.translation.teacher import train_teacher_lm

    s = a.spec
    train_teacher_lm(
        s["model"],
        a.tokenizer,
        a.data_dir,
        s["prompt"],
        s["finetune"],
        s["max_length"],
        a.model_out,
        a.log_out,
        a.checkpoints,
        s["eval_batch_size"],
        s["chunk_size"],
        s["packing"],
    )


def cmd_cache_teacher_lm(a) -> None:
    from kdsweep.translation.teacher import cache_teacher_topk

    s = a.spec
    cache_teacher_topk(
        a.teacher, a.tokenizer, a.data_dir, s["prompt"], s["cache"], s["max_length"], a.store, a.out, s["packing"]
    )


def cmd_init_student_lm(a) -> None:
    from kdsweep.translation.distill import init_student_lm

    init_student_lm(a.spec["student"], a.teacher, a.tokenizer, a.out, a.spec["seed"])


@exits_when_preempted
def cmd_distill_lm(a) -> None:
    from kdsweep.translation.distill import distill_student_lm

    distill_student_lm(
        a.spec["point"],
        a.spec,
        a.student,
        a.teacher_tokenizer,
        a.data_dir,
        a.cache,
        a.model_out,
        a.log_out,
        a.checkpoints,
        a.deepspeed,
    )


def cmd_evaluate_translation(a) -> None:
    from kdsweep.translation.evaluate import evaluate_translation

    s = a.spec
    evaluate_translation(
        a.model,
        a.data_dir,
        s["prompt"],
        s["evaluate"],
        a.out,
        a.translations,
        a.name,
        s.get("params"),
        max_length=s["max_length"],
    )


def cmd_evaluate(a) -> None:
    from kdsweep.glue.evaluate import evaluate_classifier

    s = a.spec
    evaluate_classifier(a.task, a.model, a.data_dir, s["max_length"], a.out, a.name, s.get("params"), s["batch_size"])


def cmd_report(a) -> None:
    from kdsweep.core.paths import RunPaths
    from kdsweep.core.report import write_report

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
    "report": (cmd_report, ["root"]),
}


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
