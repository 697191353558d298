"""Experiment tracking of the training jobs: TensorBoard event files by default, offline.

Each training job (teacher fine-tuning, student distillation) writes one run into its own folder,
results/<run>/tracking/<task>/<name> (RunPaths.tracking_dir; name: the sweep point or "teacher").
The folder is not a Snakemake output: like the checkpoints it survives a failed or preempted job,
so the resumed job appends to it; a job that starts over clears it (one history per job).

The backend (config `tracking.backend`) is handed to the job on its own (--tracking-backend), not
in its spec: another backend never makes a job start over. transformers' own integrations write
the logs (report_to), on the main process only, in offline modes set here:

    tensorboard  TENSORBOARD_LOGGING_DIR=<dir> (transformers 5 has no logging_dir argument)
    wandb        WANDB_MODE=offline, WANDB_DIR=<dir>, WANDB_PROJECT=<project>   (pip install wandb)
    mlflow       MLFLOW_TRACKING_URI=file:<dir>/mlruns, MLFLOW_EXPERIMENT_NAME=<project>   (pip install mlflow)
    none         nothing is written

What is logged: every training log of the Trainer (loss and its parts loss_kd/loss_ce/loss_cos,
learning_rate, grad_norm; eval_loss), plus what TrainingMeter adds to it (also in log.jsonl):
items per optimizer step and per second (examples for GLUE, response tokens for translation) and,
on CUDA, the peak GPU memory and the MFU. At the start, the setup (world size, precision, ZeRO
stage, items per step where known) as TensorBoard text and step-0 scalars.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb", "mlflow", "none")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # backend -> pip package

# Peak dense bf16 tensor-core FLOP/s per GPU (vendor data sheets, without sparsity), by a name
# that torch.cuda.get_device_name contains. Unknown GPUs (and the CPU) get no MFU.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


def trainable_parameters(model) -> int:
    """The model's trainable parameters; under ZeRO-3 a partitioned parameter's own tensor is
    empty, DeepSpeed keeps its full size in ds_numel."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Tracking:
    """Where and how one training job logs: the backend (config tracking.backend), its folder
    (RunPaths.tracking_dir), the project (tracking.project) and the run's name."""

    backend: str
    directory: str
    project: str = "kdsweep"
    name: str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"tracking.backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")

    def check(self) -> None:
        """Fail at the job's start when the backend's package is not installed, saying what to do."""
        package = PACKAGES.get(self.backend)
        if package and importlib.util.find_spec(package) is None:
            raise RuntimeError(
                f"tracking.backend is {self.backend!r}, but the {package} package is not installed: "
                f"pip install {package} (it is not in kdsweep's pinned requirements), or set tracking.backend "
                "to tensorboard or none"
            )

    def report_to(self) -> list[str]:
        """TrainingArguments.report_to: transformers' integration of the backend."""
        return [] if self.backend == "none" else [self.backend]

    def environment(self) -> dict[str, str]:
        """The variables transformers' integrations (and wandb, mlflow) read: offline, into the job's folder."""
        directory = str(Path(self.directory).resolve())
        if self.backend == "tensorboard":
            return {"TENSORBOARD_LOGGING_DIR": directory}
        if self.backend == "wandb":
            env = {"WANDB_MODE": "offline", "WANDB_DIR": directory, "WANDB_PROJECT": self.project}
            return env | ({"WANDB_NAME": self.name} if self.name else {})
        if self.backend == "mlflow":
            return {"MLFLOW_TRACKING_URI": f"file:{directory}/mlruns", "MLFLOW_EXPERIMENT_NAME": self.project}
        return {}

    def prepare(self, resume: bool) -> None:
        """On the main process, before training: a job that starts over (resume False) clears the
        folder of its earlier runs; a resumed one appends to it."""
        if self.backend == "none":
            return
        folder = Path(self.directory)
        if not resume and folder.exists():
            log.info("%s: the job starts over: clearing its earlier tracking logs", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak dense bf16 FLOP/s, if it is in PEAK_BF16_FLOPS (None on the CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


class TrainingMeter(TrainerCallback):
    """Throughput of the training between two logs, from the items the DistillTrainer counts
    (num_items_in_batch: a global batch's items over every process and accumulation step,
    counted once per optimizer step) and the wall time of the optimizer steps (evaluation and
    checkpoint saving left out). `take` gives the values the next training log gets:

        <items>_per_step     items per optimizer step (the global batch's, averaged)
        <items>_per_second   items per second, all processes together
        peak_gpu_memory_gib  torch.cuda.max_memory_allocated of the main process (CUDA only)
        mfu                  6 x trainable parameters x tokens/s / (peak FLOP/s x processes): token
                             items on a GPU in PEAK_BF16_FLOPS only. Response tokens only (the
                             prompt's forward pass is not counted): a lower bound.

    <items> is the loss object's `items` ("examples", "tokens"; "items" when it names none). At
    the start it writes the setup to TensorBoard (text "setup" and step-0 scalars "setup/...")."""

    def __init__(self, trainer, items: str = "items"):
        self.trainer = trainer
        self.items_name = items
        self.items: torch.Tensor | int = 0
        self.counted_step: int | None = None
        self.steps = 0
        self.seconds = 0.0
        self.mark: float | None = None

    def count(self, step: int, num_items_in_batch) -> None:
        """Called by compute_loss on every training micro-batch: counts each optimizer step's items once."""
        if num_items_in_batch is None or step == self.counted_step:
            return
        self.counted_step = step
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.detach()  # summed on the device: no host sync per step
        self.items = self.items + num_items_in_batch

    def _restart_clock(self) -> None:
        self.mark = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.items, self.counted_step, self.steps, self.seconds = 0, None, 0, 0.0
        self._restart_clock()
        if state.is_world_process_zero:
            self.write_setup(args, state.global_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.mark is not None:
            self.seconds += now - self.mark
        self.mark = now
        self.steps += 1
        return control

    # evaluation and checkpoint saving (between two steps) are not training time
    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_clock()
        return control

    def on_save(self, args, state, control, **kwargs):
        self._restart_clock()
        return control

    def take(self) -> dict[str, float]:
        """The values of the training log being written (every process calls it: log is collective-free)."""
        if not self.steps:
            return {}
        items = float(self.items.item() if isinstance(self.items, torch.Tensor) else self.items)
        out = {f"{self.items_name}_per_step": items / self.steps}
        if self.seconds > 0:
            out[f"{self.items_name}_per_second"] = items / self.seconds
        device = self.trainer.args.device
        if device.type == "cuda":
            out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            peak = peak_flops(device)
            if peak and self.items_name == "tokens" and self.seconds > 0:
                params = trainable_parameters(self.trainer.model)
                world = self.trainer.args.world_size
                out["mfu"] = 6 * params * out["tokens_per_second"] / (peak * world)
        self.items, self.steps, self.seconds = 0, 0, 0.0
        return out

    def setup(self, args) -> dict:
        """What the job runs on: world size, precision, ZeRO stage, items per optimizer step (known
        up front for examples: the global batch)."""
        from kdsweep.core.trainer import run_record  # here: trainer.py imports this module

        run = run_record(self.trainer)
        setup = {
            "world_size": run["world_size"],
            "precision": run["precision"],
            "zero_stage": "none" if run["zero_stage"] is None else run["zero_stage"],
            "items": self.items_name,
        }
        if self.items_name == "examples":
            setup["examples_per_step"] = (
                args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            )
        return setup

    def write_setup(self, args, step: int) -> None:
        """The setup as TensorBoard text and step-0 scalars, through transformers' TensorBoardCallback's
        writer (created by its on_train_begin, which runs before this one). A resumed job (from
        the checkpoint of `step`) first marks a restart at step + 1: TensorBoard drops what the
        interrupted run had logged after its checkpoint, which this run logs again."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from transformers.integrations import TensorBoardCallback

        writers = [
            cb.tb_writer
            for cb in self.trainer.callback_handler.callbacks
            if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None
        ]
        if not writers:
            return
        if step > 0:
            start = Event(wall_time=time.time(), step=step + 1, session_log=SessionLog(status=SessionLog.START))
            writers[0]._get_file_writer().add_event(start)
        setup = self.setup(args)
        text = "\n".join(f"| {key} | {value} |" for key, value in setup.items())
        writers[0].add_text("setup", "| setting | value |\n| --- | --- |\n" + text, 0)
        for key, value in setup.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writers[0].add_scalar(f"setup/{key}", value, 0)
        writers[0].flush()
