# The rules' helpers (Snakemake's layout: functions here, rules in the other files): paths
# (kdsweep.core.paths, built in one place), the hub assets, the settings each job gets as JSON,
# how jobs start, then each family's input functions (COMET's interpreter, checked here) and the
# report's spec, inputs and outputs.
# A family's rules are in glue.smk / translation.smk, included by the Snakefile only when the
# config has the family's block. Including these files starts nothing and asks nothing of Slurm
# (it sets the jobs' shell prefix and, for prefetch_assets, the hub's offline variables).
import json
import os
import re
import shlex
import sys
from dataclasses import asdict

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from kdsweep.core import plan
from kdsweep.core.config import (
    distill_points,
    experiment_base,
    experiment_tables,
    run_root,
    seeded_runs,
    sweep_points,
    sweep_seeds,
    swept_axes,
    translation_task,
)
from kdsweep.core.hub import config_assets, hub_environment
from kdsweep.core.paths import RunPaths
from kdsweep.families import report_outputs
from kdsweep.glue.data import GLUE_TASKS, tsv_dir

P = RunPaths(run_root(config))
GLUE = config.get("glue")  # each family's settings, or None
TASKS = GLUE["tasks"] if GLUE else []
SWEEP = sweep_points(GLUE["distill"]) if GLUE else {}  # the study's table
EXPERIMENTS = experiment_tables(GLUE["distill"]) if GLUE else {}  # extra tables
POINTS = distill_points(GLUE["distill"]) if GLUE else {}  # every distillation job
TR = config.get("translation")
TR_TASK = translation_task(config) if TR else None
TR_SWEEP = sweep_points(TR["distill"]) if TR else {}  # the study's table
TR_EXPERIMENTS = experiment_tables(TR["distill"]) if TR else {}  # extra tables
TR_POINTS = distill_points(TR["distill"]) if TR else {}  # every distillation job
COMET = TR["evaluate"]["comet"] if TR else {"enabled": False}
# the package's folder, for the jobs whose environment does not install it (COMET's, conda's)
SRC = os.path.join(workflow.basedir, "src")
CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# Jobs run the interpreter that runs Snakemake: its folder goes first on the jobs' PATH, so
# `python` is the venv's even when the user called .venv/bin/snakemake without activating it.
# With --sdm conda or apptainer, the python of the rule's environment or container; the conda
# environments (envs/*.yaml) do not install kdsweep (conda would resolve `-e ..` against the copy
# of the file Snakemake makes under .snakemake/conda/), so the jobs find it on PYTHONPATH.
if CONDA:
    shell.prefix(
        # braces doubled twice: once for this f-string, once for Snakemake's formatting of the prefix
        f'set -euo pipefail; export PYTHONPATH={shlex.quote(SRC)}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
    )
elif DeploymentMethod.APPTAINER not in workflow.deployment_settings.deployment_method:
    shell.prefix(
        f'set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; '
    )

# Hub assets: prefetch_assets (a local rule, run where Snakemake runs, e.g. a login node with
# internet) fetches them into the Hugging Face cache; the compute jobs inherit this environment.
ASSETS = config_assets(config)
PREFETCH_ONLINE = hub_environment(config, ASSETS, workflow.configfiles)


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def assets_input():
    """The prefetch manifest, for the rules that start a family's DAG (so no job runs before the
    assets are there); ancient: a new prefetch does not rerun what is done."""
    return [ancient(P.assets_manifest())] if ASSETS else []


def prefetch_env():
    """prefetch_assets goes online unless the user started Snakemake with HF_HUB_OFFLINE=1."""
    if not PREFETCH_ONLINE:
        return []
    return [
        "env",
        "HF_HUB_OFFLINE=0",
        "HF_DATASETS_OFFLINE=0",
        "TRANSFORMERS_OFFLINE=0",
    ]


def prefetch_spec():
    return as_json({"assets": [asdict(a) for a in ASSETS]})


# Arguments built here are lists: a rule's shell line quotes each word ({params.x:q}), so no
# config value (a path with spaces, quotes or $(...)) is ever read by the shell.


def tokenizer_inputs(block, task):
    """The locally trained tokenizer, when a model built from a config needs one."""
    return [P.tokenizer_dir(task)] if plan.trains_tokenizer(block, task, P) else []


def teacher_model_input(block, task):
    """kdsweep's trained teacher (a file dependency); a named model is not a file input."""
    return [P.teacher_model(task)] if plan.teacher_is_finetuned_here(block) else []


def deepspeed_config_input(dist):
    """The DeepSpeed JSON of a `distributed` block: its own file or workflow/deepspeed/<stage>.json."""
    if dist["deepspeed_config"]:
        return [dist["deepspeed_config"]]
    if dist["deepspeed"] == "none":
        return []
    return [workflow.source_path(f"../deepspeed/{dist['deepspeed']}.json")]


def deepspeed_arg(input):
    # none with deepspeed: none
    return ["--deepspeed", *input.deepspeed] if input.deepspeed else []


def tracking_args(directory):
    """A training job's --tracking-* arguments: its folder (P.tracking_dir) and config `tracking`.
    Not in --spec (another backend must not restart the job), not a Snakemake output (the folder
    survives a failed job, whose rerun appends to it); called from a params function taking
    `output`, which Snakemake leaves out of its params rerun trigger (derived params).
    """
    tracking = config["tracking"]
    return [
        "--tracking-dir",
        directory,
        "--tracking-backend",
        tracking["backend"],
        "--tracking-project",
        tracking["project"],
    ]


def launch(dist):
    """How a distillation job starts: one process per GPU the job holds (kdsweep/cluster/launch.py)."""
    return [
        "python",
        "-m",
        "kdsweep.cluster.launch",
        "--cpu-processes",
        dist["cpu_processes"],
        "--",
    ]


# GLUE (glue.smk)


def glue_tsv_input(wildcards):
    """The synthetic TSV folder (made by a rule) or a local GLUE folder's files."""
    source = GLUE["source"]
    if source == "synthetic":
        return [P.raw_glue_dir(wildcards.task)]
    if source == "local":
        folder = tsv_dir(GLUE, wildcards.task, P)
        return [f"{folder}/{split}.tsv" for split in GLUE_TASKS[wildcards.task].splits]
    return []


def glue_tsv_arg(wildcards):
    folder = tsv_dir(GLUE, wildcards.task, P)
    return ["--tsv-dir", folder] if folder else []


# Translation (translation.smk)


def translation_local_dir():
    """Where prepare_translation reads Europarl files: kdsweep's synthetic output, a local folder, or none (hub)."""
    source = TR["source"]
    if source == "synthetic":
        return P.raw_europarl_dir(TR_TASK)
    return TR["local_dir"] if source == "local" else None


def translation_inputs():
    """The Europarl-layout files prepare_translation reads (the synthetic folder is a rule's output)."""
    if TR["source"] == "synthetic":
        return [P.raw_europarl_dir(TR_TASK)]
    if TR["source"] == "local":
        stem = f"{TR['local_dir']}/{TR['file_stem']}"
        return [f"{stem}.{TR['source_lang']}", f"{stem}.{TR['target_lang']}"]
    return []


def translation_model(name):
    """The model evaluated as `name`: the base student, the teacher, or a sweep point's student."""
    if name == "base":
        return plan.base_student(TR, TR_TASK, P)
    if name == "teacher":
        return plan.teacher_model(TR, TR_TASK, P)
    return P.distill_model(TR_TASK, name)


def comet_python():
    """The interpreter score_comet runs: under --sdm conda, the python of envs/comet.yaml; else
    translation.evaluate.comet.python, by default .venv-comet/bin/python in the repository (built by
    scripts/setup-venv.sh). COMET has its own environment: unbabel-comet caps numpy < 2,
    transformers < 5 and huggingface-hub < 1, which the main one is past."""
    if CONDA:
        return "python"
    default = os.path.join(workflow.basedir, ".venv-comet", "bin", "python")
    return os.path.abspath(
        os.path.expandvars(os.path.expanduser(COMET.get("python") or default))
    )


def check_comet_python():
    """Before any job: with COMET on, outside conda, the COMET interpreter must exist."""
    python = comet_python()
    if CONDA or (os.path.isfile(python) and os.access(python, os.X_OK)):
        return python
    raise WorkflowError(
        f"translation.evaluate.comet.python: {python} is not an executable Python interpreter, and "
        "COMET (translation.evaluate.comet.enabled) runs in its own environment. Build it with "
        "`make venv` (scripts/setup-venv.sh creates .venv-comet next to .venv), set "
        "translation.evaluate.comet.python to the python of an environment with requirements/comet.txt, "
        "run with --software-deployment-method conda (envs/comet.yaml), or turn COMET off "
        "(translation.evaluate.comet.enabled: false)."
    )


# Before any job: COMET's interpreter (a missing one fails here, naming the config key).
COMET_PYTHON = check_comet_python() if COMET["enabled"] else None


def translation_model_input(name):
    """File dependency of translation_model: none for a model named by the config (hub, local)."""
    if name == "base":
        built = not isinstance(TR["student"]["model"], str)
        return [P.student_init(TR_TASK)] if built else []
    if name == "teacher":
        return teacher_model_input(TR, TR_TASK)
    return [P.distill_model(TR_TASK, name)]


# Report (report.smk)


def reference_file():
    """The reference numbers file (report.reference), relative to the repository."""
    ref = config["report"]["reference"]
    return [os.path.join(workflow.basedir, ref)] if ref else []


def distill_settings(distill):
    """A family's `distill` block as its distillation jobs get it: without the sweep and the
    experiments (their point comes on its own) and without training.seed (the point's seed,
    sweep.seed or that one, is in the point): changing another point's settings reruns nothing.
    """
    out = {k: v for k, v in distill.items() if k not in ("sweep", "experiments")}
    return out | {
        "training": {k: v for k, v in distill["training"].items() if k != "seed"}
    }


def experiments_spec(distill, tables):
    """The experiment tables of a family for the report: {name: {"base": the point they vary,
    "rows": [[label, [run id per seed]], ...]}} (pairs: the spec's JSON sorts object keys).
    """
    seeds = sweep_seeds(distill)
    return {
        name: {
            "base": experiment_base(distill),
            "rows": [[label, list(seeded_runs(p, seeds))] for label, p in rows.items()],
        }
        for name, rows in tables.items()
    }


def report_spec():
    spec = {
        "title": f"kdsweep report: {config['run_name']}",
        "reference": (reference_file() or [None])[0],
    }
    if GLUE:
        spec["glue"] = {
            "tasks": TASKS,
            "points": SWEEP,
            "swept": swept_axes(GLUE["distill"]),
            "experiments": experiments_spec(GLUE["distill"], EXPERIMENTS),
            "runs": POINTS,  # every distillation run: the all-runs tables
        }
    if TR:
        spec["translation"] = {
            "task": TR_TASK,
            "points": TR_SWEEP,
            "experiments": experiments_spec(TR["distill"], TR_EXPERIMENTS),
            "runs": TR_POINTS,
            "swept": swept_axes(TR["distill"]),
            "samples": TR["evaluate"]["samples"],
            # whether COMET is on (and why not): the report reads score_comet's files or says so
            "comet": {k: v for k, v in COMET.items() if k != "python"},
        }
    return spec


def report_inputs():
    files = []
    if GLUE:
        files += expand(
            P.eval_json("{task}", "{name}"), task=TASKS, name=[*POINTS, "teacher"]
        )
        files += expand(P.distill_log("{task}", "{point}"), task=TASKS, point=SWEEP)
        files += expand(P.data_dir("{task}"), task=TASKS)
    if TR:
        names = ["base", "teacher", *TR_POINTS]
        files += [P.eval_json(TR_TASK, n) for n in names]
        files += [P.eval_translations(TR_TASK, n) for n in names]
        if COMET["enabled"]:
            files += [P.eval_comet(TR_TASK, n) for n in names]
        files += [P.distill_log(TR_TASK, p) for p in TR_SWEEP]
        files += [P.data_dir(TR_TASK), P.cache_pointer(TR_TASK)]
    return files + reference_file()


REPORT = report_outputs(P, report_spec())  # what the report job writes, as kdsweep says
