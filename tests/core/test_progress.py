"""Progress: a tqdm bar on a terminal, periodic log lines elsewhere (Slurm logs), for loops and
for the Trainer."""

import io
import logging
import re
import sys

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from kdsweep.core.progress import ProgressLines, format_duration, progress

LOGGER = "kdsweep.core.progress"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_not_a_terminal_logs_a_line_per_interval_and_a_final_one(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = io.StringIO()
    items = list(progress(iter("abcd"), total=4, desc="cache mnli", unit="batches", stream=stream, interval=0))
    assert items == list("abcd")
    assert stream.getvalue() == ""  # nothing on the stream itself: all goes to the log
    got = lines(caplog)
    assert len(got) == 4  # one per item; the final count was just logged, not repeated
    for n, line in enumerate(got, start=1):
        assert line.startswith(f"cache mnli: {n}/4 batches ({25 * n}%), ")
        assert re.search(r", [\d.]+ batches/s, elapsed \d+:\d\d:\d\d, eta \d+:\d\d:\d\d$", line), line
    assert got[-1].endswith("eta 0:00:00")


def test_a_long_interval_still_gives_the_final_line(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert list(progress(range(5), desc="x", stream=io.StringIO(), interval=3600)) == [0, 1, 2, 3, 4]
    got = lines(caplog)
    assert len(got) == 1 and got[0].startswith("x: 5/5 it (100%), ")  # total from len()


def test_interval_from_the_environment(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setenv("KDSWEEP_PROGRESS_SECONDS", "0")
    list(progress(range(3), stream=io.StringIO()))
    assert [line.split(",")[0] for line in lines(caplog)] == ["1/3 it (33%)", "2/3 it (67%)", "3/3 it (100%)"]
    monkeypatch.setenv("KDSWEEP_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="KDSWEEP_PROGRESS_SECONDS"):
        list(progress(range(3), stream=io.StringIO()))


def test_without_total_there_is_no_percentage_or_eta(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    items = list(progress((i for i in range(3)), desc="gen", stream=io.StringIO(), interval=0))
    assert items == [0, 1, 2]
    got = lines(caplog)
    assert [line.split(",")[0] for line in got] == ["gen: 1 it", "gen: 2 it", "gen: 3 it"]
    assert all("%" not in line and "eta" not in line and "elapsed" in line for line in got)


def test_weight_counts_items_per_batch(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    batches = [[1, 2, 3], [4, 5, 6], [7]]
    seen = []
    for batch in progress(
        batches, total=7, desc="translate", unit="sentences", weight=len, stream=io.StringIO(), interval=0
    ):
        seen.append(list(batch))
        batch.clear()  # the loop body may change the item: its weight was taken before
    assert seen == [[1, 2, 3], [4, 5, 6], [7]]
    assert [line.split(",")[0] for line in lines(caplog)] == [
        "translate: 3/7 sentences (43%)",
        "translate: 6/7 sentences (86%)",
        "translate: 7/7 sentences (100%)",
    ]


def test_leaving_the_loop_early_logs_how_far_it_got(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in progress(range(10), desc="x", stream=io.StringIO(), interval=3600):
        if i == 3:
            break
    assert [line.split(",")[0] for line in lines(caplog)] == ["x: 3/10 it (30%)"]


def test_a_terminal_gets_a_tqdm_bar_and_no_log_lines(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = Terminal()
    assert list(progress(["a", "b", "c"], desc="cache mnli", unit="batches", stream=stream, interval=0)) == [
        "a",
        "b",
        "c",
    ]
    out = stream.getvalue()
    assert "cache mnli" in out and "3/3" in out and "100%" in out
    assert lines(caplog) == []


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(83.9) == "0:01:23"
    assert format_duration(26 * 3600 + 61) == "26:01:01"


def test_trainer_callback_logs_steps_on_the_main_process(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger=LOGGER)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state, control = TrainerState(max_steps=4, global_step=0), TrainerControl()
    callback = ProgressLines(interval=0)
    callback.on_train_begin(args, state, control)
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    got = lines(caplog)
    assert [line.split(",")[0] for line in got] == [f"train: {s}/4 steps ({25 * s}%)" for s in range(1, 5)]
    assert all(re.search(r", [\d.]+ steps/s, elapsed \d+:\d\d:\d\d, eta \d+:\d\d:\d\d$", line) for line in got)

    caplog.clear()  # a resumed run counts on from the checkpoint's step; other processes stay quiet
    state = TrainerState(max_steps=4, global_step=2)
    callback = ProgressLines(interval=3600)
    callback.on_train_begin(args, state, control)
    state.global_step = 3
    callback.on_step_end(args, state, control)
    state.global_step = 4
    callback.on_train_end(args, state, control)
    assert [line.split(",")[0] for line in lines(caplog)] == ["train: 4/4 steps (100%)"]

    caplog.clear()
    state = TrainerState(max_steps=4, global_step=0, is_world_process_zero=False)
    callback = ProgressLines(interval=0)
    callback.on_train_begin(args, state, control)
    state.global_step = 1
    callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    assert lines(caplog) == []


def test_train_and_save_logs_progress_lines_when_not_on_a_terminal(
    teacher_dir, glue_data, tmp_path, caplog, monkeypatch
):
    from test_training import make_trainer

    from kdsweep.core.trainer import train_and_save

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, even under `pytest -s`
    monkeypatch.setenv("KDSWEEP_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO, logger=LOGGER)
    trainer = make_trainer(teacher_dir, glue_data["data"], tmp_path, max_steps=2)
    assert trainer.args.disable_tqdm
    train_and_save(trainer, {"job": 1}, tmp_path / "model", tmp_path / "log.jsonl")
    train_lines = [line.split(",")[0] for line in lines(caplog) if line.startswith("train: ")]
    assert train_lines == ["train: 1/2 steps (50%)", "train: 2/2 steps (100%)"]
