"""Stage `evaluate` for translation: one model (the base student, the teacher or a distilled
student) translates the test split; SacreBLEU BLEU and chrF (with their signatures), why the
outputs stopped (the shares that ended with the end marker, with an end token such as <|eot_id|>,
and that ran to max_new_tokens: the runaway rate) and the hypothesis/reference length ratio. Writes
the metrics JSON and the translations (JSONL, with each output's stop reason, for the report's
samples and for COMET, which scores them in its own environment: translation/comet_score.py).

A test source whose prompt is longer than the pipeline's max_length tokens (or than leaves room for
max_new_tokens in the model's context) is not translated and not scored; the metrics JSON counts
them (dropped_prompt_too_long) next to the limit (max_prompt_tokens), and the translations file
keeps the row with stop "prompt_too_long" and no hypothesis."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kdsweep.core.io import read_jsonl, write_json, write_jsonl
from kdsweep.core.models import resolve
from kdsweep.core.provenance import evaluation_fields
from kdsweep.core.spec import setting
from kdsweep.translation.generation import (
    PROMPT_TOO_LONG,
    STOP_REASONS,
    generate_translations,
    load_lm_tokenizer,
    prompt_token_limit,
)
from kdsweep.translation.models import load_causal_lm
from kdsweep.translation.prompt import make_prompt

log = logging.getLogger(__name__)


def stop_rates(outputs: list[dict]) -> dict[str, float]:
    """The share of outputs per stop reason (generation.STOP_REASONS): marker, eos, max_new_tokens."""
    return {reason: sum(o["stop"] == reason for o in outputs) / max(len(outputs), 1) for reason in STOP_REASONS}


@dataclass
class EvaluateTranslationSpec:
    """Stage evaluate-translation (the base student, the teacher or a distilled student)."""

    prompt: dict = setting("translation.prompt")
    max_length: int = setting("translation.max_length: tokens, prompt + response")
    evaluate: dict = setting("translation.evaluate without samples and comet: batch_size, max_new_tokens, num_beams")
    params: dict | None = setting(
        "the sweep point's settings, recorded in the result ({}: base, teacher)", default=None
    )


def evaluate_translation(
    model_path: str,
    data_dir: str | Path,
    out: str | Path,
    translations_out: str | Path,
    name: str,
    spec: EvaluateTranslationSpec,
    split: str = "test",
) -> dict:
    from kdsweep.translation.metrics import sacrebleu_scores

    prompt_cfg, eval_cfg, max_length, params = spec.prompt, spec.evaluate, spec.max_length, spec.params

    data_file = Path(data_dir) / f"{split}.jsonl"
    rows = read_jsonl(data_file)
    tokenizer = load_lm_tokenizer(model_path)
    model = load_causal_lm(model_path)
    prompt = make_prompt(tokenizer, prompt_cfg)
    # Over-long prompts are dropped, not truncated: a translation of a cut source, scored against
    # the whole reference, would measure the cut rather than the model; the pairs trained on and
    # cached obey the same max_length (longer ones are dropped there too). Every model of a run
    # has the same tokenizer and max_length, so all drop the same rows unless one's context is
    # shorter; each model's count is in its metrics and in the report's table.
    limit = prompt_token_limit(model, max_length, eval_cfg["max_new_tokens"])
    outputs = generate_translations(
        model,
        tokenizer,
        prompt,
        [r["source"] for r in rows],
        eval_cfg["batch_size"],
        eval_cfg["max_new_tokens"],
        eval_cfg["num_beams"],
        desc=f"translate {name} {split}",
        max_prompt_tokens=limit,
    )
    scored = [i for i, o in enumerate(outputs) if o["stop"] != PROMPT_TOO_LONG]
    dropped = len(rows) - len(scored)
    if not scored:
        raise ValueError(
            f"{data_file}: the prompts of all {len(rows)} sources are longer than {limit} tokens "
            f"(translation.max_length {max_length}, max_new_tokens {eval_cfg['max_new_tokens']}): nothing to score"
        )
    if dropped:
        log.warning(
            "%s: %d of %d prompts longer than %d tokens: not translated, not scored", name, dropped, len(rows), limit
        )
    hyps, refs = [outputs[i]["hypothesis"] for i in scored], [rows[i]["target"] for i in scored]
    result = {
        "model": name,
        "model_path": str(model_path),
        **evaluation_fields(resolve(model_path, weights=True)),  # model_fingerprint, model_provenance
        "params": params or {},
        "split": split,
        "examples": len(rows),
        "scored": len(scored),
        "dropped_prompt_too_long": dropped,
        "max_prompt_tokens": limit,
        "generation": {k: eval_cfg[k] for k in ("max_new_tokens", "num_beams")},
        "stop_rates": stop_rates([outputs[i] for i in scored]),
        **sacrebleu_scores(hyps, refs),
    }
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
