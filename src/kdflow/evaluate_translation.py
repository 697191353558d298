"""Stage `evaluate` for translation: one model (the base student, the teacher or a distilled
student) translates the test split; SacreBLEU BLEU and chrF (with their signatures), COMET
(unbabel-comet) when the config turns it on, why the outputs stopped (the shares that ended with
the end marker, with an end token such as <|eot_id|>, and that ran to max_new_tokens: the runaway
rate) and the hypothesis/reference length ratio. Writes the metrics JSON and the translations
(JSONL, with each output's stop reason, for the report's samples)."""

from __future__ import annotations

import logging
from pathlib import Path

from .fileio import read_jsonl, write_json, write_jsonl
from .generation import STOP_REASONS, generate_translations, load_lm_tokenizer
from .models import load_causal_lm
from .prompt import make_prompt

log = logging.getLogger(__name__)


def comet_not_computed(comet_cfg: dict) -> str:
    return "not computed: evaluate.comet.enabled is false in the config" + (
        f" ({comet_cfg['reason']})" if comet_cfg.get("reason") else ""
    )


def stop_rates(outputs: list[dict]) -> dict[str, float]:
    """The share of outputs per stop reason (generation.STOP_REASONS): marker, eos, max_new_tokens."""
    return {reason: sum(o["stop"] == reason for o in outputs) / max(len(outputs), 1) for reason in STOP_REASONS}


def evaluate_translation(
    model_path: str,
    data_dir: str | Path,
    prompt_cfg: dict,
    eval_cfg: dict,
    out: str | Path,
    translations_out: str | Path,
    name: str,
    params: dict | None = None,
    split: str = "test",
) -> dict:
    """eval_cfg: batch_size, max_new_tokens, num_beams, comet {enabled, model, batch_size, gpus}."""
    from .translation_metrics import comet_score, sacrebleu_scores

    rows = read_jsonl(Path(data_dir) / f"{split}.jsonl")
    tokenizer = load_lm_tokenizer(model_path)
    model = load_causal_lm(model_path)
    prompt = make_prompt(tokenizer, prompt_cfg)
    outputs = generate_translations(
        model,
        tokenizer,
        prompt,
        [r["source"] for r in rows],
        eval_cfg["batch_size"],
        eval_cfg["max_new_tokens"],
        eval_cfg["num_beams"],
        desc=f"translate {name} {split}",
    )
    hyps, refs = [o["hypothesis"] for o in outputs], [r["target"] for r in rows]
    result = {
        "model": name,
        "model_path": str(model_path),
        "params": params or {},
        "split": split,
        "examples": len(rows),
        "generation": {k: eval_cfg[k] for k in ("max_new_tokens", "num_beams")},
        "stop_rates": stop_rates(outputs),
        **sacrebleu_scores(hyps, refs),
    }
    comet_cfg = eval_cfg["comet"]
    if comet_cfg["enabled"]:
        del model  # free the LM's memory for COMET
        scores = comet_score(
            [r["source"] for r in rows], hyps, refs, comet_cfg["model"], comet_cfg["batch_size"], comet_cfg["gpus"]
        )
        result.update({"comet": scores["comet"], "comet_model": scores["comet_model"]})
        for o, seg in zip(outputs, scores["segment_scores"], strict=True):
            o["comet"] = seg
    else:
        result.update({"comet": None, "comet_note": comet_not_computed(comet_cfg)})
    write_jsonl(
        translations_out,
        [
            {"id": r["id"], "source": r["source"], "reference": r["target"], **o}
            for r, o in zip(rows, outputs, strict=True)
        ],
    )
    write_json(out, result)
    log.info(
        "%s: BLEU %.2f chrF %.2f, stopped at the marker %.1f%%, at eos %.1f%%, at max_new_tokens (runaway) %.1f%%",
        name,
        result["bleu"],
        result["chrf"],
        *(100 * result["stop_rates"][r] for r in STOP_REASONS),
    )
    return result
