"""Stage `report`, the shared part: tables in CSV, Markdown, LaTeX and HTML, loss curves (PNG),
the comparison with a reference file's numbers (config/study_reference.yaml), the runtime and
GPU-hours of every rule from Snakemake's benchmark files, and results/<run>/report.md, which
each family's section fills (glue/report.py, translation/report.py), built only from the runs'
own output files. The HTML files are what `snakemake --report` shows (workflow/rules/report.smk)."""

from __future__ import annotations

import ast
import html
import math
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kdsweep.core.io import atomic_path, read_json, read_jsonl  # noqa: E402
from kdsweep.core.paths import RunPaths  # noqa: E402

AXIS_LABELS = {"learning_rate": "Learning rate", "alpha": "Alpha", "temperature": "Temperature"}


SEEDS = "Seeds"  # the column of a point's number of runs (sweep.seed)


def seed_summary(runs: list[dict], keys: list[str], decimals: dict[str, int], sd: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per point (the runs' values of `keys`, in first-seen order) over its seeds: each
    metric of `decimals` as the mean of its runs' raw values, rounded there; for the metrics in
    `sd` the sample standard deviation (n - 1) in a column "<metric> sd" next to it; and the
    number of runs, column Seeds. With one run per point the table is the runs' own numbers: no
    sd or Seeds columns. A metric that is not a number in some run (COMET "not computed") is
    given as its distinct values, joined by " / "."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    repeated = any(len(g) > 1 for g in groups.values())
    rows = []
    for key, group in groups.items():
        row = dict(zip(keys, key, strict=True))
        if repeated:
            row[SEEDS] = len(group)
        for metric, places in decimals.items():
            values = [r[metric] for r in group]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                # "not computed" / "not recorded" in every run, or mixed with numbers (an older evaluation)
                row[metric] = " / ".join(dict.fromkeys(str(v) for v in values))
                if repeated and metric in sd:
                    row[f"{metric} sd"] = ""
                continue
            mean = values[0] if len(values) == 1 else statistics.fmean(values)  # one run: its int stays an int
            row[metric] = round(mean, places)
            if repeated and metric in sd:
                row[f"{metric} sd"] = round(statistics.stdev(values), places) if len(values) > 1 else ""
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_note(table: pd.DataFrame, what: str) -> str:
    """The sentence under a section that says what a table's numbers are over seeds."""
    if SEEDS not in table.columns:
        return f"One {what} per point (sweep.seed: one seed); 95 % bootstrap intervals of every {what} in the all-runs table."
    return (
        f"Each point: the mean over its {what}s (column {SEEDS}, one per sweep.seed) and, in the sd columns, their "
        f"sample standard deviation; each {what} with its 95 % bootstrap interval in the all-runs table."
    )


EXPERIMENT_COLUMNS = {"alpha": "Alpha", "temperature": "Temperature", "ablation": "Loss", "loss": "Loss"}
EXPERIMENT_TITLES = {
    "alpha": "alpha sweep",
    "temperature": "temperature sweep",
    "ablation": "loss ablation",
    "loss": "KD loss kind and tail option",
}


def experiment_runs(experiment: str, rows, metrics_of) -> list[dict]:
    """The runs of one experiment's table, in the order of `rows` ({label: run ids} or [label,
    run ids] pairs; one id per seed, or a single id): {the experiment's column: the label (a
    number for the alpha and temperature sweeps), **metrics_of(run id)} per run."""
    column = EXPERIMENT_COLUMNS[experiment]
    runs = []
    for label, ids in dict(rows).items():
        value = float(label) if experiment in ("alpha", "temperature") else label
        runs += [{column: value, **metrics_of(pid)} for pid in ([ids] if isinstance(ids, str) else ids)]
    return runs


def experiment_md(paths: RunPaths, task: str, title: str, name: str, base: dict, table: pd.DataFrame) -> list[str]:
    """An experiment's section: its heading (what it varies around), the table and its files."""
    around = ", ".join(f"{AXIS_LABELS[a].lower()} {base[a]:g}" for a in AXIS_LABELS if a != name)
    caption = f"{title}: {EXPERIMENT_TITLES[name]} ({around})"
    return [f"### {caption}", "", *table_md(paths, table, f"{task}_{name}", caption)]


def provenance_cells(result: dict) -> dict:
    """An all-runs table's way back to the job (kdsweep.core.provenance): the training step whose
    weights the model holds (training.keep: the best dev evaluation's, or the last), the evaluated
    model's fingerprint (first 12 hex digits) and its kdsweep.json (job, settings, cache key, log
    file, Slurm job id, commit); "not recorded" for an evaluation or a model from before them."""
    from kdsweep.core.provenance import kept

    fingerprint, record = result.get("model_fingerprint"), result.get("model_provenance")
    entry = kept(Path(record).parent) if record and Path(record).is_file() else None
    if entry is None:
        step = "not recorded"
    elif entry["policy"] == "best" and isinstance(entry.get("value"), (int, float)):
        step = f"{entry['step']} (best {entry['metric']} {entry['value']:.4g})"
    elif entry["policy"] == "best":
        step = f"{entry['step']} (best {entry['metric']})"
    else:
        step = f"{entry['step']} (last)"
    return {
        "Kept step": step,
        "Fingerprint": fingerprint[:12] if fingerprint else "not recorded",
        "Model record": record or "not recorded",
    }


def interval(ci: list[float], places: int = 2, scale: float = 1.0) -> str:
    """A 95 % interval as the tables print it: [lo, hi]."""
    return f"[{ci[0] * scale:.{places}f}, {ci[1] * scale:.{places}f}]"


def axis_table(results: pd.DataFrame, axis: str, swept: list[str]) -> pd.DataFrame:
    """Rows over one axis (e.g. the study's learning-rate table); other swept axes stay columns.
    `results`: one row per point (seed_summary); its other columns are kept, in their order."""
    others = [a for a in swept if a != axis]
    metric_cols = [c for c in results.columns if c not in ("run", "learning_rate", "alpha", "temperature")]
    table = results[[axis, *others, *metric_cols]].sort_values(
        [*others, axis], ascending=[True] * len(others) + [False]
    )
    return table.rename(columns=AXIS_LABELS)


def _latex_escape(text: str) -> str:
    """LaTeX's special characters in plain text (captions; pandas escapes the cells and headers)."""
    return re.sub(r"([%&#_$])", r"\\\1", text)


def _fmt_number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """stem.csv, stem.md, stem.tex, stem.html (a page of its own, for Snakemake's HTML report)."""
    out, fmt = [], {c: _fmt_number for c in table.columns}
    for suffix, render in (
        (".csv", lambda t: t.to_csv(index=False)),
        (".md", lambda t: t.to_markdown(index=False, floatfmt="g") + "\n"),
        (".tex", lambda t: t.to_latex(index=False, caption=_latex_escape(caption), escape=True, formatters=fmt)),
        (".html", lambda t: html_page(caption, t.to_html(index=False, float_format=_fmt_number, na_rep=""))),
    ):
        path = stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            tmp.write_text(render(table))
        out.append(path)
    return out


def html_page(title: str, body: str) -> str:
    """A small standalone HTML page (the HTML report shows each table file on its own)."""
    style = (
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}th{background:#eee}"
        "li{margin:.2em 0}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body><h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )


def plot_loss_curves(paths: RunPaths, task: str, points: dict[str, dict], out: Path) -> Path:
    fig = loss_curve_figure(paths, task, points)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


def loss_curve_figure(paths: RunPaths, task: str, points: dict[str, dict]):
    """Each run's training loss (solid) and eval loss (dashed) by step, from its log.jsonl."""
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
    return fig


def manifest_summary(paths: RunPaths, task: str) -> str:
    manifest = read_json(paths.data_manifest(task))
    lines = [f"Data ({manifest['source']}):"]

    def dropped(counts: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"

    if "pool" in manifest:  # translation: one filtered pool of pairs split three ways
        pool = manifest["pool"]
        lines.append(
            f"- {pool['rows_kept']} pairs kept of {pool['rows_read']} read (dropped: "
            f"{dropped(pool['dropped_by_reason'])}; duplicates dropped before splitting, so the splits share no source)"
        )
        lines += [f"- {split}: {s['rows_written']} pairs" for split, s in manifest["splits"].items()]
        return "\n".join(lines)
    for split, s in manifest["splits"].items():
        lines.append(
            f"- {split}: {s['rows_written']} rows written of {s['rows_read']} read (dropped: {dropped(s['dropped_by_reason'])})"
        )
    return "\n".join(lines)


def table_links(paths: RunPaths, stem: Path) -> str:
    rel = stem.relative_to(paths.root)
    return f"Files: [{stem.name}.csv]({rel}.csv), [.md]({rel}.md), [.tex]({rel}.tex), [.html]({rel}.html)"


def table_md(paths: RunPaths, table: pd.DataFrame, name: str, caption: str) -> list[str]:
    """Write report/<name>.{csv,md,tex,html} and return its Markdown lines for report.md."""
    stem = Path(paths.report_file(name, "csv")).with_suffix("")
    write_table(table, stem, caption)
    return [table.to_markdown(index=False, floatfmt="g"), "", table_links(paths, stem), ""]


def difference(ours, study) -> float | str:
    return round(ours - study, 2 if abs(study) >= 1 else 4) if isinstance(ours, (int, float)) else ""


def matching_runs(points: dict[str, dict], ref_row: dict) -> list[str]:
    """The runs (one per seed) of the first sweep point with the reference row's learning rate
    (and alpha/temperature if given); [] when the sweep has none."""
    axes = [k for k in ("learning_rate", "alpha", "temperature") if k in ref_row]
    for params in points.values():
        if all(math.isclose(params[k], ref_row[k]) for k in axes):
            point = {k: params[k] for k in ("learning_rate", "alpha", "temperature")}
            return [pid for pid, p in points.items() if all(p[k] == v for k, v in point.items())]
    return []


def side_by_side(metric: str, ours, study, unit: str = "") -> dict:
    """Three columns: kdsweep's value, the study's, and kdsweep - study."""
    return {f"{metric} kdsweep{unit}": ours, f"{metric} study{unit}": study, f"{metric} diff": difference(ours, study)}


def study_md(paths: RunPaths, table: pd.DataFrame, task: str, title: str, note: str) -> list[str]:
    md = [f"### {title}: kdsweep and the study", "", note + " diff = kdsweep - study.", ""]
    return md + table_md(paths, table, f"{task}_vs_study", f"{title}: kdsweep and the original study")


def job_gpus(resources) -> int:
    """GPUs a job held, from the resources Snakemake records with --benchmark-extended (the Slurm
    profile turns it on): a gpu/gpus resource, or --gpus-per-node / --gres=gpu in slurm_extra,
    times nodes. 0 when nothing was recorded (a local run) or none were asked for."""
    try:
        res = ast.literal_eval(resources) if isinstance(resources, str) else None
    except (ValueError, SyntaxError):
        return 0
    if not isinstance(res, dict):
        return 0
    per_node = next((int(res[k]) for k in ("gpu", "gpus") if str(res.get(k, "")).isdigit() and int(res[k])), 0)
    if not per_node:
        extra = f"{res.get('slurm_extra', '')} {res.get('gres', '')}"
        found = re.search(r"--gpus-per-node=(?:[\w.-]+:)?(\d+)", extra) or re.search(
            r"(?:^|[\s=])gpu(?::[\w.-]+)?:(\d+)", extra
        )
        per_node = int(found.group(1)) if found else 0
    return per_node * int(res.get("nodes") or 1)


def runtime_table(paths: RunPaths) -> pd.DataFrame:
    """Wall time, CPU time, peak memory and GPU-hours per rule, from the benchmark files of every
    job of the run (benchmarks/<rule>/...; the last attempt of a retried job). The report rule's
    own job is left out, so a regenerated report has the same table."""
    root = Path(paths.root, "benchmarks")
    per_rule: dict[str, list[dict]] = {}
    for f in sorted(root.rglob("*.tsv")):
        rel = f.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if rule == "report":
            continue
        for rec in pd.read_csv(f, sep="\t").to_dict("records"):
            per_rule.setdefault(rule, []).append(rec)
    rows = []
    for rule, recs in per_rule.items():
        gpus = [job_gpus(r.get("resources")) for r in recs]
        wall = [float(r["s"]) for r in recs]
        rss = [float(r["max_rss"]) for r in recs if str(r["max_rss"]) != "NA"]
        rows.append(
            {
                "Rule": rule,
                "Jobs": len(recs),
                "Wall time (s)": round(sum(wall), 1),
                "Mean per job (s)": round(sum(wall) / len(wall), 1),
                "CPU time (s)": round(sum(float(r["cpu_time"]) for r in recs if str(r["cpu_time"]) != "NA"), 1),
                "Peak RSS (MB)": round(max(rss), 0) if rss else "",
                "GPUs per job": max(gpus),
                "GPU-hours": round(sum(w * g for w, g in zip(wall, gpus, strict=True)) / 3600, 3),
            }
        )
    table = pd.DataFrame(rows)
    if rows:
        total = dict.fromkeys(table.columns, "") | {"Rule": "total", "Jobs": int(table["Jobs"].sum())}
        total["Wall time (s)"] = round(table["Wall time (s)"].sum(), 1)
        total |= {
            "CPU time (s)": round(table["CPU time (s)"].sum(), 1),
            "GPU-hours": round(table["GPU-hours"].sum(), 3),
        }
        table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table


def runtime_section(paths: RunPaths) -> list[str]:
    table = runtime_table(paths)
    if table.empty:
        table = pd.DataFrame(columns=["Rule", "Jobs", "Wall time (s)", "GPU-hours"])
    md = ["## Runtime and GPU-hours per rule", ""]
    md += [
        "From Snakemake's benchmark files (wall time of each job; GPU-hours = wall time x the GPUs "
        "the job asked Slurm for, recorded with --benchmark-extended; 0 GPUs: a local run or none asked).",
        "",
    ]
    return md + table_md(paths, table, "runtime", "Runtime and GPU-hours per rule")


def load_reference(path: str | Path | None) -> dict:
    """The study's reference numbers (config/study_reference.yaml), or {} without a file."""
    return yaml.safe_load(Path(path).read_text()) if path else {}


TABLE_EXTS = ("csv", "md", "tex", "html")  # write_table writes each table in these formats


def report_outputs(paths: RunPaths, spec: dict, families: dict) -> dict[str, list[str]]:
    """Every file write_report writes for `spec`, by kind: "md" (report.md), "tables" (each as
    csv, md, tex and html), "plots", "samples". `families`: {name: the family's report module},
    whose outputs(paths, block, reference) lists its part. The report rule declares exactly
    these as its outputs (tested against what write_report leaves in report/)."""
    reference = load_reference(spec.get("reference"))
    found = {"md": [paths.report_md()], "tables": [], "plots": [], "samples": []}
    for name, family in families.items():
        if name in spec:
            for kind, files in family.outputs(paths, spec[name], reference.get(name)).items():
                found[kind] += files
    found["tables"] += table_files(paths.report_file("runtime", "{ext}"))
    return found


def table_files(stem: str) -> list[str]:
    """The files write_table writes for a stem ("<dir>/<name>.{ext}")."""
    return [stem.format(ext=ext) for ext in TABLE_EXTS]


def write_report(paths: RunPaths, spec: dict, families: dict) -> Path:
    """spec: {"title", "reference": path or null, <family name>: its block (optional)};
    `families`: {name: the family's report module}, whose section(paths, block, reference) writes
    its tables and returns its Markdown."""
    Path(paths.report_dir()).mkdir(parents=True, exist_ok=True)
    reference = load_reference(spec.get("reference"))
    md = [f"# {spec['title']}", ""]
    for name, family in families.items():
        if name in spec:
            md += family.section(paths, spec[name], reference.get(name))
    md += runtime_section(paths)
    out = Path(paths.report_md())
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    return out
