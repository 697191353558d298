# Helpers shared by the rules: paths (kdsweep.core.paths, built in one place), sweep expansion and
# the per-job settings passed to the kdsweep CLI as JSON. A config runs the GLUE family (glue:)
# and/or the translation family (translation:); each family's rules exist only when configured.
import json
import os
import re
from dataclasses import asdict

from kdsweep.core import plan
from kdsweep.core.hub import config_assets, hub_environment
from kdsweep.cluster.slurm import apply_profile_defaults, outlive_slurm_signals
from kdsweep.core.config import (
    distill_points,
    experiment_base,
    experiment_tables,
    point_id,
    run_root,
    sweep_points,
    swept_axes,
    translation_task,
)
from kdsweep.core.paths import RunPaths
from kdsweep.glue.data import GLUE_TASKS

apply_profile_defaults()  # variables of profiles/slurm: exported values win
outlive_slurm_signals()  # in a Slurm job: let training save its checkpoint on USR1/TERM
P = RunPaths(run_root(config))
GLUE = "glue" in config
TASKS = config["glue"]["tasks"] if GLUE else []
SWEEP = sweep_points(config["distill"]) if GLUE else {}  # the study's table
EXPERIMENTS = experiment_tables(config["distill"]) if GLUE else {}  # extra tables
POINTS = distill_points(config["distill"]) if GLUE else {}  # every distillation job
TR = config.get("translation")  # the translation family's settings, or None
TR_TASK = translation_task(config) if TR else None
TR_POINTS = sweep_points(TR["distill"]) if TR else {}

# Hub assets: prefetch_assets (a local rule, run where Snakemake runs, e.g. a login node with
# internet) fetches them into the Hugging Face cache; the compute jobs inherit this environment.
ASSETS = config_assets(config)
PREFETCH_ONLINE = hub_environment(config, ASSETS, workflow.configfiles)


wildcard_constraints:
    task="|".join(TASKS) or "(?!)",
    point="|".join(re.escape(p) for p in {**POINTS, **TR_POINTS}) or "(?!)",


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


def glue_tsv_input(wildcards):
    """The synthetic TSV folder (made by a rule) or a local GLUE folder's files."""
    source = config["glue"]["source"]
    if source == "synthetic":
        return [P.raw_glue_dir(wildcards.task)]
    if source == "local":
        tsv_dir = plan.glue_tsv_dir(config, wildcards.task, P)
        return [f"{tsv_dir}/{split}.tsv" for split in GLUE_TASKS[wildcards.task].splits]
    return []


# Arguments built here are lists: a rule's shell line quotes each word ({params.x:q}), so no
# config value (a path with spaces, quotes or $(...)) is ever read by the shell.


def glue_tsv_arg(wildcards):
    tsv_dir = plan.glue_tsv_dir(config, wildcards.task, P)
    return ["--tsv-dir", tsv_dir] if tsv_dir else []


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


def translation_model_input(name):
    """File dependency of translation_model: none for a model named by the config (hub, local)."""
    if name == "base":
        built = not isinstance(TR["student"]["model"], str)
        return [P.student_init(TR_TASK)] if built else []
    if name == "teacher":
        return teacher_model_input(TR, TR_TASK)
    return [P.distill_model(TR_TASK, name)]


def reference_file():
    """The reference numbers file (report.reference), relative to the repository."""
    ref = config["report"]["reference"]
    return [os.path.join(workflow.basedir, ref)] if ref else []


def report_spec():
    spec = {
        "title": f"kdsweep report: {config['run_name']}",
        "reference": (reference_file() or [None])[0],
    }
    if GLUE:
        spec["glue"] = {
            "tasks": TASKS,
            "points": SWEEP,
            "swept": swept_axes(config["distill"]),
            "experiments": {
                name: {
                    "base": experiment_base(config["distill"]),
                    # [label, point id] pairs: the spec's JSON sorts object keys
                    "rows": [[label, point_id(p)] for label, p in rows.items()],
                }
                for name, rows in EXPERIMENTS.items()
            },
        }
    if TR:
        spec["translation"] = {
            "task": TR_TASK,
            "points": TR_POINTS,
            "swept": swept_axes(TR["distill"]),
            "samples": TR["evaluate"]["samples"],
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
        files += [P.distill_log(TR_TASK, p) for p in TR_POINTS]
        files += [P.data_dir(TR_TASK), P.cache_pointer(TR_TASK)]
    return files + reference_file()


TABLE_EXTS = ("csv", "md", "tex", "html")


def report_tables():
    """Every table file the report writes (each as csv, md, tex and html)."""
    stems = []
    if GLUE:
        for task in TASKS:
            stems += [
                P.report_table(task, axis, "{ext}")
                for axis in swept_axes(config["distill"])
            ]
            stems += [P.report_file(f"{task}_{name}", "{ext}") for name in EXPERIMENTS]
            if reference_file():
                stems.append(P.report_file(f"{task}_vs_study", "{ext}"))
    if TR:
        stems.append(P.report_table(TR_TASK, "learning_rate", "{ext}"))
        if reference_file():
            stems.append(P.report_file(f"{TR_TASK}_vs_study", "{ext}"))
    stems.append(P.report_file("runtime", "{ext}"))
    return [stem.format(ext=ext) for stem in stems for ext in TABLE_EXTS]


def report_plots():
    return [P.report_plot(t) for t in TASKS] + ([P.report_plot(TR_TASK)] if TR else [])


def report_samples():
    """Sample translations, Markdown and HTML."""
    if not TR:
        return []
    md = P.report_samples(TR_TASK)
    return [md, md.removesuffix(".md") + ".html"]


def report_outputs():
    """Everything the report writes (rule all asks for all of it, so a missing file reruns it)."""
    return [P.report_md(), *report_tables(), *report_plots(), *report_samples()]
