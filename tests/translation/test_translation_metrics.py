"""BLEU and chrF (the main environment). COMET's tests run in its own environment: tests/comet/."""

import pytest
import sacrebleu
from sentences import HYPOTHESES, REFERENCES, corpus_references, noisy

from kdsweep.translation.metrics import sacrebleu_scores


def test_sacrebleu_scores_match_sacrebleu():
    scores = sacrebleu_scores(HYPOTHESES, REFERENCES)
    assert scores["bleu"] == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    for key in ("bleu_signature", "chrf_signature"):
        assert "nrefs:1" in scores[key] and f"version:{sacrebleu.__version__}" in scores[key]
    assert "tok:13a" in scores["bleu_signature"]


def test_length_ratio():
    # 13a tokens: "le chat dort ." is 4, "le petit chat dort ici ." is 6
    scores = sacrebleu_scores(["le chat dort ."], ["le petit chat dort ici ."])
    assert (scores["hyp_len"], scores["ref_len"]) == (4, 6)
    assert scores["length_ratio"] == pytest.approx(4 / 6)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="got 2 hypotheses, 3 references"):
        sacrebleu_scores(HYPOTHESES[:2], REFERENCES[:3])


def test_comet_scores_what_generation_translated():
    """score_comet (COMET's environment, which cannot import generation) skips the rows whose stop
    is generation's PROMPT_TOO_LONG; and its module imports in the main environment without COMET
    (the report reads comet_not_computed; tests/core/test_assets.py resolves checkpoints)."""
    import subprocess
    import sys

    from kdsweep.translation.comet_score import NOT_TRANSLATED
    from kdsweep.translation.generation import PROMPT_TOO_LONG

    assert NOT_TRANSLATED == PROMPT_TOO_LONG
    code = "import sys, kdsweep.translation.comet_score; print(sorted({'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # (that comet is not imported is tested where it is installed: tests/comet)


def test_bootstrap_interval_is_sacrebleus_and_as_wide_as_the_resampled_spread():
    """bleu_ci95/chrf_ci95 are sacrebleu's own bootstrap (corpus_score(n_bootstrap=1000)), and the
    interval's half-width is ~1.96 x the spread of BLEU over resampled test sets, computed here
    with sacrebleu.corpus_bleu on 300 resamples of our own."""
    import random

    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    rng = random.Random(0)
    refs = corpus_references(150, rng)
    hyps = noisy(refs, 0.6, rng)
    scores = sacrebleu_scores(hyps, refs)
    for key, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        own = metric.corpus_score(hyps, [refs], n_bootstrap=1000)
        assert scores[f"{key}_ci95"] == pytest.approx([own._mean - own._ci, own._mean + own._ci])
        assert "bs:1000|seed:12345" in scores[f"{key}_ci_signature"]
    assert scores["bleu_ci95"][0] < scores["bleu"] < scores["bleu_ci95"][1]
    draws = np.random.default_rng(1).integers(0, len(refs), size=(300, len(refs)))
    spread = np.std([sacrebleu.corpus_bleu([hyps[i] for i in d], [[refs[i] for i in d]]).score for d in draws])
    half = (scores["bleu_ci95"][1] - scores["bleu_ci95"][0]) / 2
    assert half == pytest.approx(1.96 * spread, rel=0.2)
    assert "bs:" not in scores["bleu_signature"]  # the score's own signature is unchanged


def test_paired_test_tells_a_better_system_from_noise():
    """A clearly better system is significant (p < 0.05) with the BLEU difference sacrebleu's own
    corpus scores give; systems of the same quality (fresh noise, same keep rate) are called
    significant in about 5 % of pairs, not more than 20 % of 30; identical outputs get p = 1."""
    import random

    from kdsweep.translation.metrics import paired_test

    rng = random.Random(0)
    refs = corpus_references(120, rng)
    base, better = noisy(refs, 0.5, rng), noisy(refs, 0.7, rng)
    test = paired_test(base, better, refs, samples=500)
    diff = sacrebleu.corpus_bleu(better, [refs]).score - sacrebleu.corpus_bleu(base, [refs]).score
    assert test["bleu"]["p"] < 0.05 and test["bleu"]["diff"] == pytest.approx(diff) and diff > 5
    assert test["chrf"]["p"] < 0.05 and test["chrf"]["diff"] > 0
    assert "bs:500|seed:12345" in test["signatures"]["bleu"]
    significant = sum(
        paired_test(noisy(refs, 0.6, rng), noisy(refs, 0.6, rng), refs, samples=300)["bleu"]["p"] < 0.05
        for _ in range(30)
    )
    assert significant <= 6, significant
    assert paired_test(base, list(base), refs, samples=200)["bleu"]["p"] == 1.0
