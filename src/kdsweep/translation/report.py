"""The translation family's report section: learning rate x (SacreBLEU, chrF, COMET, stop
reasons, length ratio) with the base student and teacher rows (each point's mean over its seeds,
with their standard deviation and number when there are several, and whether its runs beat the
base student and the teacher in sacrebleu's paired bootstrap test), every run's table with 95 %
bootstrap intervals and p-values, the teacher cache's summary, sample translations (Markdown and
HTML), the comparison with the reference file's numbers (the mean over seeds), and the loss
curves."""

from __future__ import annotations

import html
import statistics
from pathlib import Path

import pandas as pd

from kdsweep.core.cache import open_pointer
from kdsweep.core.io import atomic_path, read_json, read_jsonl
from kdsweep.core.paths import RunPaths
from kdsweep.core.report import (
    AXIS_LABELS,
    EXPERIMENT_COLUMNS,
    SEEDS,
    experiment_md,
    experiment_runs,
    html_page,
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
from kdsweep.translation.comet_score import comet_not_computed
from kdsweep.translation.metrics import SIGNIFICANCE_LEVEL, paired_test


def model_result(paths: RunPaths, task: str, name: str, comet_cfg: dict) -> dict:
    """Model `name`'s evaluation JSON with its COMET result merged in: {comet, comet_model} from
    score_comet's eval/<task>/<name>.comet.json when the config turns COMET on, else
    {comet: None, comet_note: "not computed: ... (reason)"}."""
    result = read_json(paths.eval_json(task, name))
    if not comet_cfg["enabled"]:
        return result | {"comet": None, "comet_note": comet_not_computed(comet_cfg)}
    comet_file = paths.eval_comet(task, name)
    comet = read_json(comet_file)
    # Snakemake reruns score_comet when the translations or the COMET settings change; results
    # touched, copied or planned by mtime alone could still pair other files: refuse those.
    if comet["comet_model"] != comet_cfg["model"] or comet["scored"] != result["scored"]:
        raise ValueError(
            f"{comet_file}: COMET of {comet['scored']} translations with {comet['comet_model']!r}, but "
            f"{paths.eval_json(task, name)} scored {result['scored']} and the config's COMET model is "
            f"{comet_cfg['model']!r}: stale COMET result; delete it and rerun (snakemake reruns score_comet)"
        )
    return result | {"comet": comet["comet"], "comet_model": comet["comet_model"]}


# decimals of each column of translation_row (as sacrebleu prints BLEU and chrF; COMET x 1)
PLACES = {
    "SacreBLEU": 2,
    "chrF": 2,
    "COMET": 4,
    "Ended with marker (%)": 1,
    "Ended with eos (%)": 1,
    "Runaway (%)": 1,
    "Length ratio": 3,
    "Prompt too long (not scored)": 1,
}
SD = ("SacreBLEU", "chrF", "COMET")  # the metrics whose spread over seeds the table gives


def translation_row(result: dict, rounded: bool = True) -> dict:
    """SacreBLEU and chrF as sacrebleu prints them, COMET x 1 (the study's 0.80), why the outputs
    stopped, in % of the scored sentences: at the end marker, at an end token (eos/eot), or at
    max_new_tokens (runaway), and how many test sentences were not translated (prompt too long).
    rounded=False: the raw values (a mean over seeds is taken before rounding)."""
    comet = result.get("comet")
    row = {
        "SacreBLEU": result["bleu"],
        "chrF": result["chrf"],
        "COMET": "not computed" if comet is None else comet,
        "Ended with marker (%)": 100 * result["stop_rates"]["marker"],
        "Ended with eos (%)": 100 * result["stop_rates"]["eos"],
        "Runaway (%)": 100 * result["stop_rates"]["max_new_tokens"],
        "Length ratio": result["length_ratio"],
        # metrics written before the count existed say so rather than claim 0
        "Prompt too long (not scored)": result.get("dropped_prompt_too_long", "not recorded"),
    }
    if rounded:
        row = {k: round(v, PLACES[k]) if isinstance(v, float) else v for k, v in row.items()}
    return row


def model_runs(
    points: dict[str, dict], swept: list[str], extra: dict[str, dict] | None = None
) -> list[tuple[str, str]]:
    """(row label, run name) of every model in the study's table's order: the base student, the
    runs of each sweep point (learning rates from high to low, as in the study), the teacher;
    `extra` (the experiments' own runs) after the sweep's, labelled "Experiment"."""
    by_rate = sorted(points.items(), key=lambda kv: (-kv[1]["learning_rate"], kv[1]["alpha"], kv[1]["temperature"]))
    runs = [("Base model", "base")]
    for point_id, params in by_rate:
        runs.append((f"Distilled ({', '.join(f'{AXIS_LABELS[a].lower()} {params[a]:g}' for a in swept)})", point_id))
    runs += [("Experiment", name) for name in extra or {} if name not in points]
    return runs + [("Teacher", "teacher")]


BASELINES = {"base": "Base model", "teacher": "Teacher"}


def significance(paths: RunPaths, task: str, names: list[str]) -> dict[str, dict[str, dict]]:
    """sacrebleu's paired bootstrap test (metrics.paired_test) of every model against the base
    student and against the teacher, on the test sentences both translated: {name: {"base":
    test, "teacher": test}} (a baseline is not tested against itself)."""
    outputs = {n: {r["id"]: r for r in read_jsonl(paths.eval_translations(task, n))} for n in names}
    tests: dict[str, dict[str, dict]] = {n: {} for n in names}
    for baseline in BASELINES:
        for name in names:
            if name == baseline:
                continue
            a, b = outputs[baseline], outputs[name]
            ids = [i for i in a if i in b and a[i]["hypothesis"] is not None and b[i]["hypothesis"] is not None]
            tests[name][baseline] = paired_test(
                [a[i]["hypothesis"] for i in ids], [b[i]["hypothesis"] for i in ids], [a[i]["reference"] for i in ids]
            )
    return tests


def verdict(tests: list[dict], metric: str = "bleu") -> str:
    """What the paired tests of a point's runs against one baseline say, at p < SIGNIFICANCE_LEVEL:
    one run: "better (p = 0.001)", "worse (...)" or "n.s. (p = 0.31)"; several: how many runs
    are significantly better, worse or not significantly different ("better 2/2")."""
    if not tests:
        return ""

    def one(test: dict) -> str:
        m = test[metric]
        return "n.s." if m["p"] >= SIGNIFICANCE_LEVEL else ("better" if m["diff"] > 0 else "worse")

    if len(tests) == 1:
        return f"{one(tests[0])} (p = {tests[0][metric]['p']:.3g})"
    counts = {v: sum(one(t) == v for t in tests) for v in ("better", "worse", "n.s.")}
    return ", ".join(f"{v} {n}/{len(tests)}" for v, n in counts.items() if n)


def translation_table(
    paths: RunPaths,
    task: str,
    points: dict[str, dict],
    swept: list[str],
    comet_cfg: dict,
    tests: dict[str, dict[str, dict]] | None = None,
) -> pd.DataFrame:
    """The study's table: a "Base model" row, one row per sweep point (the mean over its seeds,
    with sd and Seeds when it has several), and the teacher; with `tests` (significance()), the
    BLEU verdict of each row's runs against the base student and the teacher."""
    runs, verdicts = [], {}
    for label, name in model_runs(points, swept):
        runs.append({"Model": label, **translation_row(model_result(paths, task, name, comet_cfg), rounded=False)})
        for baseline in BASELINES:
            if tests is not None and baseline in tests[name]:
                verdicts.setdefault((label, baseline), []).append(tests[name][baseline])
    table = seed_summary(runs, ["Model"], PLACES, sd=SD)
    if tests is not None:
        for baseline, column in BASELINES.items():
            table[f"BLEU vs {column.lower()}"] = [verdict(verdicts.get((m, baseline), [])) for m in table["Model"]]
    return table


EXPERIMENT_METRICS = ("SacreBLEU", "chrF", "COMET", "Runaway (%)")  # an experiment table's columns


def experiment_table(paths: RunPaths, task: str, experiment: str, rows, comet_cfg: dict) -> pd.DataFrame:
    """One experiment's table (core.report.experiment_runs): a row per alpha or temperature value,
    or KD loss kind and tail, with SacreBLEU, chrF, COMET and the runaway rate, each the mean of
    its runs (sd and Seeds with several)."""

    def metrics_of(name: str) -> dict:
        row = translation_row(model_result(paths, task, name, comet_cfg), rounded=False)
        return {k: row[k] for k in EXPERIMENT_METRICS}

    runs = experiment_runs(experiment, rows, metrics_of)
    places = {k: PLACES[k] for k in EXPERIMENT_METRICS}
    return seed_summary(runs, [EXPERIMENT_COLUMNS[experiment]], places, sd=SD)


def translation_runs_table(
    paths: RunPaths,
    task: str,
    points: dict[str, dict],
    swept: list[str],
    tests: dict[str, dict[str, dict]],
    runs: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Every model run (the sweep's `points`, the experiments' `runs`): its BLEU and chrF with
    their 95 % bootstrap intervals (sacrebleu's, from the evaluation), the p-values of the paired
    tests against the base student and the teacher, and the model's fingerprint and provenance
    record (the job that made it)."""
    rows, every = [], {**(runs or {}), **points}
    for label, name in model_runs(points, swept, runs):
        result = read_json(paths.eval_json(task, name))
        row = {"Model": label, "Run": name, "Seed": every.get(name, {}).get("seed", "")}
        for metric, column in (("bleu", "SacreBLEU"), ("chrf", "chrF")):
            ci = result.get(f"{metric}_ci95")
            row |= {column: round(result[metric], 2), f"{column} 95% CI": interval(ci) if ci else "not computed"}
        for baseline, who in BASELINES.items():
            for metric, column in (("bleu", "BLEU"), ("chrf", "chrF")):
                test = tests[name].get(baseline)
                row[f"{column} p vs {who.lower()}"] = f"{test[metric]['p']:.3g}" if test else ""
        rows.append(row | provenance_cells(result))
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


def translation_vs_study(
    paths: RunPaths, task: str, points: dict[str, dict], ref: dict, comet_cfg: dict
) -> pd.DataFrame:
    """kdsweep's SacreBLEU and COMET next to the study's, for the base model and each learning rate."""
    rows, seeds = [], []
    for r in ref["rows"]:
        names = ["base"] if r.get("model") == "base" else matching_runs(points, r)
        results = [model_result(paths, task, n, comet_cfg) for n in names]
        bleu = round(statistics.fmean(x["bleu"] for x in results), 2) if results else "not run"
        comets = [x.get("comet") for x in results]
        if not results:
            comet = "not run"
        elif None in comets:
            comet = "not computed"
        else:
            comet = round(statistics.fmean(comets), 4)
        model = "Base model" if names == ["base"] else f"Distilled (learning rate {r['learning_rate']:g})"
        row = {"Model": model, **side_by_side("SacreBLEU", bleu, r["bleu"])}
        rows.append(row | side_by_side("COMET", comet, r["comet"]))
        seeds.append(len(results))
    table = pd.DataFrame(rows)
    if any(n > 1 for n in seeds):  # kdsweep's numbers are the means of these runs
        table.insert(1, SEEDS, seeds)
    return table


def cache_line(manifest: dict) -> str:
    """The report's line on the teacher cache: its method, k or the draws, bytes per token and
    what the method keeps of the teacher (top-k: the probability mass it captures; sampled: the
    distinct ids and the effective sample size of the draws' counts)."""
    key = manifest["key_parts"]
    tokens, size = manifest["response_tokens"], manifest["bytes_per_token"]
    if key.get("method") == "sampled":
        what = (
            f"{key['draws']} tokens drawn per response token from the teacher at temperature {key['temperature']:g} "
            f"(method sampled, seed {key['seed']}), {tokens} response tokens, {size:.0f} bytes/token, "
            f"{manifest['mean_distinct_ids']:.2f} distinct ids and an effective sample size of "
            f"{manifest['mean_effective_sample_size']:.2f} per token"
        )
    else:
        what = (
            f"top-{key['top_k']} log-probabilities (method topk) of {tokens} response tokens, {size:.0f} bytes/token, "
            f"mean captured probability mass {100 * manifest['mean_captured_mass']:.2f} %"
        )
    return f"Teacher cache: {what}, targets: {key['targets']}."


def translation_section(
    paths: RunPaths,
    task: str,
    points: dict[str, dict],
    swept: list[str],
    samples: int,
    comet_cfg: dict,
    reference: dict | None = None,
    experiments: dict | None = None,
    every_run: dict[str, dict] | None = None,
) -> list[str]:
    """comet_cfg: translation.evaluate.comet ({enabled, reason, ...}); reference: the reference
    file's `translation` block ({rows: [{model: base | learning_rate, bleu, comet}]}); experiments:
    {name: {"base": point, "rows": [[label, [run ids]], ...]}}; every_run: every distillation run
    (the sweep's and the experiments'), for the all-runs table and its paired tests."""
    stem = Path(paths.report_table(task, "learning_rate", "csv")).with_suffix("")
    tests = significance(paths, task, [name for _, name in model_runs(points, swept, every_run)])
    table = translation_table(paths, task, points, swept, comet_cfg, tests)
    write_table(table, stem, f"{task}: SacreBLEU and COMET of the distilled students")
    runs_stem = Path(paths.report_file(f"{task}_all_runs", "csv")).with_suffix("")
    runs = translation_runs_table(paths, task, points, swept, tests, every_run)
    write_table(runs, runs_stem, f"{task}: every model run, with 95 % bootstrap intervals and paired tests")
    base = model_result(paths, task, "base", comet_cfg)
    cache = open_pointer(paths.cache_pointer(task)).manifest()
    md = [f"## Translation ({task})", "", manifest_summary(paths, task), ""]
    md += [cache_line(cache), ""]
    md += [table.to_markdown(index=False, floatfmt="g"), "", table_links(paths, stem), ""]
    md += [
        seeds_note(table, "run")
        + f" BLEU vs base model / teacher: sacrebleu's paired bootstrap resampling test of each run against that "
        f"model on the same sentences, significant at p < {SIGNIFICANCE_LEVEL:g} (better / worse; n.s.: not "
        "significant; no correction for the number of comparisons).",
        "",
        runs.to_markdown(index=False, floatfmt="g"),
        "",
        table_links(paths, runs_stem),
        "",
    ]
    if reference:
        note = "The study's numbers (reference file): SacreBLEU and COMET (x 1)."
        md += study_md(paths, translation_vs_study(paths, task, points, reference, comet_cfg), task, task, note)
    gen = base["generation"]
    decoding = "greedy" if gen["num_beams"] == 1 else f"beam search ({gen['num_beams']} beams)"
    md += [f"Test sentences: {base['examples']}; decoding: {decoding}, at most {gen['max_new_tokens']} new tokens."]
    if "max_prompt_tokens" in base:
        md[-1] += (
            f" Prompts longer than {base['max_prompt_tokens']} tokens (translation.max_length, within the model's "
            "context) are not translated and not scored: column Prompt too long."
        )
    md += ["", f"- BLEU signature: `{base['bleu_signature']}`", f"- chrF signature: `{base['chrf_signature']}`"]
    with_ci = next(
        (r for r in map(lambda n: read_json(paths.eval_json(task, n)), tests) if "bleu_ci_signature" in r), None
    )
    if with_ci:  # evaluations from before the intervals have none
        md += [
            "- 95 % intervals: sacrebleu's bootstrap (its mean over the resamples +- half the range of their "
            f"2.5th to 97.5th percentiles), BLEU `{with_ci['bleu_ci_signature']}`, chrF `{with_ci['chrf_ci_signature']}`"
        ]
    signatures = next(iter(tests["teacher"].values()))["signatures"]
    md += [f"- Paired bootstrap test: BLEU `{signatures['bleu']}`, chrF `{signatures['chrf']}`"]
    md.append(f"- COMET: {base['comet_model']}" if base.get("comet") is not None else f"- COMET {base['comet_note']}")
    md += [
        "- Stop reasons: Ended with marker, the share of outputs that emitted the end-of-translation marker; "
        "Ended with eos, the share that stopped at an end token (eos, <|eot_id|>), as an Instruct model that "
        "never saw the marker does; Runaway, the share that ran to max_new_tokens (the study's problem)"
    ]
    for name, exp in (experiments or {}).items():
        table = experiment_table(paths, task, name, exp["rows"], comet_cfg)
        md += ["", *experiment_md(paths, task, task, name, exp["base"], table)]
    names = {"Base model": "base", "Teacher": "teacher", **{f"Distilled {p}": p for p in points}}
    sample_file = write_samples(paths, task, names, samples)
    png = plot_loss_curves(paths, task, points, Path(paths.report_plot(task)))
    md += ["", f"Sample translations: [{sample_file.name}]({sample_file.relative_to(paths.root)})", ""]
    md += [f"![{task} loss curves]({png.relative_to(paths.root)})", ""]
    return md


def section(paths: RunPaths, t: dict, reference: dict | None) -> list[str]:
    """The report's translation section; t: {task, points (the sweep's runs), swept, samples, comet,
    experiments, runs (every distillation run)}."""
    return translation_section(
        paths,
        t["task"],
        t["points"],
        t["swept"],
        t["samples"],
        t["comet"],
        reference,
        t.get("experiments"),
        t.get("runs"),
    )


def outputs(paths: RunPaths, t: dict, reference: dict | None) -> dict[str, list[str]]:
    """The files section() writes."""
    task = t["task"]
    tables = table_files(paths.report_table(task, "learning_rate", "{ext}"))
    tables += table_files(paths.report_file(f"{task}_all_runs", "{ext}"))
    if reference:
        tables += table_files(paths.report_file(f"{task}_vs_study", "{ext}"))
    for name in t.get("experiments") or {}:
        tables += table_files(paths.report_file(f"{task}_{name}", "{ext}"))
    samples = paths.report_samples(task)
    return {
        "tables": tables,
        "plots": [paths.report_plot(task)],
        "samples": [samples, samples.removesuffix(".md") + ".html"],
    }
