"""The trainer shared by teacher fine-tuning and student distillation: a Hugging Face Trainer
whose compute_loss adds the teacher's signal, so checkpoints, resume and DeepSpeed come with it.

Fine-tuning is the same code with alpha = 0 and no teacher. The per-step log (train loss and its
KD/CE/cosine parts, eval loss, learning rate, throughput) is written to log.jsonl for the report,
and to the job's tracking backend (kdsweep.core.tracking: TensorBoard by default).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import torch
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from kdsweep.core import provenance
from kdsweep.core.io import apply_umask, atomic_path, read_json, sha256_file, sha256_json, write_json, write_jsonl
from kdsweep.core.precision import training_precision
from kdsweep.core.progress import ProgressLines
from kdsweep.core.tracking import Tracking, TrainingMeter

log = logging.getLogger(__name__)


class DistillLoss(Protocol):
    """What a family gives the DistillTrainer: the loss of one micro-batch."""

    def prepare(self, device: torch.device) -> None:
        """Place what the loss holds (an online teacher) on the training device."""

    def __call__(
        self, trainer: Trainer, model, inputs: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, object]:
        """(the loss summed over the micro-batch's items, its parts summed (logged as loss_<part>),
        the number of items, the model outputs). `inputs` is the collated batch; the loss pops
        the teacher's fields from it."""


class DistillTrainer(Trainer):
    """The Trainer of every stage that trains (teacher fine-tuning, student distillation) in
    both families. What differs is the loss object (`loss`, a DistillLoss): GLUE's classification
    KD (kdsweep.glue.loss) or the token-level top-k KD (kdsweep.translation.loss); with alpha = 0
    either is the plain cross-entropy of fine-tuning. Batches carry the teacher's cached outputs;
    evaluation batches have none, and the loss objects then return the student's cross-entropy.

    Normalization: `loss_terms` returns the loss summed over the micro-batch's items (GLUE
    examples; response tokens for LMs) and their count. In training the sum is divided by the
    items of the whole global batch, which the Trainer counts (labels != -100, over the
    gradient-accumulation steps and all processes) and passes as num_items_in_batch: every item
    weighs the same whatever the number of GPUs or accumulation steps, so short (packed)
    micro-batches do not weigh more. Evaluation takes each batch's own mean.

    `tracking` (kdsweep.core.tracking): where the job's logs go besides log.jsonl (TensorBoard,
    offline wandb or MLflow, through transformers' integrations; None: nowhere). The training
    logs get the throughput (TrainingMeter) whatever the backend."""

    def __init__(self, *args, loss: DistillLoss, tracking: Tracking | None = None, **kwargs):
        self.tracking = tracking
        if tracking is not None:  # before the Trainer creates its integrations' callbacks from report_to
            tracking.check()
            os.environ.update(tracking.environment())
            kwargs["args"].report_to = tracking.report_to()
            if tracking.name:
                kwargs["args"].run_name = tracking.name  # wandb's and MLflow's run name
        super().__init__(*args, **kwargs)
        # compute_loss uses num_items_in_batch (so the Trainer counts it and does not divide by
        # the accumulation steps itself).
        self.model_accepts_loss_kwargs = True
        self.loss = loss
        loss.prepare(self.args.device)
        self._part_sums: dict[str, torch.Tensor] = {}
        self._part_steps: set[int] = set()  # the optimizer steps (global_step values) summed in _part_sums
        self.health = TrainingHealth(self)
        self.add_callback(self.health)
        self.meter = TrainingMeter(self, getattr(loss, "items", "items"))
        self.add_callback(self.meter)
        metric = self.args.metric_for_best_model
        if self.args.load_best_model_at_end and metric != "eval_loss" and self.compute_metrics is None:
            raise ValueError(f"training.best_metric: this stage computes no {metric} (only eval_loss)")

    def evaluate(self, *args, **kwargs):
        """Evaluation draws no random numbers from the training's generators (a DataLoader iterator
        takes its seed from the global one), so when it runs (eval_steps) cannot change the
        trained weights, and a resumed job whose eval_steps changed ends where it would have."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(*args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Several CPU processes without DeepSpeed: accelerate names each one's device "cpu:0",
        and the Trainer loads the optimizer state with map_location=args.device, which torch.load
        cannot restore to ("don't know how to restore data location ... (tagged with cpu:0)"):
        the resume would fail. The state is loaded to plain "cpu" instead (the same memory)."""
        device = self.args.device
        if device.type != "cpu" or device.index is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        self.args.__dict__["_setup_devices"] = torch.device("cpu")  # TrainingArguments.device's cache
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            self.args.__dict__["_setup_devices"] = device

    def _load_best_model(self):
        """keep: best under DeepSpeed after a resume through a universal checkpoint: the engine
        reads every checkpoint as universal then, but only those written by another number of
        processes were converted (_train_and_save); one written by this run is read as it is."""
        engine = self.model_wrapped
        if not self.is_deepspeed_enabled or not hasattr(engine, "_config"):
            return super()._load_best_model()
        was = engine._config.load_universal_checkpoint
        engine._config.load_universal_checkpoint = (
            Path(self.state.best_model_checkpoint) / "latest_universal"
        ).is_file()
        try:
            return super()._load_best_model()
        finally:
            engine._config.load_universal_checkpoint = was

    def loss_terms(self, model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, object]:
        """The loss summed over the micro-batch's items, its parts (summed, for the log), the
        number of items and the model outputs: the family's loss object computes them."""
        return self.loss(self, model, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        total, parts, count, outputs = self.loss_terms(model, inputs)
        if model.training and num_items_in_batch is not None:
            # DDP and DeepSpeed average the gradients over processes: undo it, so the gradient is
            # that of (the global batch's sum) / (its items).
            denominator, scale = num_items_in_batch, self.accelerator.num_processes
        else:
            denominator, scale = max(count, 1), 1
        loss = total * scale / denominator
        if model.training:
            self.health.record(loss)
            self.meter.count(self.state.global_step, num_items_in_batch)
            for k, v in parts.items():  # tensors: no host sync per micro-batch
                self._part_sums[k] = self._part_sums.get(k, 0.0) + v.detach().double() / denominator
            self._part_steps.add(self.state.global_step)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training logs get the loss parts (loss_kd, loss_ce, loss_cos): each the mean per item
        over the optimizer steps since the last log, summed over processes like the loss; and
        the throughput since the last log (TrainingMeter.take)."""
        if "loss" in logs:
            logs.update(self.meter.take())
        if "loss" in logs and self._part_sums:
            names, steps = sorted(self._part_sums), len(self._part_steps)
            sums = torch.stack([torch.as_tensor(self._part_sums[k]).double().reshape(()) for k in names]).to(
                self.args.device
            )
            if self.accelerator.num_processes > 1:  # every process logs at the same steps
                sums = self.accelerator.reduce(sums, reduction="sum")
            logs.update({f"loss_{k}": v / steps for k, v in zip(names, sums.tolist(), strict=True)})
            self._part_sums, self._part_steps = {}, set()
        super().log(logs, *args, **kwargs)


MAX_SKIPPED_FRACTION = 0.5  # of this run's optimizer steps (fp16 loss scaling skips a few at the start)


class TrainingDiverged(RuntimeError):
    """The training's loss went non-finite, or most of its optimizer steps were skipped: the
    model is not written (a rerun with the same settings would diverge the same way)."""


def health_problem(micro_batches: int, nonfinite: int, last_nonfinite: bool, steps: int, skipped: int) -> str | None:
    """Why a finished training must not be called done, from its counts over every process: the
    loss of its last micro-batch is non-finite (the weights are broken), or more than
    MAX_SKIPPED_FRACTION of its micro-batches had a non-finite loss or of its optimizer steps were
    skipped (fp16 overflow: DeepSpeed or AMP's loss scaler); None when it is healthy."""
    problems = []
    if last_nonfinite:
        problems.append("the loss of the last step is non-finite")
    if micro_batches and nonfinite > MAX_SKIPPED_FRACTION * micro_batches:
        problems.append(f"the loss was non-finite on {nonfinite} of {micro_batches} micro-batches")
    if steps and skipped > MAX_SKIPPED_FRACTION * steps:
        problems.append(f"{skipped} of {steps} optimizer steps were skipped (non-finite gradients, fp16 overflow)")
    return "; ".join(problems) or None


class TrainingHealth(TrainerCallback):
    """Counts, during one run of train(), the micro-batches whose training loss is not finite
    (without a host sync per micro-batch) and the optimizer steps skipped by fp16 loss scaling;
    `problem()` sums them over the processes (every process gets the same verdict)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.nonfinite: torch.Tensor | None = None
        self.last_nonfinite: torch.Tensor | None = None
        self.micro_batches = self.steps = self.skipped = 0

    def record(self, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).sum()
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite + bad
        self.last_nonfinite = bad
        self.micro_batches += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.trainer.accelerator.optimizer_step_was_skipped:
            self.skipped += 1
        return control

    def problem(self) -> str | None:
        device = self.trainer.args.device
        zero = torch.zeros((), device=device, dtype=torch.long)
        counts = torch.stack(
            [
                torch.tensor(self.micro_batches, device=device),
                (self.nonfinite if self.nonfinite is not None else zero).to(device).long(),
                (self.last_nonfinite if self.last_nonfinite is not None else zero).to(device).long(),
                torch.tensor(self.steps, device=device),
                torch.tensor(self.skipped, device=device),
            ]
        )
        if self.trainer.accelerator.num_processes > 1:
            counts = self.trainer.accelerator.reduce(counts, reduction="sum")
        micro, bad, last, steps, skipped = counts.tolist()
        procs = self.trainer.accelerator.num_processes
        return health_problem(micro, bad, last > 0, steps // procs, skipped // procs)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(global_batch: int, accumulation: int, devices: int) -> int:
    """training.batch_size is the global batch: per device x devices x accumulation steps."""
    per_device, rest = divmod(global_batch, devices * accumulation)
    if per_device < 1 or rest:
        raise ValueError(
            f"training.batch_size {global_batch} is not a multiple of devices ({devices}) x "
            f"gradient_accumulation_steps ({accumulation})"
        )
    return per_device


# training.best_metric -> the Trainer's metric_for_best_model (a key of evaluate()'s metrics)
BEST_METRICS = {"eval_loss": "eval_loss", "accuracy": "eval_accuracy"}
GREATER_IS_BETTER = frozenset({"eval_accuracy"})


def training_arguments(
    train_cfg: dict,
    learning_rate: float,
    output_dir: str | Path,
    eval_batch_size: int = 128,
    deepspeed_config: str | None = None,
) -> TrainingArguments:
    """TrainingArguments from the config's `training` block (and a DeepSpeed JSON, if any).
    Mixed precision from the device (precision.py): bf16 where native, fp16 with loss scaling on
    other GPUs, fp32 on the CPU, unless training.precision says otherwise. training.keep: best is
    the Trainer's load_best_model_at_end on training.best_metric (accuracy: the Trainer needs the
    family's compute_metrics, and gathers the dev logits for it)."""
    accum = train_cfg["gradient_accumulation_steps"]
    per_device = per_device_batch(train_cfg["batch_size"], accum, world_size())
    cuda = torch.cuda.is_available()
    precision = training_precision(train_cfg.get("precision", "auto"))
    best = train_cfg.get("keep", "last") == "best"
    metric = BEST_METRICS[train_cfg.get("best_metric", "eval_loss")]
    args = TrainingArguments(
        output_dir=str(output_dir),
        logging_nan_inf_filter=False,  # a non-finite loss shows in the log (and fails the job: TrainingHealth)
        learning_rate=learning_rate,
        num_train_epochs=train_cfg["epochs"],
        max_steps=train_cfg["max_steps"],
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=eval_batch_size,
        gradient_accumulation_steps=accum,
        weight_decay=train_cfg["weight_decay"],
        # transformers 5: a float below 1 in warmup_steps is the share of the steps (warmup_ratio is gone)
        warmup_steps=float(train_cfg["warmup_ratio"]),
        lr_scheduler_type=train_cfg["lr_scheduler"],
        logging_steps=train_cfg["logging_steps"],
        eval_strategy="steps",
        eval_steps=train_cfg["eval_steps"],
        save_strategy="steps",
        save_steps=train_cfg["save_steps"],
        save_total_limit=train_cfg["save_total_limit"],
        # keep: best (the best one is kept by save_total_limit's rotation, loaded at the end of train())
        load_best_model_at_end=best,
        metric_for_best_model=metric if best else None,
        greater_is_better=metric in GREATER_IS_BETTER if best else None,
        seed=train_cfg["seed"],
        data_seed=train_cfg["seed"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        report_to=[],
        average_tokens_across_devices=True,  # num_items_in_batch counts every process's items (DistillTrainer)
        remove_unused_columns=False,
        prediction_loss_only=not (best and metric != "eval_loss"),  # accuracy needs the dev logits
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        deepspeed=deepspeed_config,
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,
    )
    if world_size() == 1 and args.n_gpu > 1:
        # One process that sees several GPUs (a stage started without kdsweep.cluster.launch) trains on one,
        # not with DataParallel: the response-row hooks and the per-item normalization assume one
        # model replica per process. Several GPUs: python -m kdsweep.cluster.launch (one process per GPU).
        args._n_gpu = 1
    return args


def process_rank(args: TrainingArguments) -> tuple[int, int]:
    """(rank, number of processes) of the job, its process group set up (as the Trainer would)."""
    args.device  # noqa: B018 (TrainingArguments._setup_devices: torch.distributed's process group)
    return args.process_index, args.world_size


COMPLETE_MARKER = "kdsweep-complete"
# Slurm: preemption / time limit (--signal=USR1@<s>); a terminal's Ctrl-C (forwarded by kdsweep.cluster.launch)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
LOCK_FILE = "kdsweep.lock"  # in the checkpoint folder; not a checkpoint (those are checkpoint-<step>/)


class Preempted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; a rerun resumes from it."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {checkpoint}; rerun to resume")


class CheckpointGuard(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has fully written it (a checkpoint killed
    mid-write is never resumed), and turns SIGTERM/SIGUSR1/SIGINT into "save a checkpoint at the end
    of this step and stop". A repeated signal changes nothing (kdsweep.cluster.launch and torchrun may both
    forward one Ctrl-C); kdsweep.cluster.launch kills the job on a second Ctrl-C."""

    def __init__(self):
        self.signum: int | None = None  # received by this process (set by the handler, any time)
        self.stopped: int | None = None  # agreed by every process at a step's end: training stopped
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._request_stop)

    def _request_stop(self, signum, frame) -> None:
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.signum = signum

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed state carries the checkpoint's logging/eval/save steps: this run's settings win.
        state.compute_steps(args, state.max_steps)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # The ranks agree at every step (one 1-element all-reduce): Slurm's signal may reach them
        # on different sides of a step boundary, or reach one rank only. A rank that saved alone
        # would wait in the checkpoint's collectives while the others ran the next step's
        # all-reduce: the job would hang until a collective time-out.
        self.stopped = agreed_stop(self.signum, args.device)
        if self.stopped is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER).touch()
        return control


def agreed_stop(signum: int | None, device: torch.device) -> int | None:
    """The stop request of any process (the largest signal number received by a rank), for every
    process; `signum` itself outside a distributed run."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return signum
    if torch.distributed.get_world_size() == 1:
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) or None


def ranks_by_host() -> dict[str, list[int]]:
    """{hostname: [rank, ...]} of the job's processes (every process must call it)."""
    host = socket.gethostname()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {host: [0]}
    hosts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(hosts, host)
    by_host: dict[str, list[int]] = {}
    for rank, name in enumerate(hosts):
        by_host.setdefault(name, []).append(rank)
    return by_host


def lock_checkpoint_dir(path: str | Path):
    """Hold an exclusive lock on <path>/kdsweep.lock while the returned file is open: the kernel
    releases it when the holder exits or dies (even by SIGKILL). A second holder, e.g. a rerun
    while processes of an earlier run still train and write checkpoints there, gets a RuntimeError
    naming the folder and the process that holds it. Creates the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / LOCK_FILE, "a+")  # "a+": the holder's record stays until we hold the lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RuntimeError(
            f"{path} is in use by {holder}, a training still running there (an earlier run?): "
            "wait for it or stop it, then rerun"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    return lock


def last_complete_checkpoint(output_dir: str | Path, remove_incomplete: bool = False) -> str | None:
    """The newest checkpoint marked complete; incomplete ones (killed mid-write) are skipped,
    and removed with remove_incomplete."""
    names = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for path in sorted(names, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (path / COMPLETE_MARKER).is_file():
            return str(path)
        log.warning("%s was not completely written, %s", path, "removing it" if remove_incomplete else "skipping it")
        if remove_incomplete:
            shutil.rmtree(path)
    return None


# Settings that change how a job runs, not what it computes (up to float rounding): a rerun that
# changes only these resumes the job's checkpoints, and says so. Matched on the setting's own name
# (the last key of its path in the job spec). Any other change (data, cache key, learning rate,
# alpha, T, loss, tail, seed, global batch, schedule, model, a DeepSpeed JSON of one's own) starts
# over; so does another precision or another DeepSpeed JSON content (the job's run record). The
# number of processes and the ZeRO stage (distributed.cpu_processes, distributed.deepspeed) are
# checked on their own: see check_world.
RESUME_SAFE_KEYS = frozenset(
    {
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "chunk_size",
        "eval_batch_size",
        "gradient_accumulation_steps",  # the global batch and the per-item normalization stay
        "packing",
        "cpu_processes",
        "deepspeed",
    }
)


def spec_changes(old, new, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object, object]]:
    """The settings that differ between two job specs: (key path, old value, new value)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += spec_changes(old.get(key), new.get(key), (*path, str(key)))
        return out
    return [] if old == new else [(path, old, new)]


def describe_changes(changes: list[tuple[tuple[str, ...], object, object]]) -> str:
    return "; ".join(f"{'.'.join(path)}: {old!r} -> {new!r}" for path, old, new in changes)


def result_changes(old: dict, new: dict) -> list[tuple[tuple[str, ...], object, object]]:
    """The changes that alter the result: spec_changes outside RESUME_SAFE_KEYS."""
    return [change for change in spec_changes(old, new) if change[0][-1] not in RESUME_SAFE_KEYS]


def describe_world(run: dict) -> str:
    stage = run.get("zero_stage")
    return f"{run['world_size']} process(es) with " + (
        f"DeepSpeed ZeRO-{stage}" if stage is not None else "no DeepSpeed"
    )


# ZeRO stages whose partitioned checkpoints DeepSpeed converts to a universal checkpoint, which
# loads into any number of processes (deepspeed.checkpoint.ds_to_universal). Tested: stage 2.
UNIVERSAL_STAGES = (1, 2)


def check_world(previous: dict, current: dict, checkpoint: str) -> None:
    """A checkpoint written by another number of processes resumes: without DeepSpeed the
    optimizer state is whole; with ZeRO-1/2 it is converted to a DeepSpeed universal checkpoint
    first (to_universal); the data position is counted in global batches either way. Another ZeRO
    stage, or ZeRO-3 with another number of processes, fails here, saying what to do, before any
    training."""
    keys = ("world_size", "zero_stage")
    if all(previous.get(k) == current.get(k) for k in keys):
        return
    stage = current.get("zero_stage")
    if previous.get("zero_stage") == stage and (stage is None or stage in UNIVERSAL_STAGES):
        log.warning(
            "resuming %s, written by %s, with %s%s",
            checkpoint,
            describe_world(previous),
            describe_world(current),
            "" if stage is None else " (through a DeepSpeed universal checkpoint)",
        )
        return
    raise RuntimeError(
        f"{checkpoint} was written by {describe_world(previous)}; this job runs {describe_world(current)}. "
        "DeepSpeed cannot resume a ZeRO-3 checkpoint with another number of processes, nor a checkpoint "
        "of another ZeRO stage: rerun with the same GPUs (KDSWEEP_DISTILL_GPUS, distributed.cpu_processes) "
        f"and deepspeed stage, or delete {Path(checkpoint).parent} to start over"
    )


def resumed_best_checkpoint(checkpoint: str | Path) -> Path | None:
    """The best checkpoint (keep: best) that `checkpoint`'s trainer_state.json names, if it is
    another one and still there; found in the same folder (the state holds the path it had)."""
    best = read_json(Path(checkpoint) / "trainer_state.json").get("best_model_checkpoint")
    if not best:
        return None
    best = Path(checkpoint).parent / Path(best).name
    return best if best.is_dir() and best.name != Path(checkpoint).name else None


def zero_partitions(checkpoint: str | Path) -> int:
    """How many processes wrote a ZeRO-1/2 checkpoint (one optimizer partition file each)."""
    return len(list(Path(checkpoint).glob("global_step*/*optim_states.pt")))


def to_universal(checkpoint: str | Path) -> None:
    """Convert the ZeRO checkpoint in `checkpoint` (global_step<N>/, partitioned over the
    processes that wrote it) to a DeepSpeed universal checkpoint (global_step<N>_universal/ and
    the `latest_universal` tag), which loads into any number of processes. ds_to_universal writes
    into a scratch folder (it also writes a tag of its own next to its output), which is renamed
    into place, and the tag is written last: a conversion killed midway is redone, never used.
    Done once; the conversion reads the whole optimizer state (about 12 bytes per parameter) on
    the main process while the others wait (within the process group's time-out, ddp_timeout)."""
    checkpoint = Path(checkpoint)
    tag = checkpoint / "latest_universal"
    if tag.is_file() and (checkpoint / tag.read_text().strip()).is_dir():
        return
    (source,) = [p for p in checkpoint.glob("global_step*") if p.is_dir() and not p.name.endswith("_universal")]
    target = checkpoint / f"{source.name}_universal"
    scratch = checkpoint / ".universal-partial"
    log.info("%s: converting the ZeRO checkpoint to a DeepSpeed universal checkpoint", checkpoint)
    for stale in (scratch, target):  # left by a conversion killed midway
        shutil.rmtree(stale, ignore_errors=True)
    workers = str(min(4, os.cpu_count() or 1))
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source)]
    command += ["--output_folder", str(scratch / target.name), "--inject_missing_state"]
    command += ["--num_extract_workers", workers, "--num_merge_workers", workers]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        log.error("ds_to_universal failed:\n%s", done.stderr[-8000:])
        error = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(
            f"{checkpoint}: DeepSpeed could not convert it to a universal checkpoint (to resume with another "
            f"number of processes): {error}. Rerun with the processes that wrote it, or delete "
            f"{checkpoint.parent} to start over"
        )
    apply_umask(scratch / target.name)
    os.replace(scratch / target.name, target)
    shutil.rmtree(scratch)
    with atomic_path(tag) as tmp:
        tmp.write_text(f"{target.name}\n")


RUN_RESULT_KEYS = ("precision", "deepspeed_config")  # in the run record: a change starts over


def checkpoint_plan(output_dir: str | Path, job_spec: dict, run: dict) -> bool:
    """Whether this job may resume the checkpoints in output_dir (False: there are none, or they
    belong to a job with other results and are to be removed). Raises (check_world) when they
    cannot be resumed by this job's processes. Called on the main process only; train_and_save
    hands its answer to the others."""
    output_dir = Path(output_dir)
    last = last_complete_checkpoint(output_dir)
    if last is None:
        return False
    spec_file = output_dir / "job.json"
    if not spec_file.is_file():
        log.warning("%s: checkpoints without a job record, removing them", output_dir)
        return False
    previous = read_json(spec_file)
    if "spec" not in previous or "run" not in previous:  # written before run records existed: the bare spec
        previous = {"spec": previous, "run": None}
    changed = result_changes(previous["spec"], job_spec)
    if previous["run"] is not None:
        changed += [
            (("run", key), previous["run"].get(key), run.get(key))
            for key in RUN_RESULT_KEYS
            if previous["run"].get(key) != run.get(key)
        ]
    if changed:
        log.warning(
            "%s: checkpoints of a job with other settings (%s): removing them", output_dir, describe_changes(changed)
        )
        return False
    if previous["run"] is None:
        log.warning(
            "%s: no record of the processes that wrote %s; resuming with %s", output_dir, last, describe_world(run)
        )
    else:
        check_world(previous["run"], run, last)
    harmless = spec_changes(previous["spec"], job_spec)
    if harmless:
        log.info("resuming despite changed settings that do not change the result: %s", describe_changes(harmless))
    return True


def prepare_checkpoint_dir(
    output_dir: str | Path, job_spec: dict, run: dict, resume: bool, train_batch_size: int | None = None
) -> None:
    """Keep the checkpoints if `resume` (checkpoint_plan), else remove them; record the job's
    spec and run (processes, ZeRO stage, precision, DeepSpeed JSON) in job.json. A resumed
    checkpoint gets this run's per-device batch (`train_batch_size`): the Trainer takes the
    checkpoint's otherwise, which after a change of processes or accumulation steps would change
    the global batch. Called on the main process."""
    output_dir = Path(output_dir)
    if not resume:
        for path in output_dir.glob("checkpoint-*"):
            shutil.rmtree(path)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "job.json", {"spec": job_spec, "run": run})
    last = last_complete_checkpoint(output_dir, remove_incomplete=True)
    if resume and last and train_batch_size is not None:
        state_file = Path(last) / "trainer_state.json"
        state = read_json(state_file)
        if state.get("train_batch_size") != train_batch_size:
            log.info(
                "%s: per-device batch %s -> %s (same global batch)",
                last,
                state.get("train_batch_size"),
                train_batch_size,
            )
            state["train_batch_size"] = train_batch_size
            write_json(state_file, state)


def run_record(trainer: Trainer) -> dict:
    """What the job's processes are: their number, the ZeRO stage, the precision they train in
    and the content of the DeepSpeed JSON (a different one can change the optimizer)."""
    args = trainer.args
    stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
    config = args.deepspeed
    if isinstance(config, (str, Path)):
        config = sha256_file(config)
    elif isinstance(config, dict):
        config = sha256_json(config)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {"world_size": args.world_size, "zero_stage": stage, "precision": precision, "deepspeed_config": config}


def kept_record(trainer: Trainer, final: dict) -> dict:
    """Which step's weights the saved model holds (provenance `kept`): {policy (training.keep),
    step, metric (evaluate()'s key), value}. keep: best: the step of the checkpoint train() loaded
    (state.best_model_checkpoint) and the metric logged at that step; keep: last, or best when no
    evaluation had a finite metric (nothing loaded: the last weights stay): the last step and
    `final`, the evaluation after training."""
    args, state = trainer.args, trainer.state
    metric = args.metric_for_best_model or "eval_loss"
    policy = "best" if args.load_best_model_at_end else "last"
    if policy == "best" and state.best_model_checkpoint is not None:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        logged = [h[metric] for h in state.log_history if h.get("step") == step and metric in h]
        return {"policy": policy, "step": step, "metric": metric, "value": logged[0] if logged else state.best_metric}
    if policy == "best":
        log.warning("keep: best, but no evaluation gave a finite %s: the last step's weights are kept", metric)
    return {"policy": policy, "step": state.global_step, "metric": metric, "value": final.get(metric)}


def train_and_save(
    trainer: DistillTrainer,
    job_spec: dict,
    model_out: str | Path,
    log_out: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    cache=None,
) -> dict:
    """Train (resuming from this job's newest checkpoint in args.output_dir, if any), then write
    the final model and the log history atomically and drop the checkpoints. The model folder
    gets its provenance record, kdsweep.json, before it is renamed into place (kdsweep.core.
    provenance; `cache`: the CacheEntry trained from, if any). On SIGTERM/SIGUSR1/
    SIGINT save a checkpoint and raise Preempted instead: no output is written. The main process
    holds the checkpoint folder's lock (lock_checkpoint_dir) from before it looks at the
    checkpoints to the end: a job whose folder is in use fails before it touches anything."""
    with contextlib.ExitStack() as held:
        return _train_and_save(trainer, job_spec, model_out, log_out, tokenizer, held, cache)


def _train_and_save(trainer, job_spec, model_out, log_out, tokenizer, held: contextlib.ExitStack, cache=None) -> dict:
    guard = CheckpointGuard()
    trainer.add_callback(guard)
    if trainer.args.disable_tqdm:  # no bar (not a terminal): periodic progress lines in the log instead
        trainer.add_callback(ProgressLines())
    checkpoints = trainer.args.output_dir
    main = trainer.is_world_process_zero()
    run = run_record(trainer)
    stage = run["zero_stage"]
    # The main process decides whether to resume, and which checkpoint; the others follow (they
    # might see another file system), or all raise alike.
    decision: list = [None]
    if main:
        try:
            held.enter_context(lock_checkpoint_dir(checkpoints))
            resume = checkpoint_plan(checkpoints, job_spec, run)
            prepare_checkpoint_dir(checkpoints, job_spec, run, resume, trainer.args.train_batch_size)
            if getattr(trainer, "tracking", None) is not None:  # a job that starts over has one history
                trainer.tracking.prepare(resume)
            last = last_complete_checkpoint(checkpoints)
            universal = bool(last) and stage in UNIVERSAL_STAGES and zero_partitions(last) != run["world_size"]
            if universal:
                to_universal(last)
                best = resumed_best_checkpoint(last)  # keep: best loads it at the end: convert it too
                if best is not None and zero_partitions(best) not in (0, run["world_size"]):
                    to_universal(best)
            decision = [("universal" if universal else "ok", last)]
        except Exception as error:  # the other processes wait in the broadcast: never leave them there
            decision = [
                ("error", f"{type(error).__name__}: {error}" if not isinstance(error, RuntimeError) else str(error))
            ]
    (outcome, last), *_ = broadcast_object_list(decision)
    if outcome == "error":
        raise RuntimeError(last)
    if outcome == "universal":  # read by the DeepSpeed engine, which train() creates
        trainer.args.hf_deepspeed_config.config.setdefault("checkpoint", {})["load_universal"] = True
    hosts = ranks_by_host()
    if main:
        log.info(
            "training on %d process(es) (%s), %s",
            run["world_size"],
            trainer.args.device.type,
            f"DeepSpeed ZeRO-{stage}" if stage is not None else "no DeepSpeed",
        )
        log.info("ranks by host: %s", ", ".join(f"{host} {ranks}" for host, ranks in hosts.items()))
    if last:
        log.info("resuming from %s (step %s)", last, last.rsplit("-", 1)[-1])
    trainer.train(resume_from_checkpoint=last)
    # What the processes agreed on, not this process's own flag: a signal after the last step's
    # agreement may reach one rank only, which would leave the others alone in the evaluation's
    # collectives. Such a late signal stops nothing: the model is written.
    if guard.stopped is not None:
        raise Preempted(guard.stopped, last_complete_checkpoint(checkpoints))
    problem = trainer.health.problem()
    if problem:
        raise TrainingDiverged(
            f"training for {model_out} diverged: {problem}. The model is not written. Lower the learning rate, "
            "use bf16 or fp32 (training.precision), or check the data; checkpoints are in "
            f"{checkpoints} (a rerun with other settings starts over)"
        )
    final = trainer.evaluate()  # with keep: best, of the best checkpoint's weights (train() loaded them)
    kept = kept_record(trainer, final)
    # Every process takes part in saving (ZeRO-3 gathers the weights); the main one renames.
    model_out = Path(model_out)
    partial = model_out.with_name(f".{model_out.name}.partial")
    if main:
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    if main:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
        # before the rename
        provenance.write_record(partial, job_spec, run=run, args=trainer.args, cache=cache, kept=kept)
        apply_umask(partial)  # save_model's safetensors weights are 0600: readable as the umask says
        shutil.rmtree(model_out, ignore_errors=True)
        os.replace(partial, model_out)
        write_jsonl(log_out, trainer.state.log_history)
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: nothing left to resume
    trainer.accelerator.wait_for_everyone()
    return trainer.state.log_history[-1]
