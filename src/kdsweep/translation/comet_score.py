"""Stage `score-comet` for translation: COMET (unbabel-comet) system and segment scores of one
model's translations (the evaluate stage's translations JSONL), from a local checkpoint or a hub
model already in the local Hugging Face cache.

This module runs in COMET's own environment (requirements/comet.txt, .venv-comet; envs/comet.yaml
under conda): unbabel-comet caps numpy < 2, transformers < 5 and huggingface-hub < 1, which the main
environment is past. Its top-level imports are therefore the standard library and kdsweep modules
that import nothing else at the top (core.io, core.spec, translation.metrics: sacrebleu, in both
environments); `comet` is imported only where a score is computed or a checkpoint downloaded, so the
main environment can still resolve cached and local checkpoints (kdsweep.core.hub uses the same
cache layout) and read comet_not_computed.

Compute nodes have no internet: run with HF_HUB_OFFLINE=1 and download COMET models beforehand on a
node that has it, into the same (shared) Hugging Face cache (kdsweep.core.hub prefetches the checkpoint
and its encoder's config and tokenizer)."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from kdsweep.core.io import read_jsonl, write_json
from kdsweep.core.spec import setting
from kdsweep.translation.metrics import check_lengths

log = logging.getLogger(__name__)

# Their INFO lines (hardware summary, tips, "Encoder model frozen.") are silenced while COMET runs.
_CHATTY_LOGGERS = ("comet", "pytorch_lightning", "lightning_fabric")
# The stop reason of a test source that was not translated (kdsweep.translation.generation's
# PROMPT_TOO_LONG, not imported: generation needs the main environment's torch and transformers).
NOT_TRANSLATED = "prompt_too_long"


def comet_not_computed(comet_cfg: dict) -> str:
    """What the report says when the config turns COMET off (with its reason, if given)."""
    return "not computed: evaluate.comet.enabled is false in the config" + (
        f" ({comet_cfg['reason']})" if comet_cfg.get("reason") else ""
    )


def resolve_comet_checkpoint(model: str) -> str:
    """The checkpoint file of `model`: a local `<dir>/checkpoints/model.ckpt` path, or a hub name
    (e.g. Unbabel/wmt22-comet-da): its snapshot in the local Hugging Face cache, MissingAsset (with
    the prefetch command) when it is not there and the hub is off, else comet.download_model."""
    from kdsweep.core.hub import hub_path, prefetch_command

    path = Path(model)
    if model.endswith(".ckpt") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(
                f"COMET checkpoint {model} is not a file: give the checkpoints/model.ckpt of a downloaded "
                "COMET model, or the hub name of one in the local Hugging Face cache"
            )
        return str(path)
    checkpoint = Path("checkpoints", "model.ckpt")
    resolved = hub_path(model, needs=(checkpoint.as_posix(),))
    if resolved != model:
        return str(Path(resolved) / checkpoint)
    from comet import download_model  # COMET's environment only; online and not cached

    try:  # COMET downloads it (or knows it by a legacy name)
        return download_model(model)
    except KeyError as e:  # what download_model raises for anything it cannot find or fetch
        raise FileNotFoundError(
            f"COMET model {model!r} is neither in the local Hugging Face cache nor downloadable: give the hub "
            "name of a COMET model (e.g. Unbabel/wmt22-comet-da) or a local checkpoint path "
            f"(<dir>/checkpoints/model.ckpt); to cache hub assets for offline nodes run {prefetch_command()}"
        ) from e


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [log.level for log in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def comet_score(
    sources: list[str], hypotheses: list[str], references: list[str], model: str, batch_size: int = 16, gpus: int = 0
) -> dict:
    """COMET system score (the mean of the segment scores) and segment scores; `gpus=0` runs on the CPU."""
    check_lengths(sources=sources, hypotheses=hypotheses, references=references)
    checkpoint = resolve_comet_checkpoint(model)
    from comet import load_from_checkpoint

    samples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references, strict=True)]
    with _quiet_loggers():
        comet_model = load_from_checkpoint(checkpoint)
        prediction = comet_model.predict(samples, batch_size=batch_size, gpus=gpus, progress_bar=False)
    return {
        "comet": prediction.system_score,
        "comet_model": model,
        "comet_checkpoint": checkpoint,
        "segment_scores": prediction.scores,
    }


@dataclass
class ScoreCometSpec:
    """Stage score-comet (one model's translations)."""

    model: str = setting("translation.evaluate.comet.model: a hub name or <dir>/checkpoints/model.ckpt")
    batch_size: int = setting("translation.evaluate.comet.batch_size", default=16)
    gpus: int = setting("translation.evaluate.comet.gpus: 0 = CPU", default=0)


def score_comet(translations_file: str | Path, out: str | Path, spec: ScoreCometSpec) -> dict:
    """COMET of the translated rows of `translations_file` (the evaluate stage's JSONL: id, source,
    reference, hypothesis, stop; rows with stop "prompt_too_long" have no hypothesis and are not
    scored, as BLEU and chrF do not score them). Writes `out` atomically: {"comet": the system
    score, "comet_model", "comet_checkpoint", "scored": the row count, "segment_scores": [{"id",
    "comet"}] in the file's order}."""
    rows = read_jsonl(translations_file)
    scored = [r for r in rows if r["stop"] != NOT_TRANSLATED]
    for r in scored:
        if r.get("hypothesis") is None:
            raise ValueError(f"{translations_file}: row {r['id']} (stop {r['stop']!r}) has no hypothesis")
    if not scored:
        raise ValueError(f"{translations_file}: no translated row to score ({len(rows)} rows, all {NOT_TRANSLATED})")
    scores = comet_score(
        [r["source"] for r in scored],
        [r["hypothesis"] for r in scored],
        [r["reference"] for r in scored],
        spec.model,
        spec.batch_size,
        spec.gpus,
    )
    bad = [r["id"] for r, v in zip(scored, scores["segment_scores"], strict=True) if not math.isfinite(v)]
    if bad or not math.isfinite(scores["comet"]):  # a damaged checkpoint gives NaN: not a number for the report
        raise ValueError(
            f"{translations_file}: COMET ({spec.model}) gave non-finite scores for {len(bad)} of {len(scored)} rows "
            f"(ids {bad[:5]}{' ...' if len(bad) > 5 else ''}), system score {scores['comet']}: is the checkpoint damaged?"
        )
    result = {
        "comet": scores["comet"],
        "comet_model": scores["comet_model"],
        "comet_checkpoint": scores["comet_checkpoint"],
        "scored": len(scored),
        "segment_scores": [{"id": r["id"], "comet": s} for r, s in zip(scored, scores["segment_scores"], strict=True)],
    }
    write_json(out, result)
    log.info("COMET %.4f on %d of %d rows (%s)", result["comet"], len(scored), len(rows), spec.model)
    return result
