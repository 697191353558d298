"""Experiment tracking (kdsweep.core.tracking): a real tiny training writes TensorBoard event files
that agree, step by step, with the trainer's own log (log.jsonl); its setup and throughput; a job
that starts over clears its old events, a resumed one appends; backend none writes nothing."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import crash_after
from transformers import TrainerCallback

from kdsweep.core.config import training_block
from kdsweep.core.io import read_jsonl
from kdsweep.core.models import load_tokenizer, student_from_teacher
from kdsweep.core.tracking import Tracking
from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments
from kdsweep.families import validate_config
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator
from kdsweep.glue.loss import ClassificationKD
from kdsweep.glue.models import load_classifier

TRAIN_ROWS, BATCH = 36, 8  # an epoch: 5 optimizer steps, of 8, 8, 8, 8 and 4 examples
PER_STEP = [8, 8, 8, 8, 4]


@pytest.fixture(autouse=True)
def no_leaked_environment(monkeypatch):
    """The jobs set the backends' variables in their process: restore them after each test."""
    for name in ("TENSORBOARD_LOGGING_DIR", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def make_trainer(teacher_dir, data_dir, out, tracking, callbacks=(), **over):
    tok = load_tokenizer(str(teacher_dir))
    teacher = load_classifier(str(teacher_dir), 3)
    rows = read_jsonl(data_dir / "train.jsonl")[:TRAIN_ROWS]
    logits = torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(0))
    train = PairClassificationDataset(rows, tok, 32, teacher_logits=logits, teacher_labels=logits.argmax(-1))
    dev = PairClassificationDataset(read_jsonl(data_dir / "dev_matched.jsonl")[:8], tok, 32)
    training = {"max_steps": 5, "batch_size": BATCH, "logging_steps": 1, "eval_steps": 2, "save_steps": 2, "seed": 1}
    args = training_arguments(training_block(**(training | over)), 1e-3, out / "checkpoints")
    return DistillTrainer(
        model=student_from_teacher(teacher, [0, 2], seed=1),
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=PairCollator(tok),
        callbacks=list(callbacks),
        loss=ClassificationKD(alpha=0.5, temperature=2.0),
        tracking=tracking,
    )


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def event_files(folder) -> list:
    return sorted(folder.rglob("events.out.tfevents.*"))


def test_tensorboard_logs_agree_with_the_trainers_log_step_by_step(teacher_dir, glue_data, tmp_path):
    tracking = Tracking("tensorboard", str(tmp_path / "tracking"), name="p0")
    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking)
    train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    history = read_jsonl(tmp_path / "log.jsonl")
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2, 3, 4, 5]
    assert event_files(tmp_path / "tracking")
    acc = events(tmp_path / "tracking")

    # the loss, its parts and the learning rate, step by step (TensorBoard stores float32)
    for key in ("loss", "loss_kd", "loss_ce", "learning_rate", "grad_norm"):
        expected = [(h["step"], h[key]) for h in train_logs]
        got = scalars(acc, f"train/{key}")
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    got = scalars(acc, "eval/loss")
    assert [s for s, _ in got] == [s for s, _ in evals] == [2, 4, 5, 5]  # the last: train_and_save's evaluate
    assert [v for _, v in got] == pytest.approx([v for _, v in evals], rel=1e-6)

    # the setup, once at step 0
    assert scalars(acc, "setup/world_size") == [(0, 1.0)]
    assert scalars(acc, "setup/examples_per_step") == [(0, float(BATCH))]
    setup_text = acc.Tensors("setup/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| precision | fp32 |" in setup_text and "| zero_stage | none |" in setup_text
    assert "| world_size | 1 |" in setup_text

    # throughput: the examples counted in each step are the dataset's (an epoch of 36 in batches of
    # 8: the last step has 4), at a rate of examples over the time the steps took (together at
    # most the wall time of the whole training, which adds evaluations and checkpoints)
    per_step = scalars(acc, "train/examples_per_step")
    assert per_step == [(step, float(n)) for step, n in enumerate(PER_STEP, 1)]
    assert sum(v for _, v in per_step) == TRAIN_ROWS
    rates = scalars(acc, "train/examples_per_second")
    assert [s for s, _ in rates] == [1, 2, 3, 4, 5]
    step_seconds = sum(n / rate for n, (_, rate) in zip(PER_STEP, rates, strict=True))
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    assert 0 < step_seconds <= runtime  # (a lower bound would time the machine: evaluations and saves vary)
    for h, n in zip(train_logs, PER_STEP, strict=True):  # also in log.jsonl, next to the loss
        assert h["examples_per_step"] == n and h["examples_per_second"] > 0
        assert "peak_gpu_memory_gib" not in h and "mfu" not in h  # CPU: neither


def test_a_resumed_job_appends_and_a_job_that_starts_over_clears_the_old_events(teacher_dir, glue_data, tmp_path):
    folder = tmp_path / "tracking"
    tracking = Tracking("tensorboard", str(folder))
    killed = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking, [crash_after(4)])
    with pytest.raises(KeyboardInterrupt):
        train_and_save(killed, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    first = event_files(folder)
    assert [s for s, _ in scalars(events(folder), "train/loss")] == [1, 2, 3]  # killed before step 4's log

    # resumed from checkpoint-2: the old events stay, the new ones are added, and step 3 (logged
    # again) is there once: the resumed run's restart mark drops the killed run's steps after 2
    resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking, [crash_after(5)])
    with pytest.raises(KeyboardInterrupt):
        train_and_save(resumed, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    assert set(first) < set(event_files(folder))
    assert [s for s, _ in scalars(events(folder), "train/loss")] == [1, 2, 3, 4]

    # another result (the job's spec changed): the checkpoints go, and so do the old events
    other = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking)
    train_and_save(other, {"job": 2}, tmp_path / "model", tmp_path / "log.jsonl")
    assert not set(first) & set(event_files(folder))
    history = read_jsonl(tmp_path / "log.jsonl")
    logged = scalars(events(folder), "train/loss")
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5]
    assert [v for _, v in logged] == pytest.approx([h["loss"] for h in history if "loss" in h], rel=1e-6)


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_another_backend_resumes_the_job(teacher_dir, glue_data, tmp_path):
    """The backend is not in the job's record (job.json): a job killed while logging to TensorBoard
    resumes with tracking.backend none, and its spec is the same."""
    killed = make_trainer(
        teacher_dir, glue_data["data"], tmp_path, Tracking("tensorboard", str(tmp_path / "t")), [crash_after(3)]
    )
    with pytest.raises(KeyboardInterrupt):
        train_and_save(killed, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    record = (tmp_path / "checkpoints" / "job.json").read_text()
    assert "tensorboard" not in record
    steps = StepRecorder()
    resumed = make_trainer(teacher_dir, glue_data["data"], tmp_path, Tracking("none", str(tmp_path / "t")), [steps])
    train_and_save(resumed, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    assert steps.steps == [3, 4, 5]


def test_backend_none_writes_nothing(teacher_dir, glue_data, tmp_path):
    tracking = Tracking("none", str(tmp_path / "tracking"))
    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking, max_steps=2)
    assert trainer.args.report_to == []
    train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    assert not (tmp_path / "tracking").exists()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # nor anywhere else (transformers' default runs/)
    assert [h["examples_per_step"] for h in read_jsonl(tmp_path / "log.jsonl") if "loss" in h] == PER_STEP[:2]


def test_items_are_counted_once_per_optimizer_step_with_gradient_accumulation(teacher_dir, glue_data, tmp_path):
    """num_items_in_batch is the global batch's count, passed with each of its micro-batches."""
    tracking = Tracking("none", str(tmp_path / "tracking"))
    trainer = make_trainer(
        teacher_dir, glue_data["data"], tmp_path, tracking, max_steps=2, gradient_accumulation_steps=2
    )
    train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    assert [h["examples_per_step"] for h in read_jsonl(tmp_path / "log.jsonl") if "loss" in h] == [BATCH, BATCH]


def test_only_the_main_process_writes(teacher_dir, glue_data, tmp_path, monkeypatch):
    """Another rank (is_world_process_zero False) trains without creating any event file."""
    monkeypatch.setattr(DistillTrainer, "is_world_process_zero", lambda self: False)
    tracking = Tracking("tensorboard", str(tmp_path / "tracking"))
    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, tracking, max_steps=2)
    trainer.train()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("backend", "package"),
    [("wandb", "wandb"), ("mlflow", "mlflow")],
)
def test_a_backend_whose_package_is_missing_fails_at_the_start_saying_what_to_install(backend, package, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(RuntimeError, match=rf"tracking\.backend is '{backend}'.*pip install {package}"):
        Tracking(backend, "x").check()


def test_offline_modes_of_the_backends(tmp_path):
    folder = tmp_path / "t"
    assert Tracking("tensorboard", str(folder)).environment() == {"TENSORBOARD_LOGGING_DIR": str(folder)}
    wandb = Tracking("wandb", str(folder), project="kd", name="p1").environment()
    assert wandb == {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_PROJECT": "kd", "WANDB_NAME": "p1"}
    mlflow = Tracking("mlflow", str(folder), project="kd").environment()
    assert mlflow == {"MLFLOW_TRACKING_URI": f"file:{folder}/mlruns", "MLFLOW_EXPERIMENT_NAME": "kd"}
    assert Tracking("none", str(folder)).environment() == {} and Tracking("none", str(folder)).report_to() == []
    with pytest.raises(ValueError, match="tracking.backend: 'neptune'"):
        Tracking("neptune", str(folder))


def test_config_tracking_block_defaults_and_a_bad_backend_names_the_key():
    from kdsweep.core.config import ConfigError

    def config(**tracking):
        cfg = {
            "run_name": "t",
            "glue": {"tasks": ["mnli"], "source": "synthetic", "teacher": {"model": "x"}, "student": {"model": "y"}},
        }
        cfg["glue"]["distill"] = {"sweep": {"learning_rate": [1e-3]}}
        return cfg | ({"tracking": tracking} if tracking else {})

    assert validate_config(config())["tracking"] == {"backend": "tensorboard", "project": "kdsweep"}
    assert validate_config(config(backend="wandb", project="kd"))["tracking"] == {"backend": "wandb", "project": "kd"}
    with pytest.raises(ConfigError, match=r"tracking\.backend: 'neptune' is not one of"):
        validate_config(config(backend="neptune"))
    with pytest.raises(ConfigError, match=r"tracking: Additional properties are not allowed \('dir'"):
        validate_config(config(dir="x"))


def test_the_training_commands_take_the_tracking_arguments_apart_from_the_spec(tmp_path):
    from kdsweep.cli import _tracking, build_parser
    from kdsweep.core.paths import RunPaths

    folder = RunPaths(str(tmp_path / "results" / "r")).tracking_dir("mnli", "p1")
    assert folder == str(tmp_path / "results" / "r" / "tracking" / "mnli" / "p1")
    paths = ["--model-out", "m", "--log-out", "l", "--checkpoints", "k", "--data-dir", "d", "--tokenizer", "t"]
    args = build_parser().parse_args(["finetune-teacher", "--task", "mnli", *paths, "--tracking-dir", folder])
    assert _tracking(args) == Tracking("tensorboard", folder, "kdsweep", "mnli/p1")
    args = build_parser().parse_args(
        ["finetune-teacher", "--task", "mnli", *paths, "--tracking-dir", folder, "--tracking-backend", "none"]
    )
    assert _tracking(args).backend == "none" and args.spec == {}
    assert _tracking(build_parser().parse_args(["finetune-teacher", "--task", "mnli", *paths])) is None
    evaluate = ["evaluate", "--task", "mnli", "--model", "m", "--data-dir", "d", "--out", "o", "--name", "n"]
    build_parser().parse_args(evaluate)
    with pytest.raises(SystemExit):  # only the training commands take them
        build_parser().parse_args([*evaluate, "--tracking-dir", folder])


@pytest.mark.parametrize("packing", [False, True])
def test_translation_teacher_logs_response_tokens_per_step(tmp_path, packing):
    """The LM family's items are response tokens: over one epoch the tokens logged per step add up
    to the train split's response tokens (counted here from the encoded pairs), packed or not."""
    from tiny import DEMO_PROMPT, lm_training, tiny_llama

    from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
    from kdsweep.translation.generation import load_lm_tokenizer
    from kdsweep.translation.prompt import make_prompt
    from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
    from kdsweep.translation.teacher import TeacherLMSpec, train_teacher_lm, translation_examples
    from kdsweep.translation.tokenizer import train_bpe_tokenizer

    write_synthetic_europarl(tmp_path / "raw", SynthesizeEuroparlSpec(size=60, seed=3))
    prepare_translation(
        tmp_path / "data",
        PrepareTranslationSpec(source="synthetic", dev_size=8, test_size=8),
        local_dir=tmp_path / "raw",
    )
    rows = read_jsonl(tmp_path / "data" / "train.jsonl")
    train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], tmp_path / "tok", 300)
    training = lm_training(epochs=1, batch_size=8, logging_steps=1, eval_steps=1000, save_steps=1000)
    spec = TeacherLMSpec(
        tiny_llama(1), {"learning_rate": 1e-3, "training": training}, DEMO_PROMPT, max_length=96, packing=packing
    )
    folder = tmp_path / "tracking"
    tracking = Tracking("tensorboard", str(folder), name="europarl/teacher")
    train_teacher_lm(str(tmp_path / "tok"), tmp_path / "data", tmp_path / "teacher", tmp_path / "log.jsonl",
                     tmp_path / "ckpt", spec, tracking)  # fmt: skip

    tok = load_lm_tokenizer(str(tmp_path / "tok"))
    train = translation_examples(tmp_path / "data" / "train.jsonl", tok, make_prompt(tok, DEMO_PROMPT), 96)
    response_tokens = sum(len(ids) - start for ids, start in zip(train.input_ids, train.response_starts, strict=True))
    acc = events(folder)
    logged = scalars(acc, "train/tokens_per_step")
    assert sum(v for _, v in logged) == response_tokens
    train_logs = [h for h in read_jsonl(tmp_path / "log.jsonl") if "loss" in h]
    assert [(h["step"], h["tokens_per_step"]) for h in train_logs] == logged
    assert all(h["tokens_per_second"] > 0 for h in train_logs)
    assert [v for _, v in scalars(acc, "train/loss")] == pytest.approx([h["loss"] for h in train_logs], rel=1e-6)
    setup = acc.Tensors("setup/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| items | tokens |" in setup and "examples_per_step" not in setup


@pytest.mark.parametrize(
    ("gpu", "items", "mfu"),
    [("NVIDIA H200", "tokens", True), ("NVIDIA A100-SXM4-80GB", "tokens", True), ("Tesla V100", "tokens", False)]
    + [("NVIDIA H100 80GB HBM3", "examples", False)],
)
def test_on_cuda_the_peak_memory_and_the_mfu_of_known_gpus(monkeypatch, gpu, items, mfu):
    """No GPU here: the CUDA calls are stood in for. MFU = 6 x trainable params x tokens/s / (peak x
    processes), for token items on a GPU of the table only."""
    from types import SimpleNamespace

    from kdsweep.core.tracking import PEAK_BF16_FLOPS, TrainingMeter

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 5))  # 110 + 55 parameters
    model[1].requires_grad_(False)  # frozen: not counted
    trainer = SimpleNamespace(args=SimpleNamespace(device=torch.device("cuda", 0), world_size=2), model=model)
    meter = TrainingMeter(trainer, items)
    for step, n in ((1, 600), (1, 600), (2, 400)):  # step 1's count comes with each of its micro-batches
        meter.count(step, torch.tensor(n))
    meter.steps, meter.seconds = 2, 0.5
    out = meter.take()
    assert out[f"{items}_per_step"] == 500 and out[f"{items}_per_second"] == 2000
    assert out["peak_gpu_memory_gib"] == 3
    peak = next(v for k, v in PEAK_BF16_FLOPS.items() if k in gpu) if mfu else None
    assert out.get("mfu") == (pytest.approx(6 * 110 * 2000 / (peak * 2)) if mfu else None)
    assert meter.take() == {}  # reset: nothing since this log


def test_a_changed_backend_reruns_no_finished_job(tmp_path):
    """The rules pass --tracking-* from a params function taking `output`: Snakemake counts such
    params as derived and leaves them out of its params rerun trigger (checked here on a one-rule
    workflow; a plain params function, for contrast, reruns)."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    rules = [(REPO / "workflow" / "rules" / name).read_text() for name in ("glue.smk", "translation.smk")]
    tracking_params = [line.strip() for text in rules for line in text.splitlines() if "tracking=" in line]
    assert len(tracking_params) == 4  # the four training rules
    assert all(re.match(r"tracking=lambda w, output: tracking_args\(P\.tracking_dir\(", p) for p in tracking_params)

    (tmp_path / "Snakefile").write_text(
        'rule a:\n    output: "out.txt"\n    params:\n'
        '        tracking=lambda w, output: ["--tracking-backend", config["backend"]],\n'
        '        plain=lambda w: config["other"],\n'
        '    shell: "echo {params.tracking:q} {params.plain} > {output}"\n'
    )

    def snakemake(*args, backend="tensorboard", other=1):
        command = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
        command += ["--config", f"backend={backend}", f"other={other}"]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    snakemake()
    assert "Nothing to be done" in snakemake("-n", backend="none")
    assert "Params have changed" in snakemake("-n", other=2)


def test_mfu_counts_a_zero3_partitioned_parameter_at_its_full_size():
    """Under ZeRO-3 a parameter's own tensor is empty (DeepSpeed keeps its size in ds_numel): the
    MFU's parameter count must not drop to 0 there; frozen parameters do not count."""
    from kdsweep.core.tracking import trainable_parameters

    model = torch.nn.Linear(4, 3)  # 12 + 3
    assert trainable_parameters(model) == 15
    model.weight.data = torch.empty(0)  # what ZeRO-3 leaves in the module
    model.weight.ds_numel = 12
    model.bias.requires_grad_(False)
    assert trainable_parameters(model) == 12
