"""GLUE's report section: learning rate x (accuracy, macro-F1) per task and dev split, every
run's table, the experiments switched on (alpha and temperature sweeps, DistilBERT's loss
ablation), the comparison with the reference file's numbers, and the loss curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdsweep.core.io import read_json
from kdsweep.core.paths import RunPaths
from kdsweep.core.report import (
    AXIS_LABELS,
    axis_table,
    manifest_summary,
    matching_point,
    plot_loss_curves,
    side_by_side,
    study_md,
    table_files,
    table_links,
    table_md,
    write_table,
)

SPLIT_SHORT = {"dev_matched": "m", "dev_mismatched": "mm", "dev": ""}


EXPERIMENT_TITLES = {"alpha": "alpha sweep", "temperature": "temperature sweep", "ablation": "loss ablation"}


def _metric_columns(split: str, multi_split: bool) -> tuple[str, str]:
    tag = f" {SPLIT_SHORT.get(split, split)}" if multi_split else ""
    return f"Accuracy{tag} (%)", f"Macro-F1{tag}"


def metrics_row(result: dict) -> dict:
    """Accuracy in %, macro-F1 x 100 (as in the study), per dev split."""
    splits = result["splits"]
    row = {}
    for split, m in splits.items():
        acc_col, f1_col = _metric_columns(split, len(splits) > 1)
        row[acc_col] = round(100 * m["accuracy"], 2)
        row[f1_col] = round(100 * m["macro_f1"], 2)
    return row


def glue_results_table(paths: RunPaths, task: str, points: dict[str, dict]) -> pd.DataFrame:
    """One row per sweep point (long form): the swept values, then the metrics."""
    rows = []
    for point_id, params in points.items():
        result = read_json(paths.eval_json(task, point_id))
        rows.append({"run": point_id, **params, **metrics_row(result)})
    return pd.DataFrame(rows)


def experiment_table(paths: RunPaths, task: str, experiment: str, rows) -> pd.DataFrame:
    """One experiment's table: a row per run (alpha or temperature value, or loss variant), in
    the order of `rows` ({label: point id} or [label, point id] pairs). The ablation adds each
    variant's accuracy difference to the full loss, as DistilBERT's table."""
    column = {"alpha": "Alpha", "temperature": "Temperature", "ablation": "Loss"}[experiment]
    records = []
    for label, pid in dict(rows).items():
        value = label if experiment == "ablation" else float(label)
        records.append({column: value, **metrics_row(read_json(paths.eval_json(task, pid)))})
    table = pd.DataFrame(records)
    if experiment == "ablation":  # every accuracy column (MNLI: matched and mismatched)
        for acc in [c for c in table.columns if c.startswith("Accuracy")]:
            full = table.loc[table["Loss"] == "KD + hidden cosine + CE", acc].iloc[0]
            table[f"{acc}, diff to full"] = (table[acc] - full).round(2)
    return table


def glue_vs_study(paths: RunPaths, task: str, points: dict[str, dict], ref: dict) -> pd.DataFrame:
    """kdsweep's numbers next to the study's (accuracy %, macro-F1 x 100) on ref["split"]."""
    rows = []
    for r in ref["rows"]:
        pid = matching_point(points, r)
        m = read_json(paths.eval_json(task, pid))["splits"][ref["split"]] if pid else None
        acc = round(100 * m["accuracy"], 2) if m else "not run"
        f1 = round(100 * m["macro_f1"], 2) if m else "not run"
        row = {"Learning rate": r["learning_rate"], **side_by_side("Accuracy", acc, r["accuracy"], " (%)")}
        rows.append(row | side_by_side("Macro-F1", f1, r["macro_f1"]))
    return pd.DataFrame(rows)


def glue_section(
    paths: RunPaths,
    tasks: list[str],
    points: dict[str, dict],
    swept: list[str],
    experiments: dict | None = None,
    reference: dict | None = None,
) -> list[str]:
    """experiments: {name: {"base": point, "rows": [[label, point id], ...]}}; reference: the
    reference file's `glue` block ({task: {split, rows: [{learning_rate, accuracy, macro_f1}]}})."""
    report_dir = Path(paths.report_dir())
    md = []
    for task in tasks:
        results = glue_results_table(paths, task, points)
        write_table(results, report_dir / f"{task}_all_runs", f"{task.upper()}: all distillation runs")
        teacher = metrics_row(read_json(paths.eval_json(task, "teacher")))
        md += [f"## {task.upper()}", "", manifest_summary(paths, task), ""]
        md += ["Teacher: " + ", ".join(f"{k} {v:g}" for k, v in teacher.items()), ""]
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
            base = exp["base"]
            around = ", ".join(f"{AXIS_LABELS[a].lower()} {base[a]:g}" for a in AXIS_LABELS if a != name)
            md += [f"### {task.upper()}: {EXPERIMENT_TITLES[name]} ({around})", ""]
            table = experiment_table(paths, task, name, exp["rows"])
            md += table_md(paths, table, f"{task}_{name}", f"{task.upper()}: {EXPERIMENT_TITLES[name]} ({around})")
        png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
        md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def section(paths: RunPaths, g: dict, reference: dict | None) -> list[str]:
    """The report's GLUE section; g: {tasks, points, swept, experiments}."""
    return glue_section(paths, g["tasks"], g["points"], g["swept"], g.get("experiments"), reference)


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
