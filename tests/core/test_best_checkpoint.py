"""training.keep: best keeps the weights of the evaluation with the best dev metric (Hugging Face's
load_best_model_at_end), keep: last those of the last step; the model's kdsweep.json records the
kept step and its metric (provenance `kept`). The training here turns bad on purpose: it learns
the gold labels for 3 steps, then a wrong label, so the dev metric gets worse after step 3 and
the best step is not the last one. Expected steps and values are read back independently: from
log.jsonl, from copies of every checkpoint's weights taken while training, and (accuracy) from
the saved model's dev predictions scored by scikit-learn."""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import crash_after
from transformers import TrainerCallback

from kdsweep.core import provenance
from kdsweep.core.config import ConfigError
from kdsweep.core.io import read_json, read_jsonl
from kdsweep.core.models import load_tokenizer, student_from_teacher
from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments
from kdsweep.families import validate_config
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator, predict_logits
from kdsweep.glue.loss import ClassificationKD
from kdsweep.glue.metrics import training_metrics
from kdsweep.glue.models import load_classifier

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, TURN = 8, 3  # gold labels for steps 1-3, a wrong label from step 4 on


@dataclass
class TurnsWrong(ClassificationKD):
    """CE on the gold labels for the first `after` optimizer steps, then on (gold + 1) mod 3: the
    dev loss (dev = the training rows) falls, then rises."""

    after: int = TURN

    def __call__(self, trainer, model, inputs):
        if model.training and trainer.state.global_step >= self.after:
            inputs["labels"] = (inputs["labels"] + 1) % 3
        return super().__call__(trainer, model, inputs)


class CopyCheckpoints(TrainerCallback):
    """Copies each checkpoint's weights aside as it is saved (save_total_limit rotates them away)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            weights = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "model.safetensors"
            shutil.copy(weights, self.folder / f"{state.global_step}.safetensors")
        return control


def training_block(family: str = "glue", **over) -> dict:
    cfg = {
        "run_name": "t",
        family: {
            "source": "synthetic",
            "teacher": {"model": "x"},
            "student": {"model": "y"},
            "distill": {"sweep": {"learning_rate": [1e-3]}, "training": over},
        },
    }
    if family == "glue":
        cfg["glue"]["tasks"] = ["mnli"]
    return validate_config(cfg)[family]["distill"]["training"]


def turning_trainer(teacher_dir, data_dir, out: Path, deepspeed: str | None = None, **over) -> DistillTrainer:
    tok = load_tokenizer(str(teacher_dir))
    rows = read_jsonl(Path(data_dir) / "train.jsonl")[:16]
    cfg = training_block(
        **{
            "max_steps": MAX_STEPS,
            "batch_size": 8,
            "logging_steps": 1,
            "eval_steps": 1,
            "save_steps": 1,
            "save_total_limit": 2,
            "seed": 1,
            **over,
        }
    )
    args = training_arguments(cfg, 1e-2, out / "checkpoints", deepspeed_config=deepspeed)
    args.adam_beta1 = 0.0  # no momentum: the update turns with the labels at once
    student = student_from_teacher(load_classifier(str(teacher_dir), 3), [0, 1], seed=1)
    for module in student.modules():  # no dropout: evaluations are deterministic
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return DistillTrainer(
        model=student,
        args=args,
        train_dataset=PairClassificationDataset(rows, tok, 32),
        eval_dataset=PairClassificationDataset(rows, tok, 32),
        data_collator=PairCollator(tok),
        compute_metrics=training_metrics(cfg),
        callbacks=[CopyCheckpoints(out / "copies")],
        loss=TurnsWrong(),
    )


def run(teacher_dir, data_dir, out: Path, **over) -> dict:
    trainer = turning_trainer(teacher_dir, data_dir, out, **over)
    train_and_save(trainer, {"job": over}, out / "model", out / "log.jsonl", tokenizer=trainer.data_collator.tokenizer)
    return provenance.read_record(out / "model")


def evaluations(log_file: Path, metric: str) -> dict[int, float]:
    """The metric of each step's evaluation during training (the evaluation after train(), logged
    at the last step too, comes after it and is left out)."""
    found: dict[int, float] = {}
    for entry in read_jsonl(log_file):
        if metric in entry:
            found.setdefault(entry["step"], entry[metric])
    return found


def same_weights(model_dir: Path, copy: Path) -> bool:
    saved, kept = load_file(model_dir / "model.safetensors"), load_file(copy)
    assert saved.keys() == kept.keys()
    return all(torch.equal(saved[k], kept[k]) for k in saved)


def test_keep_best_writes_the_weights_of_the_lowest_dev_loss_and_records_its_step(teacher_dir, glue_data, tmp_path):
    record = run(teacher_dir, glue_data["data"], tmp_path, keep="best")
    losses = evaluations(tmp_path / "log.jsonl", "eval_loss")
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    best = min(losses, key=lambda step: (losses[step], step))
    assert 1 < best < MAX_STEPS, losses  # the training turned bad after improving: best is neither end
    assert record["kept"] == {"policy": "best", "step": best, "metric": "eval_loss", "value": losses[best]}
    assert provenance.kept_step(tmp_path / "model") == best
    assert provenance.describe(tmp_path / "model")["kept"]["step"] == best
    assert same_weights(tmp_path / "model", tmp_path / "copies" / f"{best}.safetensors")
    assert not same_weights(tmp_path / "model", tmp_path / "copies" / f"{MAX_STEPS}.safetensors")
    # The evaluation after training is of the kept weights: its dev loss is the best one.
    assert read_jsonl(tmp_path / "log.jsonl")[-1]["eval_loss"] == pytest.approx(losses[best], rel=1e-6)
    assert not (tmp_path / "checkpoints").exists()


def test_keep_last_writes_the_last_steps_weights_and_records_it(teacher_dir, glue_data, tmp_path):
    record = run(teacher_dir, glue_data["data"], tmp_path, keep="last")
    losses = evaluations(tmp_path / "log.jsonl", "eval_loss")
    final = read_jsonl(tmp_path / "log.jsonl")[-1]["eval_loss"]
    assert record["kept"] == {"policy": "last", "step": MAX_STEPS, "metric": "eval_loss", "value": final}
    assert final == pytest.approx(losses[MAX_STEPS], rel=1e-6)
    assert min(losses.values()) < losses[MAX_STEPS]  # the same training as keep: best's, which kept another step
    assert same_weights(tmp_path / "model", tmp_path / "copies" / f"{MAX_STEPS}.safetensors")


def test_keep_best_on_accuracy_records_the_accuracy_of_the_saved_model(teacher_dir, glue_data, tmp_path):
    from sklearn.metrics import accuracy_score

    record = run(teacher_dir, glue_data["data"], tmp_path, keep="best", best_metric="accuracy")
    accuracy = evaluations(tmp_path / "log.jsonl", "eval_accuracy")
    assert sorted(accuracy) == list(range(1, MAX_STEPS + 1))
    best = max(accuracy, key=lambda step: (accuracy[step], -step))  # the first of equal ones
    assert best < MAX_STEPS and accuracy[best] > accuracy[MAX_STEPS], accuracy
    assert record["kept"] == {"policy": "best", "step": best, "metric": "eval_accuracy", "value": accuracy[best]}
    assert same_weights(tmp_path / "model", tmp_path / "copies" / f"{best}.safetensors")
    # Recomputed from the saved model: its dev predictions against the gold labels.
    tok = load_tokenizer(str(tmp_path / "model"))
    rows = read_jsonl(glue_data["data"] / "train.jsonl")[:16]
    logits = predict_logits(
        load_classifier(str(tmp_path / "model"), 3), PairClassificationDataset(rows, tok, 32), PairCollator(tok), 16
    )
    assert accuracy_score([r["label"] for r in rows], logits.argmax(-1).numpy()) == record["kept"]["value"]


def test_a_resumed_job_keeps_the_best_step_of_before_the_crash(teacher_dir, glue_data, tmp_path):
    """Killed during step 6 (after the best step, 3 or so): the resumed run knows the best so far
    from checkpoint-5's trainer_state.json (the best checkpoint survives the rotation) and ends
    with the uninterrupted run's step and weights."""
    ref = run(teacher_dir, glue_data["data"], tmp_path / "ref", keep="best")
    out = tmp_path / "run"
    crashed = turning_trainer(teacher_dir, glue_data["data"], out, keep="best")
    crashed.add_callback(crash_after(6))
    with pytest.raises(KeyboardInterrupt):
        train_and_save(crashed, {"job": {"keep": "best"}}, out / "model", out / "log.jsonl")
    state = read_json(out / "checkpoints" / "checkpoint-5" / "trainer_state.json")
    assert state["best_global_step"] == ref["kept"]["step"] < 4
    assert Path(state["best_model_checkpoint"]).is_dir()  # kept by the rotation (save_total_limit 2)
    resumed = turning_trainer(teacher_dir, glue_data["data"], out, keep="best")
    train_and_save(resumed, {"job": {"keep": "best"}}, out / "model", out / "log.jsonl")
    got = provenance.read_record(out / "model")
    assert got["kept"]["step"] == ref["kept"]["step"]
    assert got["kept"]["value"] == pytest.approx(ref["kept"]["value"], rel=1e-5)
    ref_weights, weights = (
        load_file(tmp_path / "ref" / "model" / "model.safetensors"),
        load_file(out / "model" / "model.safetensors"),
    )
    for name, tensor in ref_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int, teacher_dir, data_dir, out: Path, kill_at: int | None = None, metric="eval_loss"):
    """This file's __main__ (turning_trainer under DeepSpeed ZeRO-2, keep: best on `metric`) in
    `processes` CPU processes started by torchrun."""
    env = dict(os.environ, KDSWEEP_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    cmd += ["--master-port", str(free_port()), __file__, str(teacher_dir), str(data_dir), str(out), metric]
    cmd += [] if kill_at is None else [str(kill_at)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("metric", ["eval_loss", "accuracy"])
def test_keep_best_with_deepspeed_zero2_on_two_processes(teacher_dir, glue_data, tmp_path, metric):
    """The same training under DeepSpeed ZeRO-2 (workflow/deepspeed/zero2.json, two CPU processes,
    torchrun): the best checkpoint is loaded through the DeepSpeed engine and is what is saved;
    the accuracy is over the dev logits of both processes."""
    done = torchrun(2, teacher_dir, glue_data["data"], tmp_path, metric=metric)
    assert done.returncode == 0, done.stderr[-4000:]
    record = provenance.read_record(tmp_path / "model")
    assert record["run"]["zero_stage"] == 2 and record["run"]["world_size"] == 2
    key = "eval_loss" if metric == "eval_loss" else "eval_accuracy"
    values = evaluations(tmp_path / "log.jsonl", key)
    sign = 1 if metric == "eval_loss" else -1
    best = min(values, key=lambda step: (sign * values[step], step))
    assert 1 < best < MAX_STEPS, values
    assert record["kept"] == {"policy": "best", "step": best, "metric": key, "value": values[best]}
    assert same_weights(tmp_path / "model", tmp_path / "copies" / f"{best}.safetensors")
    if metric == "accuracy":
        from sklearn.metrics import accuracy_score

        tok = load_tokenizer(str(tmp_path / "model"))
        rows = read_jsonl(glue_data["data"] / "train.jsonl")[:16]
        model = load_classifier(str(tmp_path / "model"), 3)
        logits = predict_logits(model, PairClassificationDataset(rows, tok, 32), PairCollator(tok), 16)
        assert accuracy_score([r["label"] for r in rows], logits.argmax(-1).numpy()) == values[best]


@pytest.mark.parametrize("kill_at", [6, 3], ids=["best-before-the-kill", "best-after-the-resume"])
def test_keep_best_after_a_zero2_resume_on_another_number_of_processes(teacher_dir, glue_data, tmp_path, kill_at):
    """Two ZeRO-2 processes killed during step 6 (or 3), resumed on one: the newest checkpoint goes
    through a DeepSpeed universal checkpoint, and so does the best one of before the kill (written
    by two processes too), which is loaded at the end; a best step after the resume (written by
    the one process) is loaded as it was written."""
    killed = torchrun(2, teacher_dir, glue_data["data"], tmp_path, kill_at=kill_at)
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr, killed.stderr[-4000:]
    last = kill_at - 1
    state = read_json(tmp_path / "checkpoints" / f"checkpoint-{last}" / "trainer_state.json")
    resumed = torchrun(1, teacher_dir, glue_data["data"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "through a DeepSpeed universal checkpoint" in resumed.stderr
    record = provenance.read_record(tmp_path / "model")
    assert record["run"]["world_size"] == 1
    losses = evaluations(tmp_path / "log.jsonl", "eval_loss")
    best = min(losses, key=lambda step: (losses[step], step))
    assert record["kept"] == {"policy": "best", "step": best, "metric": "eval_loss", "value": losses[best]}
    if kill_at == 6:  # the best step's checkpoint, written by two processes, survived the rotation
        assert best == state["best_global_step"] < 4, (losses, state)
    else:
        assert best > last, losses
    assert same_weights(tmp_path / "model", tmp_path / "copies" / f"{best}.safetensors")


def dev_accuracy_of(model_dir: Path, data_dir: Path) -> float:
    """scikit-learn's accuracy of a saved classifier's predictions on the MNLI dev split."""
    from sklearn.metrics import accuracy_score

    tok = load_tokenizer(str(model_dir))
    rows = read_jsonl(Path(data_dir) / "dev_matched.jsonl")
    logits = predict_logits(
        load_classifier(str(model_dir), 3), PairClassificationDataset(rows, tok, 32), PairCollator(tok), 64
    )
    return accuracy_score([r["label"] for r in rows], logits.argmax(-1).numpy())


STAGE_TRAINING = {"max_steps": 6, "batch_size": 16, "logging_steps": 1, "eval_steps": 1, "save_steps": 1}
STAGE_TRAINING |= {"keep": "best", "best_metric": "accuracy"}


def test_the_glue_stages_keep_the_best_accuracy(teacher_dir, glue_data, tmp_path):
    """The stages as the rules run them (finetune_teacher, then distill_student from its cache)
    with keep: best on accuracy: each passes the dev accuracy to the Trainer, and its record names
    the step of the highest logged eval_accuracy, whose value scikit-learn finds on the saved model."""
    from kdsweep.glue.distill import GlueDistillSpec, distill_student
    from kdsweep.glue.teacher import GlueCacheSpec, GlueTeacherSpec, cache_teacher_logits, finetune_teacher

    data = glue_data["data"]
    training = training_block(**STAGE_TRAINING)
    teacher_spec = GlueTeacherSpec(
        model=str(teacher_dir), finetune={"learning_rate": 5e-3, "training": training}, max_length=32
    )
    finetune_teacher(
        "mnli",
        str(teacher_dir),
        data,
        tmp_path / "teacher",
        tmp_path / "teacher.jsonl",
        tmp_path / "t.ckpt",
        teacher_spec,
    )
    teacher = str(tmp_path / "teacher")
    cache_teacher_logits(
        "mnli", teacher, teacher, data, tmp_path / "store", tmp_path / "cache.json", GlueCacheSpec(max_length=32)
    )
    spec = GlueDistillSpec(
        point={"learning_rate": 5e-3, "alpha": 0.5, "temperature": 2.0},
        student={"model": {"from_teacher": {"layers": [0, 1]}}},
        distill={"hard_labels": False, "cosine_weight": 0.0, "training": training},
        max_length=32,
        eval_batch_size=64,
    )
    distill_student("mnli", teacher, teacher, teacher, data, tmp_path / "cache.json", tmp_path / "student",
                    tmp_path / "student.jsonl", tmp_path / "s.ckpt", spec)  # fmt: skip
    for name in ("teacher", "student"):
        accuracy = evaluations(tmp_path / f"{name}.jsonl", "eval_accuracy")
        assert sorted(accuracy) == list(range(1, 7)), (name, accuracy)
        best = max(accuracy, key=lambda step: (accuracy[step], -step))
        kept = provenance.kept(tmp_path / name)
        assert kept == {"policy": "best", "step": best, "metric": "eval_accuracy", "value": accuracy[best]}, name
        assert dev_accuracy_of(tmp_path / name, data) == pytest.approx(kept["value"], abs=1e-12), name


def test_keep_best_needs_a_checkpoint_at_every_evaluation():
    assert training_block(keep="best", eval_steps=50, save_steps=50)["best_metric"] == "eval_loss"
    assert training_block(keep="last", eval_steps=50, save_steps=100)["keep"] == "last"
    with pytest.raises(
        ConfigError, match=r"glue\.distill\.training\.save_steps: 100 .*glue\.distill\.training\.eval_steps"
    ):
        training_block(keep="best", eval_steps=50, save_steps=100)
    with pytest.raises(ConfigError, match=r"best_metric"):
        training_block(best_metric="f1")
    # with 1, Hugging Face's rotation keeps the best only: a stopped job's new checkpoint would go
    with pytest.raises(ConfigError, match=r"glue\.distill\.training\.save_total_limit: 1 with keep: best"):
        training_block(keep="best", eval_steps=50, save_steps=50, save_total_limit=1)
    assert training_block(keep="last", save_total_limit=1)["save_total_limit"] == 1


def test_accuracy_is_glues_only():
    assert training_block(keep="best", best_metric="accuracy", eval_steps=5, save_steps=5)["best_metric"] == "accuracy"
    with pytest.raises(ConfigError, match=r"translation\.distill\.training\.best_metric: accuracy"):
        training_block("translation", best_metric="accuracy")
    cfg = training_block(keep="best", best_metric="accuracy", max_steps=2, batch_size=8, eval_steps=1, save_steps=1)
    args = training_arguments(cfg, 1e-3, "unused")
    assert (args.metric_for_best_model, args.greater_is_better, args.prediction_loss_only) == (
        "eval_accuracy",
        True,
        False,
    )


def test_a_trainer_without_the_accuracy_refuses_to_keep_the_best_accuracy(teacher_dir, tmp_path):
    cfg = training_block(keep="best", best_metric="accuracy", max_steps=2, batch_size=8, eval_steps=1, save_steps=1)
    with pytest.raises(ValueError, match="training.best_metric: this stage computes no eval_accuracy"):
        DistillTrainer(
            model=load_classifier(str(teacher_dir), 3),
            args=training_arguments(cfg, 1e-3, tmp_path),
            eval_dataset=[],
            loss=ClassificationKD(),
        )


if __name__ == "__main__":  # one process of test_keep_best_with_deepspeed_zero2_on_two_processes (torchrun)
    teacher, data, folder, metric, *crash = sys.argv[1:]
    zero2 = str(REPO / "workflow" / "deepspeed" / "zero2.json")
    trainer = turning_trainer(teacher, data, Path(folder), deepspeed=zero2, keep="best", best_metric=metric)
    if crash:
        trainer.add_callback(crash_after(int(crash[0])))
    train_and_save(trainer, {"job": json.dumps("zero2")}, Path(folder) / "model", Path(folder) / "log.jsonl")
