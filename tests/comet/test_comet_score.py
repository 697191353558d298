"""COMET (kdsweep.translation.comet_score), in COMET's own environment (tests/comet/conftest.py):
scores of a tiny COMET model built offline, loaded like the real checkpoint; the score_comet stage
and its command line, as the rule runs them."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from sentences import HYPOTHESES, REFERENCES, SOURCES

from kdsweep.core.hub import MissingAsset
from kdsweep.translation.comet_score import ScoreCometSpec, comet_score, score_comet


def test_length_mismatch_names_all_lengths():
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


def translations(tmp_path):
    """An evaluate stage's translations file: the six pairs and, between them, a source whose
    prompt was too long (no hypothesis, not scored)."""
    rows = [
        {"id": i, "source": s, "reference": r, "hypothesis": h, "stop": "marker", "new_tokens": 9}
        for i, (s, h, r) in enumerate(zip(SOURCES, HYPOTHESES, REFERENCES, strict=True))
    ]
    too_long = {"id": 99, "source": "x " * 5000, "reference": "y", "hypothesis": None, "stop": "prompt_too_long"}
    rows.insert(2, too_long | {"new_tokens": 0, "prompt_tokens": 5000})
    rows[4]["stop"] = "max_new_tokens"  # a runaway is scored, as BLEU scores it
    path = tmp_path / "base.translations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_comet_scores_the_translated_rows_and_writes_the_file(tiny_comet, tmp_path):
    out = tmp_path / "eval" / "base.comet.json"
    out.parent.mkdir()
    result = score_comet(translations(tmp_path), out, ScoreCometSpec(model=tiny_comet, batch_size=4))
    assert json.loads(out.read_text()) == result
    assert sorted(p.name for p in out.parent.iterdir()) == ["base.comet.json"]  # no temporary file left
    direct = comet_score(SOURCES, HYPOTHESES, REFERENCES, model=tiny_comet, batch_size=4)
    assert set(result) == {"comet", "comet_model", "comet_checkpoint", "scored", "segment_scores"}
    assert (result["comet"], result["comet_model"], result["comet_checkpoint"]) == (
        direct["comet"],
        tiny_comet,
        tiny_comet,
    )
    assert result["scored"] == 6
    assert result["segment_scores"] == [{"id": i, "comet": s} for i, s in enumerate(direct["segment_scores"])]
    assert result["comet"] == pytest.approx(sum(s["comet"] for s in result["segment_scores"]) / 6)


def test_a_row_without_a_hypothesis_that_was_translated_fails(tiny_comet, tmp_path):
    path = translations(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["hypothesis"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"row 0 \(stop 'marker'\) has no hypothesis"):
        score_comet(path, tmp_path / "out.json", ScoreCometSpec(model=tiny_comet))
    assert not (tmp_path / "out.json").exists()


def test_the_command_line_runs_the_stage_as_the_rule_does(tiny_comet, tmp_path):
    """`python -m kdsweep score-comet` with kdsweep on PYTHONPATH only (not installed here), as
    workflow/rules/translation.smk runs it; an unknown setting fails naming it."""
    env = {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    spec = {"model": tiny_comet, "batch_size": 4, "gpus": 0}
    cmd = [sys.executable, "-m", "kdsweep", "score-comet", "--translations", str(translations(tmp_path))]
    out = subprocess.run(
        [*cmd, "--out", str(tmp_path / "cli.json"), "--spec", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = score_comet(translations(tmp_path), tmp_path / "direct.json", ScoreCometSpec(**spec))
    assert json.loads((tmp_path / "cli.json").read_text()) == expected
    out = subprocess.run(
        [*cmd, "--out", str(tmp_path / "x.json"), "--spec", json.dumps(spec | {"python": "p"})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "kdsweep score-comet --spec.python: not a setting of this stage" in out.stderr


def test_importing_the_stage_loads_neither_comet_nor_torch():
    """Here, where comet and torch are installed: the module imports them only when it scores
    (the report imports it in the main environment, which has no comet)."""
    code = "import sys, kdsweep.translation.comet_score; print(sorted({'comet', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_checkpoint_that_scores_nan_is_refused_and_writes_nothing(tiny_comet, tmp_path):
    """A checkpoint with a NaN weight (a damaged download) gives NaN scores: the stage fails
    naming the file and the rows, instead of handing the report a NaN."""
    import shutil

    import torch

    damaged = tmp_path / "damaged"
    shutil.copytree(Path(tiny_comet).parents[1], damaged)
    ckpt = damaged / "checkpoints" / "model.ckpt"
    state = torch.load(ckpt, weights_only=False)
    name = next(k for k in state["state_dict"] if k.startswith("estimator") and k.endswith("weight"))
    state["state_dict"][name] = torch.full_like(state["state_dict"][name], float("nan"))
    torch.save(state, ckpt)
    out = tmp_path / "base.comet.json"
    with pytest.raises(ValueError, match=r"translations.jsonl: COMET .* non-finite scores for 6 of 6 rows"):
        score_comet(translations(tmp_path), out, ScoreCometSpec(model=str(ckpt), batch_size=4))
    assert not out.exists()
