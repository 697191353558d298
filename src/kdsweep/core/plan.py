"""Decisions the workflow takes from the config, shared by the Snakefile and the stage CLI:
which teacher and tokenizer each job uses, and whether a tokenizer must be trained locally.

`block` is a family's settings holding `teacher` and `student` (config["glue"],
config["translation"]); both families decide the same way."""

from __future__ import annotations

from kdsweep.core.models import model_name
from kdsweep.core.paths import RunPaths


def teacher_is_finetuned_here(block: dict) -> bool:
    return block["teacher"]["finetune"]["enabled"]


def teacher_model(block: dict, task: str, paths: RunPaths) -> str:
    """The fine-tuned teacher: kdsweep's own output, or the model the config names."""
    if teacher_is_finetuned_here(block):
        return paths.teacher_model(task)
    return model_name(block["teacher"]["model"], task)


def _built_from_config(model) -> bool:
    return isinstance(model, dict) and "family" in model


def teacher_tokenizer(block: dict, task: str, paths: RunPaths) -> str:
    teacher = block["teacher"]
    if teacher["tokenizer"]:
        return model_name(teacher["tokenizer"], task)
    if _built_from_config(teacher["model"]):
        return paths.tokenizer_dir(task)
    return model_name(teacher["model"], task)


def student_tokenizer(block: dict, task: str, paths: RunPaths) -> str:
    student = block["student"]
    if student["tokenizer"]:
        return model_name(student["tokenizer"], task)
    if isinstance(student["model"], str):
        return model_name(student["model"], task)
    if "from_teacher" in student["model"]:
        return teacher_tokenizer(block, task, paths)
    return paths.tokenizer_dir(task)


def trains_tokenizer(block: dict, task: str, paths: RunPaths) -> bool:
    return paths.tokenizer_dir(task) in (teacher_tokenizer(block, task, paths), student_tokenizer(block, task, paths))


def base_student(block: dict, task: str, paths: RunPaths) -> str:
    """The student before distillation (translation): a named model, or the one kdsweep builds."""
    model = block["student"]["model"]
    return model_name(model, task) if isinstance(model, str) else paths.student_init(task)
