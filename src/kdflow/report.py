"""Stage `report`: the study's tables (CSV, Markdown, LaTeX), loss curves (PNG), sample
translations and results/<run>/report.md linking them, built only from the runs' own output
files. GLUE: learning rate x (accuracy, macro-F1) per task. Translation: learning rate x
(SacreBLEU, chrF, COMET, runaway rate, length ratio) with the base student and teacher rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .fileio import atomic_path, read_json, read_jsonl  # noqa: E402
from .paths import RunPaths  # noqa: E402
from .teacher_cache import open_pointer  # noqa: E402

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

    def dropped(counts: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"

    if "pool" in manifest:  # translation: one filtered pool of pairs split three ways
        pool = manifest["pool"]
        lines.append(
            f"- {pool['rows_kept']} pairs kept of {pool['rows_read']} read (dropped: "
            f"{dropped(pool['dropped_by_reason'])}; truncated: {pool['rows_truncated']})"
        )
        lines += [f"- {split}: {s['rows_written']} pairs" for split, s in manifest["splits"].items()]
        return "\n".join(lines)
    for split, s in manifest["splits"].items():
        lines.append(
            f"- {split}: {s['rows_written']} rows written of {s['rows_read']} read (dropped: {dropped(s['dropped_by_reason'])})"
        )
    return "\n".join(lines)


def _table_links(paths: RunPaths, stem: Path) -> str:
    rel = stem.relative_to(paths.root)
    return f"Files: [{stem.name}.csv]({rel}.csv), [.md]({rel}.md), [.tex]({rel}.tex)"


def glue_section(paths: RunPaths, tasks: list[str], points: dict[str, dict], swept: list[str]) -> list[str]:
    report_dir = Path(paths.report_dir())
    md = []
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
            ]
            md += ["", _table_links(paths, stem), ""]
        png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
        md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def translation_row(result: dict) -> dict:
    """SacreBLEU and chrF as sacrebleu prints them, COMET x 1 (the study's 0.80), runaway in %."""
    comet = result.get("comet")
    return {
        "SacreBLEU": round(result["bleu"], 2),
        "chrF": round(result["chrf"], 2),
        "COMET": "not computed" if comet is None else round(comet, 4),
        "No end marker (%)": round(100 * result["runaway_rate"], 1),
        "Length ratio": round(result["length_ratio"], 3),
    }


def translation_table(paths: RunPaths, task: str, points: dict[str, dict], swept: list[str]) -> pd.DataFrame:
    """The study's table: a "Base model" row, one row per sweep point, and the teacher."""
    rows = [{"Model": "Base model", **translation_row(read_json(paths.eval_json(task, "base")))}]
    by_rate = sorted(points.items(), key=lambda kv: (-kv[1]["learning_rate"], kv[1]["alpha"], kv[1]["temperature"]))
    for point_id, params in by_rate:  # as in the study: learning rates from high to low
        label = ", ".join(f"{AXIS_LABELS[a].lower()} {params[a]:g}" for a in swept)
        rows.append({"Model": f"Distilled ({label})", **translation_row(read_json(paths.eval_json(task, point_id)))})
    rows.append({"Model": "Teacher", **translation_row(read_json(paths.eval_json(task, "teacher")))})
    return pd.DataFrame(rows)


def write_samples(paths: RunPaths, task: str, names: dict[str, str], count: int) -> Path:
    """The first `count` test sentences: source, reference and every model's translation."""
    outputs = {label: read_jsonl(paths.eval_translations(task, name)) for label, name in names.items()}
    first = next(iter(outputs.values()))
    md = [f"# {task}: sample translations", ""]
    for i, row in enumerate(first[:count]):
        md += [f"## {i + 1}. (test id {row['id']})", "", f"- **Source**: {row['source']}"]
        md += [f"- **Reference**: {row['reference']}"]
        for label, rows in outputs.items():
            runaway = "" if rows[i]["ended_with_marker"] else " *(no end marker)*"
            md.append(f"- **{label}**: {rows[i]['hypothesis']}{runaway}")
        md.append("")
    out = Path(paths.report_samples(task))
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    return out


def translation_section(
    paths: RunPaths, task: str, points: dict[str, dict], swept: list[str], samples: int
) -> list[str]:
    stem = Path(paths.report_table(task, "learning_rate", "csv")).with_suffix("")
    table = translation_table(paths, task, points, swept)
    write_table(table, stem, f"{task}: SacreBLEU and COMET of the distilled students")
    base = read_json(paths.eval_json(task, "base"))
    cache = open_pointer(paths.cache_pointer(task)).manifest()
    md = [f"## Translation ({task})", "", _manifest_summary(paths, task), ""]
    md += [
        f"Teacher cache: top-{cache['key_parts']['top_k']} logits of {cache['response_tokens']} response tokens, "
        f"{cache['bytes_per_token']:.0f} bytes/token, mean captured probability mass "
        f"{100 * cache['mean_captured_mass']:.2f} %, targets: {cache['key_parts']['targets']}.",
        "",
    ]
    md += [table.to_markdown(index=False, floatfmt="g"), "", _table_links(paths, stem), ""]
    gen = base["generation"]
    decoding = "greedy" if gen["num_beams"] == 1 else f"beam search ({gen['num_beams']} beams)"
    md += [f"Test sentences: {base['examples']}; decoding: {decoding}, at most {gen['max_new_tokens']} new tokens."]
    md += ["", f"- BLEU signature: `{base['bleu_signature']}`", f"- chrF signature: `{base['chrf_signature']}`"]
    md.append(f"- COMET: {base['comet_model']}" if base.get("comet") is not None else f"- COMET {base['comet_note']}")
    md += ["- No end marker: share of outputs that never emitted the end-of-translation marker (runaway generations)"]
    names = {"Base model": "base", "Teacher": "teacher", **{f"Distilled {p}": p for p in points}}
    sample_file = write_samples(paths, task, names, samples)
    png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
    md += ["", f"Sample translations: [{sample_file.name}]({sample_file.relative_to(paths.root)})", ""]
    md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def write_report(paths: RunPaths, spec: dict) -> Path:
    """spec: {"title", "glue": {tasks, points, swept} (optional), "translation": {task, points,
    swept, samples} (optional)}."""
    Path(paths.report_dir()).mkdir(parents=True, exist_ok=True)
    md = [f"# {spec['title']}", ""]
    if "glue" in spec:
        g = spec["glue"]
        md += glue_section(paths, g["tasks"], g["points"], g["swept"])
    if "translation" in spec:
        t = spec["translation"]
        md += translation_section(paths, t["task"], t["points"], t["swept"], t["samples"])
    out = Path(paths.report_md())
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    return out
