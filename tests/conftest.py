"""Shared fixtures. Everything is offline: the hub is never contacted, models are built from
tiny configs and tokenizers are trained on data the tests generate."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from tiny import tiny_bert  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# COMET's tests need its own environment (unbabel-comet caps numpy < 2, transformers < 5): they run
# under .venv-comet's interpreter (tests/comet/conftest.py says how; `make test` runs both).
collect_ignore = ["comet"]

TINY_BERT = tiny_bert(layers=4)


@pytest.fixture(scope="session")
def glue_data(tmp_path_factory):
    """Synthetic MNLI in GLUE TSV layout, prepared to JSONL: {"raw": dir, "data": dir}."""
    from kdsweep.glue.data import PrepareGlueSpec, prepare_glue
    from kdsweep.glue.synthetic import SynthesizeGlueSpec, write_synthetic_glue

    root = tmp_path_factory.mktemp("glue")
    write_synthetic_glue("mnli", root / "raw", SynthesizeGlueSpec(train_size=200, dev_size=40, seed=0))
    prepare_glue("mnli", root / "data", PrepareGlueSpec(source="synthetic"), tsv_dir=root / "raw")
    return {"raw": root / "raw", "data": root / "data"}


@pytest.fixture(scope="session")
def tokenizer_dir(glue_data, tmp_path_factory):
    from kdsweep.core.io import read_jsonl
    from kdsweep.glue.tokenizer import train_wordpiece_tokenizer

    rows = read_jsonl(glue_data["data"] / "train.jsonl")
    out = tmp_path_factory.mktemp("tok")
    train_wordpiece_tokenizer([r["text_a"] for r in rows] + [r["text_b"] for r in rows], out, vocab_size=300)
    return out


@pytest.fixture(scope="session")
def teacher_dir(tokenizer_dir, tmp_path_factory):
    """A tiny 4-layer BERT classifier (random weights) saved with its tokenizer."""
    from kdsweep.core.models import load_tokenizer
    from kdsweep.glue.models import classifier_from_config

    tok = load_tokenizer(str(tokenizer_dir))
    model = classifier_from_config(TINY_BERT, 3, tok, seed=0)
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
