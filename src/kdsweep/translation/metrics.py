"""Translation metrics: corpus BLEU and chrF with their sacrebleu signatures. COMET runs in its own
environment, in its own stage: kdsweep.translation.comet_score. Imports only sacrebleu (in both
environments): comet_score imports check_lengths from here."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def check_lengths(**texts: list[str]) -> None:
    lengths = {name: len(values) for name, values in texts.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        got = ", ".join(f"{n} {name}" for name, n in lengths.items())
        raise ValueError(f"need equally many {', '.join(lengths)} (> 0), got {got}")


def sacrebleu_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults, one reference per hypothesis) with their signatures."""
    check_lengths(hypotheses=hypotheses, references=references)
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
