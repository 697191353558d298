import math
import re
import time

import pytest
import sacrebleu

from kdsweep.core.hub import MissingAsset
from kdsweep.translation.metrics import comet_score, sacrebleu_scores

SOURCES = [
    "The cat is sleeping on the sofa.",
    "We will meet tomorrow at the station.",
    "This book was written in 1850.",
    "She has never seen the sea.",
    "The weather is nice today.",
    "Could you close the window, please?",
]
HYPOTHESES = [
    "Le chat dort sur le canapé.",
    "Nous nous verrons demain à la gare.",
    "Ce livre a été écrit en 1850.",
    "Elle n'a jamais vu la mer.",
    "Il fait beau aujourd'hui.",
    "Pourriez-vous fermer la fenêtre ?",
]
REFERENCES = [
    "Le chat dort sur le canapé.",
    "Nous nous retrouverons demain à la gare.",
    "Ce livre fut écrit en 1850.",
    "Elle n'a encore jamais vu la mer.",
    "Il fait beau temps aujourd'hui.",
    "Pouvez-vous fermer la fenêtre, s'il vous plaît ?",
]


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
    with pytest.raises(ValueError, match="got 6 sources, 5 hypotheses, 6 references"):
        comet_score(SOURCES, HYPOTHESES[:5], REFERENCES, model="unused")


@pytest.fixture(scope="module")
def tiny_comet(tmp_path_factory):
    from tiny_comet import build_tiny_comet

    return build_tiny_comet(tmp_path_factory.mktemp("tiny_comet"))


def test_comet_score_with_local_checkpoint(tiny_comet):
    from comet import load_from_checkpoint

    result = comet_score(SOURCES, HYPOTHESES, REFERENCES, model=tiny_comet, batch_size=4)
    assert result["comet_model"] == result["comet_checkpoint"] == tiny_comet
    assert math.isfinite(result["comet"])
    assert len(result["segment_scores"]) == len(SOURCES)
    assert result["comet"] == pytest.approx(sum(result["segment_scores"]) / len(SOURCES))

    samples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(SOURCES, HYPOTHESES, REFERENCES, strict=True)]
    direct = load_from_checkpoint(tiny_comet).predict(samples, batch_size=4, gpus=0, progress_bar=False)
    assert result["segment_scores"] == direct.scores
    assert result["comet"] == direct.system_score

    again = comet_score(SOURCES, HYPOTHESES, REFERENCES, model=tiny_comet, batch_size=4)
    assert again["segment_scores"] == result["segment_scores"]


def test_comet_score_with_hub_name_from_local_cache(tmp_path, monkeypatch):
    """A hub name resolves offline to the checkpoint in the Hugging Face cache, as after download_model."""
    import huggingface_hub.constants
    from tiny_comet import build_tiny_comet

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--kdsweep-tests--tiny-comet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    checkpoint = build_tiny_comet(repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    result = comet_score(SOURCES, HYPOTHESES, REFERENCES, model="kdsweep-tests/tiny-comet")
    assert result["comet_model"] == "kdsweep-tests/tiny-comet"
    assert result["comet_checkpoint"] == checkpoint
    assert math.isfinite(result["comet"])


def test_missing_local_checkpoint_fails_fast(tmp_path):
    missing = str(tmp_path / "wmt22-comet-da" / "checkpoints" / "model.ckpt")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        comet_score(SOURCES, HYPOTHESES, REFERENCES, model=missing)


def test_unknown_hub_model_fails_fast_offline(tmp_path, monkeypatch):
    import comet  # noqa: F401 (its import, seconds, is not what is timed)

    monkeypatch.setenv("HOME", str(tmp_path))  # download_model's legacy fallback makes ~/.cache/torch/unbabel_comet
    start = time.monotonic()
    with pytest.raises(MissingAsset, match="(?s)'kdsweep-tests/no-such-comet'.*snakemake prefetch_assets"):
        comet_score(SOURCES, HYPOTHESES, REFERENCES, model="kdsweep-tests/no-such-comet")
    assert time.monotonic() - start < 10
