"""Every path the workflow reads or writes, built in one place.

The Snakefile builds rule inputs/outputs from these methods with wildcard strings
("{task}", "{point}") and the stage modules and tests call them with real values, so a
layout change is made here once. Layout under results/<run_name>/:

    assets.json                    hub assets prefetched for offline nodes, with their revisions
    raw/glue/<task>/*.tsv          synthetic data in GLUE's original TSV layout (demo only)
    raw/europarl/<task>/           synthetic data in Europarl's line-aligned layout (demo only)
    data/<task>/<split>.jsonl      normalized splits, data/<task>/manifest.json
    tokenizer/<task>/              tokenizer trained locally (models built from a config)
    teacher/<task>/model/          fine-tuned teacher
    cache/<task>.json              teacher-cache pointer (key + location in cache/store/)
    cache/store/<key>/             content-addressed teacher outputs, survive reruns
    student_init/<task>/           the base student LM kdsweep builds (from teacher layers or a config)
    distill/<task>/<point>/        model/, log.jsonl; checkpoints/ (not an output: survives failures)
    tracking/<task>/<name>/        one training job's TensorBoard (wandb, MLflow) logs; name: a sweep
                                   point or "teacher" (not an output: survives failures)
    eval/<task>/<name>.json        metrics of one model (a sweep point, "teacher", "base")
    eval/<task>/<name>.translations.jsonl   its translations (translation family)
    eval/<task>/<name>.comet.json  their COMET scores, system and per segment (score_comet)
    report/                        tables (csv, md, tex, html), plots, samples; report.md links them
    logs/<rule>/..., benchmarks/<rule>/...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: str  # results/<run_name>

    def _p(self, *parts: str) -> str:
        return str(Path(self.root, *parts))

    # hub assets prefetched for offline compute nodes
    def assets_manifest(self) -> str:
        return self._p("assets.json")

    # data
    def raw_glue_dir(self, task: str) -> str:
        return self._p("raw", "glue", task)

    def raw_europarl_dir(self, task: str) -> str:
        return self._p("raw", "europarl", task)

    def data_dir(self, task: str) -> str:
        return self._p("data", task)

    def data_split(self, task: str, split: str) -> str:
        return self._p("data", task, f"{split}.jsonl")

    def data_manifest(self, task: str) -> str:
        return self._p("data", task, "manifest.json")

    def tokenizer_dir(self, task: str) -> str:
        return self._p("tokenizer", task)

    # teacher
    def teacher_model(self, task: str) -> str:
        return self._p("teacher", task, "model")

    def teacher_checkpoints(self, task: str) -> str:
        return self._p("teacher", task, "checkpoints")

    def teacher_log(self, task: str) -> str:
        return self._p("teacher", task, "log.jsonl")

    def cache_pointer(self, task: str) -> str:
        return self._p("cache", f"{task}.json")

    def cache_store(self) -> str:
        return self._p("cache", "store")

    # student
    def student_init(self, task: str) -> str:
        return self._p("student_init", task)

    def distill_dir(self, task: str, point: str) -> str:
        return self._p("distill", task, point)

    def distill_model(self, task: str, point: str) -> str:
        return self._p("distill", task, point, "model")

    def distill_log(self, task: str, point: str) -> str:
        return self._p("distill", task, point, "log.jsonl")

    def distill_checkpoints(self, task: str, point: str) -> str:
        return self._p("distill", task, point, "checkpoints")

    def tracking_dir(self, task: str, name: str) -> str:
        """One training job's tracking logs (kdsweep.core.tracking); name: the sweep point or "teacher"."""
        return self._p("tracking", task, name)

    # evaluation and report
    def eval_json(self, task: str, name: str) -> str:
        return self._p("eval", task, f"{name}.json")

    def eval_translations(self, task: str, name: str) -> str:
        return self._p("eval", task, f"{name}.translations.jsonl")

    def eval_comet(self, task: str, name: str) -> str:
        return self._p("eval", task, f"{name}.comet.json")

    def report_samples(self, task: str) -> str:
        return self._p("report", f"{task}_samples.md")

    def report_dir(self) -> str:
        return self._p("report")

    def report_table(self, task: str, axis: str, ext: str) -> str:
        return self._p("report", f"{task}_by_{axis}.{ext}")

    def report_file(self, name: str, ext: str) -> str:
        """report/<name>.<ext>: experiment tables (<task>_alpha), <task>_vs_study, runtime."""
        return self._p("report", f"{name}.{ext}")

    def report_plot(self, task: str) -> str:
        return self._p("report", f"{task}_loss.png")

    def report_md(self) -> str:
        return self._p("report.md")

    def log(self, rule: str, *wildcards: str) -> str:
        """logs/<rule>/<w1>/.../<wn>.log, or logs/<rule>.log for a rule without wildcards."""
        return self._p("logs", *self._nested(rule, wildcards, ".log"))

    def benchmark(self, rule: str, *wildcards: str) -> str:
        return self._p("benchmarks", *self._nested(rule, wildcards, ".tsv"))

    @staticmethod
    def _nested(rule: str, wildcards: tuple[str, ...], suffix: str) -> list[str]:
        if not wildcards:
            return [rule + suffix]
        return [rule, *wildcards[:-1], wildcards[-1] + suffix]
