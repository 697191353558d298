"""Stage `report`: the study's tables (CSV, Markdown, LaTeX), loss curves (PNG) and
results/<run>/report.md linking them, built only from the runs' own output files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .fileio import atomic_path, read_json, read_jsonl  # noqa: E402
from .paths import RunPaths  # noqa: E402

AXIS_LABELS = {"learning_rate": "Learning rate", "alpha": "Alpha", "temperature": "Temperature"}
SPLIT_SHORT = {"dev_matched": "m", "dev_mismatched": "mm", "dev": ""}


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


def axis_table(results: pd.DataFrame, axis: str, swept: list[str]) -> pd.DataFrame:
    """Rows over one axis (e.g. the study's learning-rate table); other swept axes stay columns."""
    others = [a for a in swept if a != axis]
    metric_cols = [c for c in results.columns if c not in ("run", "learning_rate", "alpha", "temperature")]
    table = results[[axis, *others, *metric_cols]].sort_values(
        [*others, axis], ascending=[True] * len(others) + [False]
    )
    return table.rename(columns=AXIS_LABELS)


def _fmt_number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """stem.csv, stem.md, stem.tex."""
    out = []
    for suffix, render in (
        (".csv", lambda t: t.to_csv(index=False)),
        (".md", lambda t: t.to_markdown(index=False, floatfmt="g") + "\n"),
        (".tex", lambda t: t.to_latex(index=False, caption=caption, formatters={c: _fmt_number for c in t.columns})),
    ):
        path = stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            tmp.write_text(render(table))
        out.append(path)
    return out


def plot_loss_curves(paths: RunPaths, task: str, points: dict[str, dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, point_id in enumerate(points):
        history = read_jsonl(paths.distill_log(task, point_id))
        color = f"C{i % 10}"
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{point_id} train")
        if evals:
            ax.plot(
                *zip(*evals, strict=True),
                color=color,
                linestyle="--",
                marker="o",
                markersize=3,
                label=f"{point_id} eval (CE)",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(f"{task.upper()}: student distillation loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


def _manifest_summary(paths: RunPaths, task: str) -> str:
    manifest = read_json(paths.data_manifest(task))
    lines = [f"Data ({manifest['source']}):"]
    for split, s in manifest["splits"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped_by_reason"].items()) or "none"
        lines.append(f"- {split}: {s['rows_written']} rows written of {s['rows_read']} read (dropped: {dropped})")
    return "\n".join(lines)


def write_glue_report(paths: RunPaths, tasks: list[str], points: dict[str, dict], swept: list[str], title: str) -> Path:
    report_dir = Path(paths.report_dir())
    report_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    for task in tasks:
        results = glue_results_table(paths, task, points)
        write_table(results, report_dir / f"{task}_all_runs", f"{task.upper()}: all distillation runs")
        teacher = metrics_row(read_json(paths.eval_json(task, "teacher")))
        md += [f"## {task.upper()}", "", _manifest_summary(paths, task), ""]
        md += ["Teacher: " + ", ".join(f"{k} {v:g}" for k, v in teacher.items()), ""]
        for axis in swept:
            stem = Path(paths.report_table(task, axis, "csv")).with_suffix("")
            table = axis_table(results, axis, swept)
            write_table(table, stem, f"{task.upper()}: student accuracy and macro-F1 by {AXIS_LABELS[axis].lower()}")
            md += [
                f"### {task.upper()} by {AXIS_LABELS[axis].lower()}",
                "",
                table.to_markdown(index=False, floatfmt="g"),
                "",
                f"Files: [{stem.name}.csv]({stem.relative_to(paths.root)}.csv), "
                f"[.md]({stem.relative_to(paths.root)}.md), [.tex]({stem.relative_to(paths.root)}.tex)",
                "",
            ]
        png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
        md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    out = Path(paths.report_md())
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    return out
