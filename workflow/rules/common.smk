# Helpers shared by the rules: paths (kdflow.paths, built in one place), sweep expansion and
# the per-job settings passed to the kdflow CLI as JSON.
import json
import os
import re

from kdflow import plan
from kdflow.cluster import apply_profile_defaults, outlive_slurm_signals
from kdflow.config import run_root, sweep_points, swept_axes
from kdflow.paths import RunPaths
from kdflow.prepare_glue import GLUE_TASKS

apply_profile_defaults()  # variables of profiles/slurm: exported values win
outlive_slurm_signals()  # in a Slurm job: let training save its checkpoint on USR1/TERM
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


def deepspeed_config_input(wildcards):
    """The DeepSpeed JSON for distillation: the config's own file or workflow/deepspeed/<stage>.json."""
    dist = config["distill"]["distributed"]
    if dist["deepspeed_config"]:
        return [dist["deepspeed_config"]]
    if dist["deepspeed"] == "none":
        return []
    return [workflow.source_path(f"../deepspeed/{dist['deepspeed']}.json")]


def report_outputs():
    return [P.report_md()]
