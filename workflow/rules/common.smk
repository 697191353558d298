# Helpers shared by the rules: paths (kdflow.paths, built in one place), sweep expansion and
# the per-job settings passed to the kdflow CLI as JSON. A config runs the GLUE family (glue:)
# and/or the translation family (translation:); each family's rules exist only when configured.
import json
import os
import re

from kdflow import plan
from kdflow.cluster import apply_profile_defaults, outlive_slurm_signals
from kdflow.config import run_root, sweep_points, swept_axes, translation_task
from kdflow.paths import RunPaths
from kdflow.prepare_glue import GLUE_TASKS

apply_profile_defaults()  # variables of profiles/slurm: exported values win
outlive_slurm_signals()  # in a Slurm job: let training save its checkpoint on USR1/TERM
P = RunPaths(run_root(config))
GLUE = "glue" in config
TASKS = config["glue"]["tasks"] if GLUE else []
POINTS = sweep_points(config["distill"]) if GLUE else {}
TR = config.get("translation")  # the translation family's settings, or None
TR_TASK = translation_task(config) if TR else None
TR_POINTS = sweep_points(TR["distill"]) if TR else {}


wildcard_constraints:
    task="|".join(TASKS) or "(?!)",
    point="|".join(re.escape(p) for p in {**POINTS, **TR_POINTS}) or "(?!)",


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


def tokenizer_inputs(block, task):
    """The locally trained tokenizer, when a model built from a config needs one."""
    return [P.tokenizer_dir(task)] if plan.trains_tokenizer(block, task, P) else []


def teacher_model_input(block, task):
    """kdflow's trained teacher (a file dependency); a named model is not a file input."""
    return [P.teacher_model(task)] if plan.teacher_is_finetuned_here(block) else []


def deepspeed_config_input(dist):
    """The DeepSpeed JSON of a `distributed` block: its own file or workflow/deepspeed/<stage>.json."""
    if dist["deepspeed_config"]:
        return [dist["deepspeed_config"]]
    if dist["deepspeed"] == "none":
        return []
    return [workflow.source_path(f"../deepspeed/{dist['deepspeed']}.json")]


def deepspeed_arg(input):
    return f"--deepspeed {input.deepspeed}" if input.deepspeed else ""


def launch(dist):
    """How a distillation job starts: one process per GPU the job holds (kdflow/launch.py)."""
    return f"python -m kdflow.launch --cpu-processes {dist['cpu_processes']} --"


def translation_local_dir():
    """Where prepare_translation reads Europarl files: kdflow's synthetic output, a local folder, or none (hub)."""
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


def report_spec():
    spec = {"title": f"kdflow report: {config['run_name']}"}
    if GLUE:
        spec["glue"] = {
            "tasks": TASKS,
            "points": POINTS,
            "swept": swept_axes(config["distill"]),
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
        files += expand(P.distill_log("{task}", "{point}"), task=TASKS, point=POINTS)
        files += expand(P.data_dir("{task}"), task=TASKS)
    if TR:
        names = ["base", "teacher", *TR_POINTS]
        files += [P.eval_json(TR_TASK, n) for n in names]
        files += [P.eval_translations(TR_TASK, n) for n in names]
        files += [P.distill_log(TR_TASK, p) for p in TR_POINTS]
        files += [P.data_dir(TR_TASK), P.cache_pointer(TR_TASK)]
    return files


def report_files():
    files = []
    if GLUE:
        files += expand(
            P.report_table("{task}", "{axis}", "{ext}"),
            task=TASKS,
            axis=swept_axes(config["distill"]),
            ext=("csv", "md", "tex"),
        )
        files += expand(P.report_plot("{task}"), task=TASKS)
    if TR:
        files += expand(
            P.report_table(TR_TASK, "learning_rate", "{ext}"), ext=("csv", "md", "tex")
        )
        files += [P.report_plot(TR_TASK), P.report_samples(TR_TASK)]
    return files


def report_outputs():
    return [P.report_md()]
