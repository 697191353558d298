"""Stage `report`: the study's tables (CSV, Markdown, LaTeX, HTML), loss curves (PNG), sample
translations and results/<run>/report.md linking them, built only from the runs' own output
files. GLUE: learning rate x (accuracy, macro-F1) per task, and the experiments switched on
(alpha and temperature sweeps, loss ablation). Translation: learning rate x (SacreBLEU, chrF,
COMET, stop reasons, length ratio) with the base student and teacher rows. With a reference file
(config/study_reference.yaml), kdsweep's numbers next to the study's with the difference; and
the runtime and GPU-hours of every rule from Snakemake's benchmark files. The HTML files are what
`snakemake --report` shows (workflow/rules/report.smk)."""

from __future__ import annotations

import ast
import html
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kdsweep.core.cache import open_pointer  # noqa: E402
from kdsweep.core.io import atomic_path, read_json, read_jsonl  # noqa: E402
from kdsweep.core.paths import RunPaths  # noqa: E402

AXIS_LABELS = {"learning_rate": "Learning rate", "alpha": "Alpha", "temperature": "Temperature"}
EXPERIMENT_TITLES = {"alpha": "alpha sweep", "temperature": "temperature sweep", "ablation": "loss ablation"}
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


def _manifest_summary(paths: RunPaths, task: str) -> str:
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


def _table_links(paths: RunPaths, stem: Path) -> str:
    rel = stem.relative_to(paths.root)
    return f"Files: [{stem.name}.csv]({rel}.csv), [.md]({rel}.md), [.tex]({rel}.tex), [.html]({rel}.html)"


def _table_md(paths: RunPaths, table: pd.DataFrame, name: str, caption: str) -> list[str]:
    """Write report/<name>.{csv,md,tex,html} and return its Markdown lines for report.md."""
    stem = Path(paths.report_file(name, "csv")).with_suffix("")
    write_table(table, stem, caption)
    return [table.to_markdown(index=False, floatfmt="g"), "", _table_links(paths, stem), ""]


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


def _diff(ours, study) -> float | str:
    return round(ours - study, 2 if abs(study) >= 1 else 4) if isinstance(ours, (int, float)) else ""


def _matching_point(points: dict[str, dict], ref_row: dict) -> str | None:
    """The sweep point with the reference row's learning rate (and alpha/temperature if given)."""
    for pid, params in points.items():
        if all(math.isclose(params[k], ref_row[k]) for k in ("learning_rate", "alpha", "temperature") if k in ref_row):
            return pid
    return None


def _side_by_side(metric: str, ours, study, unit: str = "") -> dict:
    """Three columns: kdsweep's value, the study's, and kdsweep - study."""
    return {f"{metric} kdsweep{unit}": ours, f"{metric} study{unit}": study, f"{metric} diff": _diff(ours, study)}


def glue_vs_study(paths: RunPaths, task: str, points: dict[str, dict], ref: dict) -> pd.DataFrame:
    """kdsweep's numbers next to the study's (accuracy %, macro-F1 x 100) on ref["split"]."""
    rows = []
    for r in ref["rows"]:
        pid = _matching_point(points, r)
        m = read_json(paths.eval_json(task, pid))["splits"][ref["split"]] if pid else None
        acc = round(100 * m["accuracy"], 2) if m else "not run"
        f1 = round(100 * m["macro_f1"], 2) if m else "not run"
        row = {"Learning rate": r["learning_rate"], **_side_by_side("Accuracy", acc, r["accuracy"], " (%)")}
        rows.append(row | _side_by_side("Macro-F1", f1, r["macro_f1"]))
    return pd.DataFrame(rows)


def translation_vs_study(paths: RunPaths, task: str, points: dict[str, dict], ref: dict) -> pd.DataFrame:
    """kdsweep's SacreBLEU and COMET next to the study's, for the base model and each learning rate."""
    rows = []
    for r in ref["rows"]:
        pid = "base" if r.get("model") == "base" else _matching_point(points, r)
        result = read_json(paths.eval_json(task, pid)) if pid else None
        bleu = round(result["bleu"], 2) if result else "not run"
        comet = "not run" if result is None else result.get("comet")
        comet = "not computed" if comet is None else (comet if isinstance(comet, str) else round(comet, 4))
        model = "Base model" if pid == "base" else f"Distilled (learning rate {r['learning_rate']:g})"
        row = {"Model": model, **_side_by_side("SacreBLEU", bleu, r["bleu"])}
        rows.append(row | _side_by_side("COMET", comet, r["comet"]))
    return pd.DataFrame(rows)


def _study_md(paths: RunPaths, table: pd.DataFrame, task: str, title: str, note: str) -> list[str]:
    md = [f"### {title}: kdsweep and the study", "", note + " diff = kdsweep - study.", ""]
    return md + _table_md(paths, table, f"{task}_vs_study", f"{title}: kdsweep and the original study")


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
        if reference and task in reference:
            note = f"The study's numbers (reference file); kdsweep's on {reference[task]['split']}."
            md += _study_md(paths, glue_vs_study(paths, task, points, reference[task]), task, task.upper(), note)
        for name, exp in (experiments or {}).items():
            base = exp["base"]
            around = ", ".join(f"{AXIS_LABELS[a].lower()} {base[a]:g}" for a in AXIS_LABELS if a != name)
            md += [f"### {task.upper()}: {EXPERIMENT_TITLES[name]} ({around})", ""]
            table = experiment_table(paths, task, name, exp["rows"])
            md += _table_md(paths, table, f"{task}_{name}", f"{task.upper()}: {EXPERIMENT_TITLES[name]} ({around})")
        png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
        md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def translation_row(result: dict) -> dict:
    """SacreBLEU and chrF as sacrebleu prints them, COMET x 1 (the study's 0.80), why the outputs
    stopped, in % of the scored sentences: at the end marker, at an end token (eos/eot), or at
    max_new_tokens (runaway), and how many test sentences were not translated (prompt too long)."""
    comet = result.get("comet")
    return {
        "SacreBLEU": round(result["bleu"], 2),
        "chrF": round(result["chrf"], 2),
        "COMET": "not computed" if comet is None else round(comet, 4),
        "Ended with marker (%)": round(100 * result["stop_rates"]["marker"], 1),
        "Ended with eos (%)": round(100 * result["stop_rates"]["eos"], 1),
        "Runaway (%)": round(100 * result["stop_rates"]["max_new_tokens"], 1),
        "Length ratio": round(result["length_ratio"], 3),
        # metrics written before the count existed say so rather than claim 0
        "Prompt too long (not scored)": result.get("dropped_prompt_too_long", "not recorded"),
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


STOP_NOTES = {
    "marker": "",
    "eos": " *(stopped at eos, no end marker)*",
    "max_new_tokens": " *(runaway: max_new_tokens)*",
    "prompt_too_long": " *(not translated: prompt too long)*",  # generation.PROMPT_TOO_LONG
}


def write_samples(paths: RunPaths, task: str, names: dict[str, str], count: int) -> Path:
    """The first `count` test sentences: source, reference and every model's translation."""
    outputs = {label: read_jsonl(paths.eval_translations(task, name)) for label, name in names.items()}
    first = next(iter(outputs.values()))
    md = [f"# {task}: sample translations", ""]
    for i, row in enumerate(first[:count]):
        md += [f"## {i + 1}. (test id {row['id']})", "", f"- **Source**: {row['source']}"]
        md += [f"- **Reference**: {row['reference']}"]
        for label, rows in outputs.items():
            md.append(f"- **{label}**: {rows[i]['hypothesis'] or ''}{STOP_NOTES[rows[i]['stop']]}")
        md.append("")
    out = Path(paths.report_samples(task))
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    with atomic_path(out.with_suffix(".html")) as tmp:
        tmp.write_text(_samples_html(task, outputs, count))
    return out


def _samples_html(task: str, outputs: dict[str, list[dict]], count: int) -> str:
    first = next(iter(outputs.values()))
    body = []
    for i, row in enumerate(first[:count]):
        items = [("Source", row["source"]), ("Reference", row["reference"])]
        for label, rows in outputs.items():
            items.append((label, (rows[i]["hypothesis"] or "") + STOP_NOTES[rows[i]["stop"]].replace("*", "")))
        lis = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in items)
        body.append(f"<h3>{i + 1}. (test id {html.escape(str(row['id']))})</h3><ul>{lis}</ul>")
    return html_page(f"{task}: sample translations", "\n".join(body))


def translation_section(
    paths: RunPaths, task: str, points: dict[str, dict], swept: list[str], samples: int, reference: dict | None = None
) -> list[str]:
    """reference: the reference file's `translation` block ({rows: [{model: base | learning_rate,
    bleu, comet}]})."""
    stem = Path(paths.report_table(task, "learning_rate", "csv")).with_suffix("")
    table = translation_table(paths, task, points, swept)
    write_table(table, stem, f"{task}: SacreBLEU and COMET of the distilled students")
    base = read_json(paths.eval_json(task, "base"))
    cache = open_pointer(paths.cache_pointer(task)).manifest()
    md = [f"## Translation ({task})", "", _manifest_summary(paths, task), ""]
    md += [
        f"Teacher cache: top-{cache['key_parts']['top_k']} log-probabilities of {cache['response_tokens']} response tokens, "
        f"{cache['bytes_per_token']:.0f} bytes/token, mean captured probability mass "
        f"{100 * cache['mean_captured_mass']:.2f} %, targets: {cache['key_parts']['targets']}.",
        "",
    ]
    md += [table.to_markdown(index=False, floatfmt="g"), "", _table_links(paths, stem), ""]
    if reference:
        note = "The study's numbers (reference file): SacreBLEU and COMET (x 1)."
        md += _study_md(paths, translation_vs_study(paths, task, points, reference), task, task, note)
    gen = base["generation"]
    decoding = "greedy" if gen["num_beams"] == 1 else f"beam search ({gen['num_beams']} beams)"
    md += [f"Test sentences: {base['examples']}; decoding: {decoding}, at most {gen['max_new_tokens']} new tokens."]
    if "max_prompt_tokens" in base:
        md[-1] += (
            f" Prompts longer than {base['max_prompt_tokens']} tokens (translation.max_length, within the model's "
            "context) are not translated and not scored: column Prompt too long."
        )
    md += ["", f"- BLEU signature: `{base['bleu_signature']}`", f"- chrF signature: `{base['chrf_signature']}`"]
    md.append(f"- COMET: {base['comet_model']}" if base.get("comet") is not None else f"- COMET {base['comet_note']}")
    md += [
        "- Stop reasons: Ended with marker, the share of outputs that emitted the end-of-translation marker; "
        "Ended with eos, the share that stopped at an end token (eos, <|eot_id|>), as an Instruct model that "
        "never saw the marker does; Runaway, the share that ran to max_new_tokens (the study's problem)"
    ]
    names = {"Base model": "base", "Teacher": "teacher", **{f"Distilled {p}": p for p in points}}
    sample_file = write_samples(paths, task, names, samples)
    png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
    md += ["", f"Sample translations: [{sample_file.name}]({sample_file.relative_to(paths.root)})", ""]
    md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


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
    return md + _table_md(paths, table, "runtime", "Runtime and GPU-hours per rule")


def load_reference(path: str | Path | None) -> dict:
    """The study's reference numbers (config/study_reference.yaml), or {} without a file."""
    return yaml.safe_load(Path(path).read_text()) if path else {}


TABLE_EXTS = ("csv", "md", "tex", "html")  # write_table writes each table in these formats


def report_outputs(paths: RunPaths, spec: dict) -> dict[str, list[str]]:
    """Every file write_report writes for `spec`, by kind: "md" (report.md), "tables" (each as
    csv, md, tex and html), "plots", "samples" (Markdown and HTML). The report rule declares
    exactly these as its outputs (tested against what write_report leaves in report/)."""
    stems, reference = [], load_reference(spec.get("reference"))  # a comparison per task it covers
    if "glue" in spec:
        g = spec["glue"]
        for task in g["tasks"]:
            stems.append(paths.report_file(f"{task}_all_runs", "{ext}"))
            stems += [paths.report_table(task, axis, "{ext}") for axis in g["swept"]]
            if task in (reference.get("glue") or {}):
                stems.append(paths.report_file(f"{task}_vs_study", "{ext}"))
            stems += [paths.report_file(f"{task}_{name}", "{ext}") for name in g.get("experiments") or {}]
    if "translation" in spec:
        task = spec["translation"]["task"]
        stems.append(paths.report_table(task, "learning_rate", "{ext}"))
        if reference.get("translation"):
            stems.append(paths.report_file(f"{task}_vs_study", "{ext}"))
    stems.append(paths.report_file("runtime", "{ext}"))
    tasks = [*spec.get("glue", {}).get("tasks", []), *([spec["translation"]["task"]] if "translation" in spec else [])]
    samples = []
    if "translation" in spec:
        md = paths.report_samples(spec["translation"]["task"])
        samples = [md, md.removesuffix(".md") + ".html"]
    return {
        "md": [paths.report_md()],
        "tables": [stem.format(ext=ext) for stem in stems for ext in TABLE_EXTS],
        "plots": [paths.report_plot(task) for task in tasks],
        "samples": samples,
    }


def write_report(paths: RunPaths, spec: dict) -> Path:
    """spec: {"title", "reference": path or null, "glue": {tasks, points, swept, experiments}
    (optional), "translation": {task, points, swept, samples} (optional)}."""
    Path(paths.report_dir()).mkdir(parents=True, exist_ok=True)
    reference = load_reference(spec.get("reference"))
    md = [f"# {spec['title']}", ""]
    if "glue" in spec:
        g = spec["glue"]
        md += glue_section(paths, g["tasks"], g["points"], g["swept"], g.get("experiments"), reference.get("glue"))
    if "translation" in spec:
        t = spec["translation"]
        md += translation_section(paths, t["task"], t["points"], t["swept"], t["samples"], reference.get("translation"))
    md += runtime_section(paths)
    out = Path(paths.report_md())
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md))
    return out
