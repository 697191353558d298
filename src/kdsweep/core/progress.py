"""Progress of long loops: a tqdm bar on a terminal, plain periodic log lines otherwise.

A bar redrawn with carriage returns makes an unreadable Slurm log, so when the stream is not a
terminal the progress goes to the logger `kdsweep.core.progress` instead (and so into the rule's log
file, with the stages' other lines), at most every `interval` seconds plus one final line:

    cache mnli: 120/400 batches (30%), 12.30 batches/s, elapsed 0:00:10, eta 0:00:23

The interval defaults to $KDSWEEP_PROGRESS_SECONDS (30 seconds when unset). `progress()` wraps a
loop; `ProgressLines` does the same for a Hugging Face Trainer whose own bar is disabled.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm
from transformers import TrainerCallback

log = logging.getLogger(__name__)
T = TypeVar("T")
ENV_INTERVAL = "KDSWEEP_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def default_interval() -> float:
    """Seconds between two progress lines: $KDSWEEP_PROGRESS_SECONDS, or 30."""
    value = os.environ.get(ENV_INTERVAL, "").strip()
    if not value:
        return DEFAULT_INTERVAL
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{ENV_INTERVAL}={value!r} is not a number of seconds") from None


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_duration(seconds: float) -> str:
    """H:MM:SS (hours unbounded)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressMeter:
    """Counts work done towards an optional total and logs a status line at most every
    `interval` seconds. `start` is work already done before (a resumed run): it is shown in
    the count but left out of the rate."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float, start: int = 0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.start = self.count = start
        self.started = self.last_line = time.monotonic()
        self.logged_count: int | None = None  # count shown by the last line

    def update_to(self, count: int) -> None:
        """Set the count; log a line if `interval` seconds have passed since the last one."""
        self.count = count
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.write(now)

    def finish(self) -> None:
        """The final line (unless the last periodic line already showed the final count)."""
        if self.logged_count != self.count:
            self.write(time.monotonic())

    def write(self, now: float) -> None:
        log.info("%s", self.line(now))
        self.last_line, self.logged_count = now, self.count

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = (self.count - self.start) / elapsed if elapsed > 0 else 0.0
        done = f"{self.count}/{self.total} {self.unit}" if self.total is not None else f"{self.count} {self.unit}"
        if self.total:
            done += f" ({100 * self.count / self.total:.0f}%)"
        parts = [done, f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.1f} {self.unit}/s"]
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total is not None:
            remaining = max(self.total - self.count, 0)
            if not remaining:
                parts.append("eta 0:00:00")
            else:
                parts.append(f"eta {format_duration(remaining / rate)}" if rate > 0 else "eta ?")
        text = ", ".join(parts)
        return f"{self.desc}: {text}" if self.desc else text


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    stream=None,
    interval: float | None = None,
    weight: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Yield the items of `iterable` unchanged while showing progress.

    On a terminal `stream` (default: sys.stderr) this is a tqdm bar written to it; otherwise
    lines are logged to `kdsweep.core.progress` at most every `interval` seconds (default:
    default_interval()) and once at the end. Each item counts 1, or `weight(item)` (e.g. the
    examples in a batch; computed before the loop body sees the item). `total` defaults to
    len(iterable) when items count 1 and it has a length; without a total there is no
    percentage and no eta.
    """
    if total is None and weight is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        with tqdm(total=total, desc=desc or None, unit=unit, file=stream, dynamic_ncols=True) as bar:
            for item in iterable:
                n = 1 if weight is None else weight(item)
                yield item
                bar.update(n)
        return
    meter = ProgressMeter(total, desc, unit, default_interval() if interval is None else interval)
    try:
        for item in iterable:
            n = 1 if weight is None else weight(item)
            yield item
            meter.update_to(meter.count + n)
    finally:
        meter.finish()


class ProgressLines(TrainerCallback):
    """Training progress as periodic log lines, for when the Trainer's tqdm bar is disabled
    (not a terminal): `train: 120/1000 steps (12%), 3.10 steps/s, elapsed ..., eta ...`, at most
    every `interval` seconds and at the end of training, from the main process only."""

    def __init__(self, interval: float | None = None, desc: str = "train"):
        self.interval = default_interval() if interval is None else interval
        self.desc = desc
        self.meter: ProgressMeter | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume global_step is already the checkpoint's: the rate counts this run only.
        self.meter = ProgressMeter(state.max_steps or None, self.desc, "steps", self.interval, start=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.meter is not None and state.is_world_process_zero:
            self.meter.update_to(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.meter is not None and state.is_world_process_zero:
            self.meter.count = state.global_step
            self.meter.finish()
        self.meter = None
