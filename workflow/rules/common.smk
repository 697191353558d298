# Helpers shared by the rules: paths (kdflow.paths, built in one place), sweep expansion and
# the per-job settings passed to the kdflow CLI as JSON.
import json
import os
import re

from kdflow import plan
from kdflow.config import run_root, sweep_points, swept_axes
from kdflow.paths import RunPaths
from kdflow.prepare_glue import GLUE_TASKS

P = RunPaths(run_root(config))
TASKS = config["glue"]["tasks"]
POINTS = sweep_points(config)


wildcard_constraints:
    task="|".join(TASKS),
    point="|".join(re.escape(p) for p in POINTS),


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def glue_tsv_input(wildcards):
    """The synthetic TSV folder (made by a rule) or a local GLUE folder's files."""
    source = config["glue"]["source"]
    if source == "synthetic":
        return [P.raw_glue_dir(wildcards.task)]
    if source == "local":
        tsv_dir = plan.glue_tsv_dir(config, wildcards.task, P)
        return [f"{tsv_dir}/{split}.tsv" for split in GLUE_TASKS[wildcards.task].splits]
    return []


def glue_tsv_arg(wildcards):
    tsv_dir = plan.glue_tsv_dir(config, wildcards.task, P)
    return f"--tsv-dir {tsv_dir}" if tsv_dir else ""


def tokenizer_inputs(wildcards):
    """The locally trained tokenizer, when a model built from a config needs one."""
    if plan.trains_tokenizer(config, wildcards.task, P):
        return [P.tokenizer_dir(wildcards.task)]
    return []


def teacher_model_input(wildcards):
    """kdflow's fine-tuned teacher (a file dependency); a named model is not a file input."""
    if plan.teacher_is_finetuned_here(config):
        return [P.teacher_model(wildcards.task)]
    return []


def report_outputs():
    return [P.report_md()]
