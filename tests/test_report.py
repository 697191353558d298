"""The report reads only the runs' output files: eval JSONs, training logs, data manifests."""

import pandas as pd
import pytest

from kdflow.fileio import write_json, write_jsonl
from kdflow.paths import RunPaths
from kdflow.report import write_report


def fake_run_outputs(paths, task, splits, points):
    write_json(
        paths.data_manifest(task),
        {
            "source": "synthetic",
            "splits": {"train": {"rows_read": 10, "rows_written": 9, "dropped_by_reason": {"short row": 1}}},
        },
    )
    write_json(paths.eval_json(task, "teacher"), {"splits": {s: {"accuracy": 0.9, "macro_f1": 0.88} for s in splits}})
    for i, (pid, params) in enumerate(points.items()):
        acc = 0.5 + 0.1 * i
        write_json(
            paths.eval_json(task, pid),
            {"params": params, "splits": {s: {"accuracy": acc, "macro_f1": acc - 0.05} for s in splits}},
        )
        write_jsonl(
            paths.distill_log(task, pid),
            [{"step": 1, "loss": 1.0 - i / 10}, {"step": 2, "loss": 0.5}, {"step": 2, "eval_loss": 0.7}],
        )


def test_alpha_sweep_gets_its_own_table_and_numbers_are_the_runs(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    points = {
        "lr0.001_a0.5_T2": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        "lr0.001_a1_T2": {"learning_rate": 1e-3, "alpha": 1.0, "temperature": 2.0},
        "lr1e-05_a0.5_T2": {"learning_rate": 1e-5, "alpha": 0.5, "temperature": 2.0},
        "lr1e-05_a1_T2": {"learning_rate": 1e-5, "alpha": 1.0, "temperature": 2.0},
    }
    fake_run_outputs(paths, "mnli", ["dev_matched", "dev_mismatched"], points)
    fake_run_outputs(paths, "qqp", ["dev"], points)
    md = write_report(
        paths,
        {
            "title": "test report",
            "glue": {"tasks": ["mnli", "qqp"], "points": points, "swept": ["learning_rate", "alpha"]},
        },
    )

    by_alpha = pd.read_csv(paths.report_table("qqp", "alpha", "csv"))
    assert list(by_alpha.columns) == ["Alpha", "Learning rate", "Accuracy (%)", "Macro-F1"]
    row = by_alpha[(by_alpha["Alpha"] == 1.0) & (by_alpha["Learning rate"] == 1e-5)].iloc[0]
    assert row["Accuracy (%)"] == pytest.approx(80.0) and row["Macro-F1"] == pytest.approx(75.0)  # point 3: 0.5 + 0.3

    by_lr = pd.read_csv(paths.report_table("mnli", "learning_rate", "csv"))
    assert list(by_lr.columns) == [
        "Learning rate",
        "Alpha",
        "Accuracy m (%)",
        "Macro-F1 m",
        "Accuracy mm (%)",
        "Macro-F1 mm",
    ]
    assert by_lr["Learning rate"].tolist() == [1e-3, 1e-5, 1e-3, 1e-5]  # grouped by alpha, largest LR first
    tex = open(paths.report_table("mnli", "learning_rate", "tex")).read()
    assert "\\begin{table}" in tex and "0.001" in tex and "60" in tex
    text = md.read_text()
    assert (
        "## MNLI" in text
        and "MNLI by alpha" in text
        and "train: 9 rows written of 10 read (dropped: short row: 1)" in text
    )
    assert "Teacher: Accuracy m (%) 90, Macro-F1 m 88" in text
    assert (tmp_path / "run" / "report" / "qqp_loss.png").read_bytes()[:4] == b"\x89PNG"
