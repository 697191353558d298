"""Translation metrics: corpus BLEU and chrF with their sacrebleu signatures, and COMET (system and
segment scores) from a local checkpoint or a hub model already in the local Hugging Face cache.

Compute nodes have no internet: run with HF_HUB_OFFLINE=1 and download COMET models beforehand on a
node that has it, into the same (shared) Hugging Face cache (kdsweep.core.hub prefetches the checkpoint
and its encoder's config and tokenizer)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

# Their INFO lines (hardware summary, tips, "Encoder model frozen.") are silenced while COMET runs.
_CHATTY_LOGGERS = ("comet", "pytorch_lightning", "lightning_fabric")


def _check_lengths(**texts: list[str]) -> None:
    lengths = {name: len(values) for name, values in texts.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        got = ", ".join(f"{n} {name}" for name, n in lengths.items())
        raise ValueError(f"need equally many {', '.join(lengths)} (> 0), got {got}")


def sacrebleu_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults, one reference per hypothesis) with their signatures."""
    _check_lengths(hypotheses=hypotheses, references=references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": bleu_score.score,
        "bleu_signature": bleu.get_signature().format(),
        "chrf": chrf_score.score,
        "chrf_signature": chrf.get_signature().format(),
        "length_ratio": bleu_score.ratio,
        "hyp_len": bleu_score.sys_len,
        "ref_len": bleu_score.ref_len,
    }


def resolve_comet_checkpoint(model: str) -> str:
    """The checkpoint file of `model`: a local `<dir>/checkpoints/model.ckpt` path, or a hub name
    (e.g. Unbabel/wmt22-comet-da): its snapshot in the local Hugging Face cache, MissingAsset (with
    the prefetch command) when it is not there and the hub is off, else comet.download_model."""
    from comet import download_model

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
    try:  # online and not cached: COMET downloads it (or knows it by a legacy name)
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
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def comet_score(
    sources: list[str], hypotheses: list[str], references: list[str], model: str, batch_size: int = 16, gpus: int = 0
) -> dict:
    """COMET system score (the mean of the segment scores) and segment scores; `gpus=0` runs on the CPU."""
    _check_lengths(sources=sources, hypotheses=hypotheses, references=references)
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
