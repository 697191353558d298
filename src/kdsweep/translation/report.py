"""The translation family's report section: learning rate x (SacreBLEU, chrF, COMET, stop
reasons, length ratio) with the base student and teacher rows, the teacher cache's summary,
sample translations (Markdown and HTML), the comparison with the reference file's numbers, and
the loss curves."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from kdsweep.core.cache import open_pointer
from kdsweep.core.io import atomic_path, read_json, read_jsonl
from kdsweep.core.paths import RunPaths
from kdsweep.core.report import (
    AXIS_LABELS,
    html_page,
    manifest_summary,
    matching_point,
    plot_loss_curves,
    side_by_side,
    study_md,
    table_files,
    table_links,
    write_table,
)
from kdsweep.translation.comet_score import comet_not_computed


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


def translation_table(
    paths: RunPaths, task: str, points: dict[str, dict], swept: list[str], comet_cfg: dict
) -> pd.DataFrame:
    """The study's table: a "Base model" row, one row per sweep point, and the teacher."""
    rows = [{"Model": "Base model", **translation_row(model_result(paths, task, "base", comet_cfg))}]
    by_rate = sorted(points.items(), key=lambda kv: (-kv[1]["learning_rate"], kv[1]["alpha"], kv[1]["temperature"]))
    for point_id, params in by_rate:  # as in the study: learning rates from high to low
        label = ", ".join(f"{AXIS_LABELS[a].lower()} {params[a]:g}" for a in swept)
        result = model_result(paths, task, point_id, comet_cfg)
        rows.append({"Model": f"Distilled ({label})", **translation_row(result)})
    rows.append({"Model": "Teacher", **translation_row(model_result(paths, task, "teacher", comet_cfg))})
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
    rows = []
    for r in ref["rows"]:
        pid = "base" if r.get("model") == "base" else matching_point(points, r)
        result = model_result(paths, task, pid, comet_cfg) if pid else None
        bleu = round(result["bleu"], 2) if result else "not run"
        comet = "not run" if result is None else result.get("comet")
        comet = "not computed" if comet is None else (comet if isinstance(comet, str) else round(comet, 4))
        model = "Base model" if pid == "base" else f"Distilled (learning rate {r['learning_rate']:g})"
        row = {"Model": model, **side_by_side("SacreBLEU", bleu, r["bleu"])}
        rows.append(row | side_by_side("COMET", comet, r["comet"]))
    return pd.DataFrame(rows)


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
) -> list[str]:
    """comet_cfg: translation.evaluate.comet ({enabled, reason, ...}); reference: the reference
    file's `translation` block ({rows: [{model: base | learning_rate, bleu, comet}]})."""
    stem = Path(paths.report_table(task, "learning_rate", "csv")).with_suffix("")
    table = translation_table(paths, task, points, swept, comet_cfg)
    write_table(table, stem, f"{task}: SacreBLEU and COMET of the distilled students")
    base = model_result(paths, task, "base", comet_cfg)
    cache = open_pointer(paths.cache_pointer(task)).manifest()
    md = [f"## Translation ({task})", "", manifest_summary(paths, task), ""]
    md += [cache_line(cache), ""]
    md += [table.to_markdown(index=False, floatfmt="g"), "", table_links(paths, stem), ""]
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


def section(paths: RunPaths, t: dict, reference: dict | None) -> list[str]:
    """The report's translation section; t: {task, points, swept, samples, comet}."""
    return translation_section(paths, t["task"], t["points"], t["swept"], t["samples"], t["comet"], reference)


def outputs(paths: RunPaths, t: dict, reference: dict | None) -> dict[str, list[str]]:
    """The files section() writes."""
    task = t["task"]
    tables = table_files(paths.report_table(task, "learning_rate", "{ext}"))
    if reference:
        tables += table_files(paths.report_file(f"{task}_vs_study", "{ext}"))
    samples = paths.report_samples(task)
    return {
        "tables": tables,
        "plots": [paths.report_plot(task)],
        "samples": [samples, samples.removesuffix(".md") + ".html"],
    }
