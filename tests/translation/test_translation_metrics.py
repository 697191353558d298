"""BLEU and chrF (the main environment). COMET's tests run in its own environment: tests/comet/."""

import pytest
import sacrebleu
from sentences import HYPOTHESES, REFERENCES

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
