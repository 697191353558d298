"""GLUE's report section: learning rate x (accuracy, macro-F1) per task and dev split (each point's
mean over its seeds, with their standard deviation and number when there are several), every
run's table with 95 % bootstrap intervals, the experiments switched on (alpha and temperature
sweeps, DistilBERT's loss ablation), the comparison with the reference file's numbers (the mean
over seeds), and the loss curves."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from kdsweep.core.io import read_json
from kdsweep.core.paths import RunPaths
from kdsweep.core.report import (
    AXIS_LABELS,
    EXPERIMENT_COLUMNS,
    SEEDS,
    axis_table,
    experiment_md,
    experiment_runs,
    interval,
    manifest_summary,
    matching_runs,
    plot_loss_curves,
    provenance_cells,
    seed_summary,
    seeds_note,
    side_by_side,
    study_md,
    table_files,
    table_links,
    write_table,
)

SPLIT_SHORT = {"dev_matched": "m", "dev_mismatched": "mm", "dev": ""}


def _metric_columns(split: str, multi_split: bool) -> tuple[str, str]:
    tag = f" {SPLIT_SHORT.get(split, split)}" if multi_split else ""
    return f"Accuracy{tag} (%)", f"Macro-F1{tag}"


PLACES = 2  # decimals of accuracy (%) and macro-F1 (x 100) in the tables


def metrics_row(result: dict) -> dict:
    """Accuracy in %, macro-F1 x 100 (as in the study), per dev split, unrounded (the tables round)."""
    splits = result["splits"]
    row = {}
    for split, m in splits.items():
        acc_col, f1_col = _metric_columns(split, len(splits) > 1)
        row[acc_col] = 100 * m["accuracy"]
        row[f1_col] = 100 * m["macro_f1"]
    return row


def intervals_row(result: dict) -> dict:
    """Each metric's 95 % bootstrap interval (evaluate's ci95), in the metrics' units."""
    splits, row = result["splits"], {}
    for split, m in splits.items():
        for col, name in zip(_metric_columns(split, len(splits) > 1), ("accuracy", "macro_f1"), strict=True):
            ci = m.get("ci95", {}).get(name)
            row[f"{col} 95% CI"] = interval(ci, PLACES, 100) if ci else "not computed"
    return row


def ci_suffix(ci: str) -> str:
    return "" if ci == "not computed" else f" {ci}"


def glue_runs(paths: RunPaths, task: str, points: dict[str, dict]) -> list[dict]:
    """One record per run: its id, its point's values (seed included) and its unrounded metrics."""
    return [
        {"run": pid, **params, **metrics_row(read_json(paths.eval_json(task, pid)))} for pid, params in points.items()
    ]


def glue_results_table(paths: RunPaths, task: str, points: dict[str, dict]) -> pd.DataFrame:
    """One row per run (long form): the run id, its values (seed included), each metric and its
    95 % bootstrap interval, and the model's fingerprint and provenance record (the job)."""
    rows = []
    for pid, params in points.items():
        result = read_json(paths.eval_json(task, pid))
        metrics = {k: round(v, PLACES) for k, v in metrics_row(result).items()}
        cis = intervals_row(result)
        row = {"run": pid, **params}
        for col, value in metrics.items():
            row |= {col: value, f"{col} 95% CI": cis[f"{col} 95% CI"]}
        rows.append(row | provenance_cells(result))
    return pd.DataFrame(rows)


def point_summary(runs: list[dict], keys: list[str]) -> pd.DataFrame:
    """The runs' mean, sd and number per point (seed_summary), every metric to PLACES decimals."""
    metrics = [c for c in runs[0] if c not in ("run", "seed", *keys, "learning_rate", "alpha", "temperature")]
    return seed_summary(runs, keys, dict.fromkeys(metrics, PLACES), sd=tuple(metrics))


def experiment_table(paths: RunPaths, task: str, experiment: str, rows) -> pd.DataFrame:
    """One experiment's table (core.report.experiment_runs): a row per alpha or temperature
    value, or loss variant, each the mean of its runs (sd and Seeds with several). The ablation
    adds each variant's accuracy difference to the full loss, as DistilBERT's table."""
    runs = experiment_runs(experiment, rows, lambda pid: metrics_row(read_json(paths.eval_json(task, pid))))
    table = point_summary(runs, [EXPERIMENT_COLUMNS[experiment]])
    if experiment == "ablation":  # every accuracy column (MNLI: matched and mismatched)
        for acc in [c for c in table.columns if c.startswith("Accuracy") and not c.endswith(" sd")]:
            full = table.loc[table["Loss"] == "KD + hidden cosine + CE", acc].iloc[0]
            table[f"{acc}, diff to full"] = (table[acc] - full).round(2)
    return table


def glue_vs_study(paths: RunPaths, task: str, points: dict[str, dict], ref: dict) -> pd.DataFrame:
    """kdsweep's numbers next to the study's (accuracy %, macro-F1 x 100) on ref["split"]."""
    rows, seeds = [], []
    for r in ref["rows"]:
        runs = [read_json(paths.eval_json(task, pid))["splits"][ref["split"]] for pid in matching_runs(points, r)]
        acc = round(statistics.fmean(100 * m["accuracy"] for m in runs), PLACES) if runs else "not run"
        f1 = round(statistics.fmean(100 * m["macro_f1"] for m in runs), PLACES) if runs else "not run"
        row = {"Learning rate": r["learning_rate"], **side_by_side("Accuracy", acc, r["accuracy"], " (%)")}
        rows.append(row | side_by_side("Macro-F1", f1, r["macro_f1"]))
        seeds.append(len(runs))
    table = pd.DataFrame(rows)
    if any(n > 1 for n in seeds):  # kdsweep's number is the mean of these runs
        table.insert(1, SEEDS, seeds)
    return table


def glue_section(
    paths: RunPaths,
    tasks: list[str],
    points: dict[str, dict],
    swept: list[str],
    experiments: dict | None = None,
    reference: dict | None = None,
    runs: dict[str, dict] | None = None,
) -> list[str]:
    """experiments: {name: {"base": point, "rows": [[label, point id], ...]}}; reference: the
    reference file's `glue` block ({task: {split, rows: [{learning_rate, accuracy, macro_f1}]}})."""
    report_dir = Path(paths.report_dir())
    md = []
    for task in tasks:
        write_table(
            glue_results_table(paths, task, runs or points),
            report_dir / f"{task}_all_runs",
            f"{task.upper()}: every distillation run, with 95 % bootstrap intervals",
        )
        results = point_summary(glue_runs(paths, task, points), ["learning_rate", "alpha", "temperature"])
        teacher_result = read_json(paths.eval_json(task, "teacher"))
        teacher, cis = metrics_row(teacher_result), intervals_row(teacher_result)
        md += [f"## {task.upper()}", "", manifest_summary(paths, task), ""]
        cells = [f"{k} {round(v, PLACES):g}" + ci_suffix(cis[f"{k} 95% CI"]) for k, v in teacher.items()]
        md += ["Teacher: " + ", ".join(cells), ""]
        all_runs = Path(paths.report_file(f"{task}_all_runs", "csv")).with_suffix("")
        md += [seeds_note(results, "run") + " " + table_links(paths, all_runs), ""]
        for axis in swept:
            stem = Path(paths.report_table(task, axis, "csv")).with_suffix("")
            table = axis_table(results, axis, swept)
            write_table(table, stem, f"{task.upper()}: student accuracy and macro-F1 by {AXIS_LABELS[axis].lower()}")
            md += [
                f"### {task.upper()} by {AXIS_LABELS[axis].lower()}",
                "",
                table.to_markdown(index=False, floatfmt="g"),
            ]
            md += ["", table_links(paths, stem), ""]
        if reference and task in reference:
            note = f"The study's numbers (reference file); kdsweep's on {reference[task]['split']}."
            md += study_md(paths, glue_vs_study(paths, task, points, reference[task]), task, task.upper(), note)
        for name, exp in (experiments or {}).items():
            table = experiment_table(paths, task, name, exp["rows"])
            md += experiment_md(paths, task, task.upper(), name, exp["base"], table)
        png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
        md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def section(paths: RunPaths, g: dict, reference: dict | None) -> list[str]:
    """The report's GLUE section; g: {tasks, points (the sweep's runs), swept, experiments, runs
    (every distillation run: the sweep's and the experiments', for the all-runs table)}."""
    return glue_section(paths, g["tasks"], g["points"], g["swept"], g.get("experiments"), reference, g.get("runs"))


def outputs(paths: RunPaths, g: dict, reference: dict | None) -> dict[str, list[str]]:
    """The files section() writes: a comparison for each task the reference covers."""
    tables = []
    for task in g["tasks"]:
        tables += table_files(paths.report_file(f"{task}_all_runs", "{ext}"))
        for axis in g["swept"]:
            tables += table_files(paths.report_table(task, axis, "{ext}"))
        if task in (reference or {}):
            tables += table_files(paths.report_file(f"{task}_vs_study", "{ext}"))
        for name in g.get("experiments") or {}:
            tables += table_files(paths.report_file(f"{task}_{name}", "{ext}"))
    return {"tables": tables, "plots": [paths.report_plot(task) for task in g["tasks"]]}
