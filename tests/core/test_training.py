"""The DistillTrainer with GLUE's ClassificationKD loss on a tiny BERT: the distillation loss path, the online-teacher cosine path, and
resume after a crash from the newest checkpoint (the same weights as an uninterrupted run)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import crash_after
from transformers import TrainerCallback

import kdsweep
from kdsweep.core.io import read_jsonl
from kdsweep.core.models import load_tokenizer, student_from_teacher
from kdsweep.core.trainer import (
    COMPLETE_MARKER,
    LOCK_FILE,
    STOP_SIGNALS,
    DistillTrainer,
    Preempted,
    TrainingDiverged,
    health_problem,
    last_complete_checkpoint,
    per_device_batch,
    train_and_save,
    training_arguments,
)
from kdsweep.families import validate_config
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator
from kdsweep.glue.loss import ClassificationKD
from kdsweep.glue.models import load_classifier


def train_cfg(**over):
    cfg = {
        "run_name": "t",
        "glue": {
            "tasks": ["mnli"],
            "source": "synthetic",
            "teacher": {"model": "x"},
            "student": {"model": "y"},
            "distill": {"sweep": {"learning_rate": [1e-3]}, "training": over},
        },
    }
    return validate_config(cfg)["glue"]["distill"]["training"]


def make_trainer(
    teacher_dir,
    data_dir,
    out,
    alpha=0.5,
    cosine_weight=0.0,
    hard_labels=False,
    callbacks=None,
    student_tokenizer=None,
    **train_over,
):
    teacher_tok = load_tokenizer(str(teacher_dir))
    tok = load_tokenizer(str(student_tokenizer or teacher_dir))
    teacher = load_classifier(str(teacher_dir), 3)
    rows = read_jsonl(data_dir / "train.jsonl")[:64]
    logits = torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(0))
    online = teacher_tok if cosine_weight else None
    train = PairClassificationDataset(
        rows, tok, 32, teacher_logits=logits, teacher_labels=logits.argmax(-1), teacher_tokenizer=online
    )
    dev = PairClassificationDataset(read_jsonl(data_dir / "dev_matched.jsonl")[:16], tok, 32)
    cfg = train_cfg(
        **{
            "max_steps": 6,
            "batch_size": 8,
            "logging_steps": 1,
            "eval_steps": 3,
            "save_steps": 3,
            "seed": 1,
            **train_over,
        }
    )
    args = training_arguments(cfg, 1e-3, out / "checkpoints")
    student = student_from_teacher(teacher, [0, 2], seed=1)
    return DistillTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=PairCollator(tok, online),
        callbacks=callbacks or [],
        loss=ClassificationKD(
            alpha=alpha,
            temperature=2.0,
            hard_labels=hard_labels,
            cosine_weight=cosine_weight,
            teacher=teacher if cosine_weight else None,
        ),
    )


def test_distillation_loss_is_the_hinton_loss_of_the_batch_and_the_saved_model_is_the_trained_one(
    teacher_dir, glue_data, tmp_path
):
    """The first step's logged KD and CE equal the loss written out here (F.kl_div at T, times
    T^2; F.cross_entropy) on the Trainer's first batch with the initial weights; the saved model
    is the trained one, with its tokenizer."""
    import copy

    import torch.nn.functional as F

    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    no_dropout(trainer.model)
    with torch.no_grad():  # a confident head: at ~0 logits every label's CE is log 3 and labels could be swapped
        trainer.model.classifier.weight.mul_(100.0)
    initial = copy.deepcopy(trainer.model).eval()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = initial(**inputs).logits
    kd = (
        F.kl_div(F.log_softmax(logits / 2.0, -1), F.softmax(batch["teacher_logits"] / 2.0, -1), reduction="batchmean")
        * 2.0**2
    )
    ce = F.cross_entropy(logits, batch["labels"])
    train_and_save(
        trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl", tokenizer=trainer.data_collator.tokenizer
    )
    history = read_jsonl(tmp_path / "log.jsonl")
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2, 3, 4, 5, 6]
    assert train_logs[0]["loss_kd"] == pytest.approx(kd.item(), rel=1e-5)
    assert train_logs[0]["loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert train_logs[0]["loss"] == pytest.approx(0.5 * kd.item() + 0.5 * ce.item(), abs=1e-4)  # logged to 4 places
    assert [h["step"] for h in history if "eval_loss" in h][-1] == 6
    saved = load_classifier(str(tmp_path / "model"), 3)
    for (name, a), b in zip(trainer.model.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_tokenizer(str(tmp_path / "model")).get_vocab() == trainer.data_collator.tokenizer.get_vocab()
    assert not (tmp_path / "checkpoints").exists()  # finished: nothing left to resume


def test_the_saved_model_is_readable_as_the_umask_says(teacher_dir, glue_data, tmp_path):
    """save_model writes its safetensors weights 0600; under umask 027 every file of the model
    folder is 0640 and every folder 0750, as a plain open() and mkdir() give."""
    import stat

    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, max_steps=1, eval_steps=1, save_steps=1)
    saved = os.umask(0o027)
    try:
        train_and_save(
            trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl", tokenizer=trainer.data_collator.tokenizer
        )
    finally:
        os.umask(saved)
    tree = [tmp_path / "model", *(tmp_path / "model").rglob("*")]
    assert any(p.name == "model.safetensors" for p in tree)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tree}
    assert modes == {p.name: 0o750 if p.is_dir() else 0o640 for p in tree}


def no_dropout(model):
    """Dropout off (the modules, and the probability BERT's sdpa attention reads directly)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


def test_cosine_loss_runs_the_frozen_teacher_on_its_own_inputs(teacher_dir, glue_data, tmp_path):
    """The student's tokenizer drops token_type_ids (as DistilBERT's does); the teacher (BERT)
    must still see sentence B as segment B: the logged cosine loss equals 1 - cos computed here
    with the teacher run on its own tokenizer's inputs, and differs from the teacher run on the
    student's inputs."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(teacher_dir, model_input_names=["input_ids", "attention_mask"]).save_pretrained(
        tmp_path / "student_tok"
    )
    assert "token_type_ids" not in load_tokenizer(str(tmp_path / "student_tok"))("a", "b")
    trainer = make_trainer(
        teacher_dir,
        glue_data["data"],
        tmp_path,
        cosine_weight=1.0,
        hard_labels=True,
        max_steps=2,
        student_tokenizer=tmp_path / "student_tok",
    )
    no_dropout(trainer.model.train())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert "token_type_ids" not in batch and batch["teacher_token_type_ids"].sum() > 0
    with torch.no_grad():
        _, parts, _, _ = trainer.loss_terms(trainer.model, dict(batch))
        student_h = trainer.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states[-1]
        teacher_in = {
            k.removeprefix("teacher_"): v for k, v in batch.items() if k.startswith("teacher_") and "_ids" in k
        }
        teacher_in["attention_mask"] = batch["teacher_attention_mask"]
        own = trainer.loss.teacher(**teacher_in, output_hidden_states=True).hidden_states[-1]
        segment_a = trainer.loss.teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states[-1]

    def expected(teacher_h):
        mask = batch["attention_mask"].bool()
        cos = torch.nn.functional.cosine_similarity(student_h, teacher_h, dim=-1)
        return sum((1 - cos[i][mask[i]]).mean() for i in range(8)).item()

    assert parts["cos"].item() == pytest.approx(expected(own), rel=1e-5)
    assert abs(expected(segment_a) - expected(own)) > 1e-3  # the check above can tell the two apart

    before = {k: v.clone() for k, v in trainer.loss.teacher.state_dict().items()}
    trainer.train()
    assert all("loss_cos" in h for h in trainer.state.log_history if "loss" in h)
    assert all(torch.equal(before[k], v) for k, v in trainer.loss.teacher.state_dict().items())
    assert not any(p.requires_grad for p in trainer.loss.teacher.parameters())


def test_cosine_loss_refuses_a_student_tokenization_with_other_ids(teacher_dir, glue_data, tmp_path, tokenizer_dir):
    from kdsweep.glue.tokenizer import train_wordpiece_tokenizer

    rows = read_jsonl(glue_data["data"] / "train.jsonl")
    other = train_wordpiece_tokenizer([r["text_a"] for r in rows], tmp_path / "other", vocab_size=150)
    with pytest.raises(ValueError, match="training example 0 tokenizes to other ids for the teacher"):
        PairClassificationDataset(rows[:4], other, 32, teacher_tokenizer=load_tokenizer(str(teacher_dir)))


class StepRecorder(TrainerCallback):
    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def killed_after(step: int, trainer, spec: dict, out) -> None:
    """Train until `step`, then die as a killed job does (no signal handling): checkpoints stay."""
    trainer.add_callback(crash_after(step))
    with pytest.raises(KeyboardInterrupt):
        train_and_save(trainer, spec, out / "model", out / "log.jsonl")


def test_resume_after_a_crash_continues_from_the_checkpoint(teacher_dir, glue_data, tmp_path):
    ref = make_trainer(teacher_dir, glue_data["data"], tmp_path / "ref")
    train_and_save(ref, {"job": 1}, tmp_path / "ref" / "model", tmp_path / "ref" / "log.jsonl")

    run = tmp_path / "run"
    killed_after(4, make_trainer(teacher_dir, glue_data["data"], run), {"job": 1}, run)
    assert (run / "checkpoints" / "checkpoint-3").is_dir()
    assert not (run / "model").exists() and not (run / "log.jsonl").exists()  # nothing half-written

    resumed = make_trainer(teacher_dir, glue_data["data"], run)
    steps_run = []
    resumed.add_callback(StepRecorder(steps_run))
    train_and_save(resumed, {"job": 1}, run / "model", run / "log.jsonl")
    assert steps_run == [4, 5, 6]  # the step counter continues from checkpoint-3
    history = read_jsonl(run / "log.jsonl")
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    ref_model = load_classifier(str(tmp_path / "ref" / "model"), 3)
    got = load_classifier(str(run / "model"), 3)
    for (name, a), b in zip(ref_model.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoints_of_a_job_with_other_settings_are_not_resumed(teacher_dir, glue_data, tmp_path):
    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), {"lr": 1e-3}, tmp_path)
    other = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    steps_run = []
    other.add_callback(StepRecorder(steps_run))
    train_and_save(other, {"lr": 1e-4}, tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [1, 2, 3, 4, 5, 6]


def test_global_batch_is_split_over_devices_and_accumulation():
    assert per_device_batch(32, accumulation=4, devices=2) == 4
    assert per_device_batch(32, accumulation=1, devices=1) == 32
    with pytest.raises(
        ValueError, match=r"batch_size 4 is not a multiple of devices \(2\) x gradient_accumulation_steps \(4\)"
    ):
        per_device_batch(4, accumulation=4, devices=2)
    with pytest.raises(ValueError, match="batch_size 30 is not a multiple"):
        per_device_batch(30, accumulation=4, devices=1)


class SignalAt(TrainerCallback):
    """Sends this process a real signal, as Slurm does before a time limit or on preemption."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_stops_then_rerun_resumes(teacher_dir, glue_data, tmp_path, signum):
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, callbacks=[SignalAt(2, signum)])
        with pytest.raises(Preempted, match=f"stopped by {signal.Signals(signum).name}; saved .*checkpoint-2"):
            train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
        assert (
            tmp_path / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER
        ).is_file()  # saved off-schedule (save_steps 3)
        assert not (tmp_path / "model").exists() and not (tmp_path / "log.jsonl").exists()

        resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path)
        steps_run = []
        resumed.add_callback(StepRecorder(steps_run))
        train_and_save(resumed, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
        assert steps_run == [3, 4, 5, 6]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class SignalAtTrainEnd(TrainerCallback):
    """A signal after the last step's end (in a distributed job: after the ranks last agreed)."""

    def on_train_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)


def test_a_signal_after_the_last_step_stops_nothing_and_the_model_is_written(teacher_dir, glue_data, tmp_path):
    """The ranks act only on the stop they agreed on at a step's end: a signal that lands after
    the last agreement (on one rank, in a distributed job) must not make that rank alone skip the
    evaluation and model save that the others run (they would wait in their collectives)."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, callbacks=[SignalAtTrainEnd()])
        train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert [h["step"] for h in read_jsonl(tmp_path / "log.jsonl") if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_killed_mid_write_is_not_resumed(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / COMPLETE_MARKER).touch()
    (tmp_path / "checkpoint-6").mkdir()  # no marker: the job died while writing it
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert (tmp_path / "checkpoint-6").exists()  # only the main process removes
    assert last_complete_checkpoint(tmp_path, remove_incomplete=True) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-6").exists()


def test_gradient_accumulation_matches_one_big_batch(teacher_dir, glue_data, tmp_path):
    """batch 8 as 2 x 4 with accumulation: the same loss and gradient norm as one batch of 8."""
    logs = {}
    for accum in (1, 2):
        trainer = make_trainer(
            teacher_dir, glue_data["data"], tmp_path / f"a{accum}", max_steps=2, gradient_accumulation_steps=accum
        )
        no_dropout(trainer.model)  # dropout off: the two runs must see the same function
        trainer.train()
        logs[accum] = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    assert trainer.args.per_device_train_batch_size == 4
    for one, two in zip(logs[1], logs[2], strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)  # padding differs


def job(**training) -> dict:
    """A distill job's spec as the stage records it (point and the distill block)."""
    base = {"max_steps": 6, "batch_size": 8, "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "seed": 1}
    return {"point": {"learning_rate": 1e-3, "alpha": 0.5}, "distill": {"training": {**base, **training}}}


def test_changing_only_logging_steps_resumes_a_killed_distillation(teacher_dir, glue_data, tmp_path, caplog):
    """A 24-hour job keeps its checkpoints when only how it logs changes: it resumes at the step
    it reached, the new logging interval applies, and it ends with the uninterrupted run's weights."""
    ref = make_trainer(teacher_dir, glue_data["data"], tmp_path / "ref")
    train_and_save(ref, job(), tmp_path / "ref" / "model", tmp_path / "ref" / "log.jsonl")

    run = tmp_path / "run"
    killed_after(4, make_trainer(teacher_dir, glue_data["data"], run), job(), run)
    resumed = make_trainer(teacher_dir, glue_data["data"], run, logging_steps=2, eval_steps=2)
    steps_run = []
    resumed.add_callback(StepRecorder(steps_run))
    with caplog.at_level("INFO", logger="kdsweep.core.trainer"):
        train_and_save(resumed, job(logging_steps=2, eval_steps=2), run / "model", run / "log.jsonl")
    assert steps_run == [4, 5, 6]
    assert "distill.training.logging_steps: 1 -> 2" in caplog.text
    history = read_jsonl(run / "log.jsonl")
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 6]  # every step, then every 2nd
    assert [h["step"] for h in history if "eval_loss" in h] == [3, 4, 6, 6]  # the last: the final evaluation
    ref_model = load_classifier(str(tmp_path / "ref" / "model"), 3)
    got = load_classifier(str(run / "model"), 3)
    for (name, a), b in zip(ref_model.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_changing_a_setting_of_the_result_starts_over_naming_it(teacher_dir, glue_data, tmp_path, caplog):
    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), job(), tmp_path)
    other = job(logging_steps=2)
    other["point"]["learning_rate"] = 1e-4
    steps_run = []
    again = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    again.add_callback(StepRecorder(steps_run))
    with caplog.at_level("WARNING", logger="kdsweep.core.trainer"):
        train_and_save(again, other, tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [1, 2, 3, 4, 5, 6]
    assert "point.learning_rate: 0.001 -> 0.0001" in caplog.text and "logging_steps" not in caplog.text


def test_another_number_of_processes_resumes_without_deepspeed_and_fails_with_it(teacher_dir, glue_data, tmp_path):
    """The checkpoint's job record says which processes wrote it: without DeepSpeed the whole
    optimizer state resumes on 1 process; ZeRO partitions it, so that fails before any step."""
    from kdsweep.core.io import read_json, write_json

    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), job(), tmp_path)
    record = read_json(tmp_path / "checkpoints" / "job.json")
    assert record["run"] == {"world_size": 1, "zero_stage": None, "precision": "fp32", "deepspeed_config": None}
    two = {**record["run"], "world_size": 2}
    write_json(tmp_path / "checkpoints" / "job.json", {**record, "run": {**two, "zero_stage": 2}})
    steps_run = []
    zero = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    zero.add_callback(StepRecorder(steps_run))
    with pytest.raises(
        RuntimeError,
        match=r"checkpoint-3 was written by 2 process\(es\) with DeepSpeed ZeRO-2; this job runs 1 process\(es\) with no DeepSpeed",
    ):
        train_and_save(zero, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [] and (tmp_path / "checkpoints" / "checkpoint-3").is_dir()  # nothing lost
    write_json(tmp_path / "checkpoints" / "job.json", {**record, "run": two})
    resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    resumed.add_callback(StepRecorder(steps_run))
    train_and_save(resumed, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [4, 5, 6]


def test_resume_with_other_accumulation_steps_keeps_the_global_batch(teacher_dir, glue_data, tmp_path):
    """Batch 8 as 1 x 8, killed after step 4, resumed as 2 x 4 accumulated: the Trainer would take
    the checkpoint's per-device batch (8) and train on 16 per step; the job must end with the
    uninterrupted run's weights."""
    ref = no_dropout_trainer(teacher_dir, glue_data["data"], tmp_path / "ref")
    train_and_save(ref, job(), tmp_path / "ref" / "model", tmp_path / "ref" / "log.jsonl")
    run = tmp_path / "run"
    killed_after(4, no_dropout_trainer(teacher_dir, glue_data["data"], run), job(), run)
    resumed = no_dropout_trainer(teacher_dir, glue_data["data"], run, gradient_accumulation_steps=2)
    assert resumed.args.per_device_train_batch_size == 4
    steps_run = []
    resumed.add_callback(StepRecorder(steps_run))
    train_and_save(resumed, job(gradient_accumulation_steps=2), run / "model", run / "log.jsonl")
    assert steps_run == [4, 5, 6]
    ref_model = load_classifier(str(tmp_path / "ref" / "model"), 3)
    got = load_classifier(str(run / "model"), 3)
    for (name, a), b in zip(ref_model.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def no_dropout_trainer(*args, **kwargs):
    trainer = make_trainer(*args, **kwargs)
    no_dropout(trainer.model)
    return trainer


def test_checkpoints_recorded_without_a_run_record_resume(teacher_dir, glue_data, tmp_path):
    """job.json as kdsweep wrote it before run records (the bare spec): the job still resumes."""
    from kdsweep.core.io import read_json, write_json

    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), job(), tmp_path)
    write_json(tmp_path / "checkpoints" / "job.json", read_json(tmp_path / "checkpoints" / "job.json")["spec"])
    steps_run = []
    resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    resumed.add_callback(StepRecorder(steps_run))
    train_and_save(resumed, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [4, 5, 6]


def test_another_precision_starts_over(teacher_dir, glue_data, tmp_path, caplog):
    """The spec says precision auto; the run record says what it was (bf16 on an A100): a
    rerun that trains in another precision (fp32 here) starts over, naming it."""
    from kdsweep.core.io import read_json, write_json

    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), job(), tmp_path)
    record = read_json(tmp_path / "checkpoints" / "job.json")
    assert record["run"]["precision"] == "fp32"
    write_json(tmp_path / "checkpoints" / "job.json", {**record, "run": {**record["run"], "precision": "bf16"}})
    steps_run = []
    again = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    again.add_callback(StepRecorder(steps_run))
    with caplog.at_level("WARNING", logger="kdsweep.core.trainer"):
        train_and_save(again, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [1, 2, 3, 4, 5, 6] and "run.precision: 'bf16' -> 'fp32'" in caplog.text


def test_resume_safe_settings_are_matched_by_their_own_name():
    from kdsweep.core.trainer import result_changes

    spec = {
        "distill": {
            "training": {"logging_steps": 1, "seed": 1},
            "distributed": {"cpu_processes": 2, "deepspeed": "zero2", "deepspeed_config": None},
        }
    }

    def changed(path, value):
        import copy

        other = copy.deepcopy(spec)
        node = other
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return [".".join(p) for p, _, _ in result_changes(spec, other)]

    assert changed(("distill", "training", "logging_steps"), 5) == []
    assert changed(("distill", "distributed", "cpu_processes"), 1) == []  # check_world decides
    assert changed(("distill", "distributed", "deepspeed_config"), "mine.json") == [
        "distill.distributed.deepspeed_config"
    ]
    assert changed(("distill", "training", "seed"), 2) == ["distill.training.seed"]


class BreakWeightsAt(TrainerCallback):
    """What a diverging run does to the weights: one becomes inf after `step` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return control


def test_a_diverged_training_fails_instead_of_writing_a_model(teacher_dir, glue_data, tmp_path):
    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, callbacks=[BreakWeightsAt(4)])
    with pytest.raises(TrainingDiverged, match=r"the loss of the last step is non-finite"):
        train_and_save(trainer, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert not (tmp_path / "model").exists() and not (tmp_path / "log.jsonl").exists()
    # The same run, healthy, writes its model: the check is not what fails.
    train_and_save(make_trainer(teacher_dir, glue_data["data"], tmp_path / "ok"), job(), tmp_path / "ok" / "model",
                   tmp_path / "ok" / "log.jsonl")  # fmt: skip
    assert (tmp_path / "ok" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "counts, problem",
    [
        ((40, 0, False, 10, 0), None),
        ((40, 3, False, 10, 3), None),  # a few overflow steps while fp16 loss scaling settles
        ((40, 21, False, 10, 0), "the loss was non-finite on 21 of 40 micro-batches"),
        ((40, 0, False, 10, 6), "6 of 10 optimizer steps were skipped"),
        ((40, 1, True, 10, 1), "the loss of the last step is non-finite"),
    ],
)
def test_health_verdict_from_the_counts(counts, problem):
    got = health_problem(*counts)
    assert got == problem if problem is None else problem in got


def test_a_checkpoint_folder_in_use_is_refused_until_its_holder_dies(teacher_dir, glue_data, tmp_path):
    """A rerun while a process of an earlier run still holds the folder fails before it touches
    the checkpoints, naming the folder and the holder; once the holder is gone (SIGKILL: no
    cleanup of its own) the rerun resumes. The lock file is not taken for a checkpoint."""
    killed_after(4, make_trainer(teacher_dir, glue_data["data"], tmp_path), job(), tmp_path)
    folder = tmp_path / "checkpoints"
    hold = "import sys, time; from kdsweep.core.trainer import lock_checkpoint_dir as h; lock = h(sys.argv[1]); print(1); time.sleep(99)"
    env = dict(os.environ, PYTHONPATH=str(Path(kdsweep.__file__).parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "1\n"  # holds the lock
        with pytest.raises(RuntimeError, match=f"{re.escape(str(folder))} is in use by pid {holder.pid} on "):
            train_and_save(
                make_trainer(teacher_dir, glue_data["data"], tmp_path),
                job(),
                tmp_path / "model",
                tmp_path / "log.jsonl",
            )
        assert last_complete_checkpoint(folder) == str(folder / "checkpoint-3")  # untouched
    finally:
        holder.kill()
        holder.wait()
    assert (folder / LOCK_FILE).is_file()  # left behind by the killed holder: the kernel released its lock
    resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path)
    steps_run = []
    resumed.add_callback(StepRecorder(steps_run))
    train_and_save(resumed, job(), tmp_path / "model", tmp_path / "log.jsonl")
    assert steps_run == [4, 5, 6]


def test_a_failed_universal_conversion_leaves_nothing_a_rerun_would_trust(tmp_path):
    """ds_to_universal failing on an unreadable ZeRO checkpoint: the error names the checkpoint and
    what to do; neither the converted folder nor the `latest_universal` tag is left."""
    from kdsweep.core.trainer import to_universal

    checkpoint = tmp_path / "ckpt" / "checkpoint-5"
    (checkpoint / "global_step5").mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (checkpoint / "global_step5" / name).write_bytes(b"not a torch file")
    with pytest.raises(
        RuntimeError,
        match=r"checkpoint-5: DeepSpeed could not convert it .*UnpicklingError.* delete .*ckpt to start over",
    ):
        to_universal(checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["global_step5"]
