"""Asset prefetch for offline compute nodes, against a Hugging Face cache the tests build in the
hub's own layout (<type>s--org--name/refs/main, snapshots/<commit>/...), with the hub off."""

import re
import shutil

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO
from hub_cache import GLUE_MNLI_README
from hub_cache import snapshot as hub_snapshot
from safetensors.torch import save_file
from tiny import tiny_bert, tiny_llama

from kdsweep.core.hub import (
    COMET_PATTERNS,
    MODEL_PATTERNS,
    TOKENIZER_PATTERNS,
    Asset,
    MissingAsset,
    config_assets,
    hub_path,
    prefetch,
    prefetch_from_config,
)
from kdsweep.core.io import read_json, read_jsonl
from kdsweep.core.models import load_tokenizer, model_fingerprint, tokenizer_fingerprint
from kdsweep.families import load_config, validate_config
from kdsweep.glue.data import PrepareGlueSpec, prepare_glue
from kdsweep.glue.models import load_classifier
from kdsweep.translation.comet_score import resolve_comet_checkpoint
from kdsweep.translation.data import load_hub_pairs
from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
from kdsweep.translation.tokenizer import train_bpe_tokenizer

COMMITS = {
    "kdsweep-tests/tiny-bert": "1" * 40,
    "kdsweep-tests/tiny-llama": "2" * 40,
    "kdsweep-tests/glue": "3" * 40,
    "kdsweep-tests/europarl": "4" * 40,
    "kdsweep-tests/tiny-comet": "5" * 40,
    "kdsweep-tests/tiny-encoder": "6" * 40,
}
PREFETCH = "snakemake prefetch_assets --cores 1 --configfile config/test.yaml"

EUROPARL_README = """---
configs:
- config_name: en-fr
  data_files:
  - split: train
    path: en-fr/train-*
---
"""
# (premise, hypothesis, label, idx) per MNLI split; label -1 marks an unlabeled row.
MNLI_SPLITS = {
    "train": [
        ("A man plays a guitar.", "A man makes music.", 0, 0),
        ("The cat sleeps.", "The cat runs.", 2, 1),
        ("It rains in Paris.", "The weather is bad.", 1, 2),
        ("Nobody knows.", "Someone knows.", -1, 3),
        ("Two dogs bark.", "Dogs are loud.", 0, 4),
    ],
    "validation_matched": [("She reads.", "She is reading.", 0, 10), ("He left.", "He stayed.", 2, 11)],
    "validation_mismatched": [("We eat.", "We are hungry.", 1, 20)],
}
EUROPARL_PAIRS = [
    {"en": "The session is open.", "fr": "La séance est ouverte."},
    {"en": "", "fr": "Vide."},
    {"en": "Thank you very much.", "fr": "Merci beaucoup."},
]


def snapshot(cache, repo_id, repo_type="model"):
    return hub_snapshot(cache, repo_id, COMMITS[repo_id], repo_type)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, teacher_dir, tokenizer_dir):
    """A Hugging Face cache holding every COMMITS repo, with the files kdsweep's loaders read."""
    from transformers import BertConfig

    cache = tmp_path_factory.mktemp("hf") / "hub"
    shutil.copytree(teacher_dir, snapshot(cache, "kdsweep-tests/tiny-bert"), dirs_exist_ok=True)

    llama = snapshot(cache, "kdsweep-tests/tiny-llama")
    texts = [f"{p['en']} {p['fr']}" for p in EUROPARL_PAIRS] * 20
    tok = train_bpe_tokenizer(texts, llama, vocab_size=300)
    causal_lm_from_config(tiny_llama(), tok, seed=0).save_pretrained(llama)

    glue = snapshot(cache, "kdsweep-tests/glue", "dataset")
    (glue / "README.md").write_text(GLUE_MNLI_README)
    (glue / "mnli").mkdir()
    for split, rows in MNLI_SPLITS.items():
        columns = dict(zip(["premise", "hypothesis", "label", "idx"], map(list, zip(*rows, strict=True)), strict=True))
        table = pa.table(
            {**columns, "label": pa.array(columns["label"], pa.int64()), "idx": pa.array(columns["idx"], pa.int32())}
        )
        pq.write_table(table, glue / "mnli" / f"{split}-00000-of-00001.parquet")

    europarl = snapshot(cache, "kdsweep-tests/europarl", "dataset")
    (europarl / "README.md").write_text(EUROPARL_README)
    (europarl / "en-fr").mkdir()
    pq.write_table(pa.table({"translation": EUROPARL_PAIRS}), europarl / "en-fr" / "train-00000-of-00001.parquet")

    comet = snapshot(cache, "kdsweep-tests/tiny-comet")
    (comet / "hparams.yaml").write_text(yaml.safe_dump({"pretrained_model": "kdsweep-tests/tiny-encoder"}))
    (comet / "checkpoints").mkdir()
    (comet / "checkpoints" / "model.ckpt").write_text("placeholder: the checkpoint is never loaded here\n")

    encoder = snapshot(cache, "kdsweep-tests/tiny-encoder")
    shutil.copytree(tokenizer_dir, encoder, dirs_exist_ok=True)
    BertConfig(**tiny_bert()["config"]).save_pretrained(encoder)
    return cache


@pytest.fixture
def offline(hub_cache, tmp_path, monkeypatch):
    """The hub off, the built cache as huggingface_hub's default, datasets' own cache in tmp_path."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setenv("KDSWEEP_PREFETCH_COMMAND", PREFETCH)
    return hub_cache


def test_study_config_lists_every_hub_asset():
    assets = config_assets(load_config(REPO / "config" / "config.yaml"))
    assert [(a.repo_id, a.repo_type, a.kind) for a in assets] == [
        ("nyu-mll/glue", "dataset", "dataset"),
        ("bert-base-uncased", "model", "model"),
        ("distilbert-base-uncased", "model", "model"),
        ("Helsinki-NLP/europarl", "dataset", "dataset"),
        ("meta-llama/Llama-3.2-3B-Instruct", "model", "model"),
        ("meta-llama/Llama-3.2-1B-Instruct", "model", "model"),
        ("Unbabel/wmt22-comet-da", "model", "comet"),
    ]
    by_repo = {a.repo_id: a for a in assets}
    assert by_repo["nyu-mll/glue"].allow_patterns == ["README.md", "mnli/*", "qqp/*"]
    assert by_repo["Helsinki-NLP/europarl"].allow_patterns == ["README.md", "en-fr/*"]
    assert by_repo["bert-base-uncased"].used_by == "teacher (glue mnli); teacher (glue qqp)"
    assert by_repo["bert-base-uncased"].allow_patterns == list(MODEL_PATTERNS)
    assert by_repo["Unbabel/wmt22-comet-da"].allow_patterns == list(COMET_PATTERNS)
    assert not any(p.endswith((".bin", ".pth", ".h5", ".msgpack")) for a in assets for p in a.allow_patterns)


def test_demo_config_needs_no_hub_asset():
    assert config_assets(load_config(REPO / "config" / "demo.yaml")) == []


def test_task_names_tokenizers_local_dirs_and_sources(tmp_path):
    # Local folders (validated as whole before any job) are no assets.
    (tmp_path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "comet" / "checkpoints").mkdir(parents=True)
    (tmp_path / "comet" / "checkpoints" / "model.ckpt").write_bytes(b"")
    config = validate_config(
        {
            "run_name": "t",
            "glue": {
                "tasks": ["mnli", "qqp"],
                "source": "local",
                "local_dir": str(tmp_path),
                "teacher": {"model": "org/bert-{task}", "tokenizer": "org/bert-{task}", "finetune": {"enabled": False}},
                "student": {"model": str(tmp_path), "tokenizer": "org/student-tok"},
                "distill": {"sweep": {"learning_rate": [1e-5]}},
            },
            "translation": {
                "source": "synthetic",
                "teacher": {"model": "org/llama"},
                "student": {"model": {"from_teacher": {"layers": [0]}}, "tokenizer": "org/llama"},
                "distill": {"sweep": {"learning_rate": [1e-4]}},
                "evaluate": {"comet": {"model": str(tmp_path / "comet" / "checkpoints" / "model.ckpt")}},
            },
        }
    )
    assets = config_assets(config)
    assert [(a.repo_id, a.kind, a.used_by) for a in assets] == [
        ("org/bert-mnli", "model", "teacher (glue mnli)"),
        ("org/student-tok", "tokenizer", "student tokenizer (glue mnli); student tokenizer (glue qqp)"),
        ("org/bert-qqp", "model", "teacher (glue qqp)"),
        ("org/llama", "model", "teacher (translation en-fr); student tokenizer (translation en-fr)"),
    ]
    assert assets[1].allow_patterns == list(TOKENIZER_PATTERNS)
    assert set(MODEL_PATTERNS) <= set(assets[3].allow_patterns)


def _config(comet="kdsweep-tests/tiny-comet"):
    return validate_config(
        {
            "run_name": "t",
            "glue": {
                "tasks": ["mnli"],
                "source": "hub",
                "hub_dataset": "kdsweep-tests/glue",
                "teacher": {"model": "kdsweep-tests/tiny-bert", "finetune": {"enabled": False}},
                "student": {"model": {"from_teacher": {"layers": [0]}}},
                "distill": {"sweep": {"learning_rate": [1e-5]}},
            },
            "translation": {
                "source": "hub",
                "hub_dataset": "kdsweep-tests/europarl",
                "teacher": {"model": "kdsweep-tests/tiny-llama"},
                "student": {"model": {"from_teacher": {"layers": [0]}}},
                "distill": {"sweep": {"learning_rate": [1e-4]}},
                "evaluate": {"comet": {"model": comet}},
            },
        }
    )


def test_prefetch_offline_resolves_the_cache_and_writes_the_manifest(offline, tmp_path):
    manifest = prefetch_from_config(_config(), tmp_path / "out" / "assets.json", cache_dir=str(offline))
    assert read_json(tmp_path / "out" / "assets.json") == manifest
    assert manifest["hf_hub_cache"] == str(offline)
    got = {(a["repo_id"], a["repo_type"], a["kind"]): a for a in manifest["assets"]}
    assert list(got) == [
        ("kdsweep-tests/glue", "dataset", "dataset"),
        ("kdsweep-tests/tiny-bert", "model", "model"),
        ("kdsweep-tests/europarl", "dataset", "dataset"),
        ("kdsweep-tests/tiny-llama", "model", "model"),
        ("kdsweep-tests/tiny-comet", "model", "comet"),
        ("kdsweep-tests/tiny-encoder", "model", "comet-encoder"),  # named by the COMET hparams.yaml
    ]
    for (repo_id, repo_type, _), entry in got.items():
        assert entry["revision"] == COMMITS[repo_id]
        folder = offline / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots" / COMMITS[repo_id]
        assert entry["path"] == str(folder)
    assert got["kdsweep-tests/tiny-encoder", "model", "comet-encoder"]["used_by"] == "kdsweep-tests/tiny-comet encoder"
    assert got["kdsweep-tests/tiny-bert", "model", "model"]["used_by"] == "teacher (glue mnli)"


def test_prefetch_names_every_missing_asset_and_the_command(offline, tmp_path):
    assets = [
        Asset("kdsweep-tests/tiny-bert", "model", "model", list(MODEL_PATTERNS), "teacher (glue mnli)"),
        Asset("kdsweep-tests/absent-model", "model", "model", list(MODEL_PATTERNS), "student (glue mnli)"),
        Asset("kdsweep-tests/absent-data", "dataset", "dataset", ["README.md", "mnli/*"], "prepare (glue mnli)"),
        # cached, but without the config folder asked for
        Asset("kdsweep-tests/glue", "dataset", "dataset", ["README.md", "qqp/*"], "prepare (glue qqp)"),
        Asset("kdsweep-tests/tiny-encoder", "model", "model", list(MODEL_PATTERNS), "no weights"),
    ]
    with pytest.raises(MissingAsset) as err:
        prefetch(assets, tmp_path / "assets.json", cache_dir=str(offline))
    message = str(err.value)
    for name in ["absent-model (model, student", "absent-data (dataset", "glue (dataset", "tiny-encoder (model"]:
        assert f"kdsweep-tests/{name}" in message
    assert "tiny-bert" not in message
    assert message.endswith("\n    " + PREFETCH)
    assert not (tmp_path / "assets.json").exists()


def test_missing_asset_names_the_repo_and_the_command(offline, monkeypatch):
    with pytest.raises(MissingAsset, match=r"model 'kdsweep-tests/absent'.*\n    " + re.escape(PREFETCH) + "$"):
        hub_path("kdsweep-tests/absent")
    with pytest.raises(MissingAsset, match=r"dataset 'nyu-mll/glue'"):
        prepare_glue("mnli", offline.parent / "unused", PrepareGlueSpec(source="hub", hub_dataset="nyu-mll/glue"))
    with pytest.raises(MissingAsset, match="kdsweep-tests/absent"):
        load_classifier("kdsweep-tests/absent", 3)
    with pytest.raises(MissingAsset, match=r"(?s)model 'kdsweep-tests/no-such-comet'.*" + re.escape(PREFETCH)):
        resolve_comet_checkpoint("kdsweep-tests/no-such-comet")
    # the encoder's snapshot holds only its config and tokenizer: no weights to load a model from
    with pytest.raises(MissingAsset, match=r"tiny-encoder.*has no \*\.safetensors or \*\.bin"):
        load_classifier("kdsweep-tests/tiny-encoder", 3)
    monkeypatch.delenv("KDSWEEP_PREFETCH_COMMAND")
    with pytest.raises(MissingAsset, match=re.escape("snakemake prefetch_assets --cores 1 --configfile <your config>")):
        hub_path("kdsweep-tests/absent")


def test_hub_path_local_paths_and_online(offline, tmp_path, monkeypatch):
    assert hub_path(str(tmp_path)) == str(tmp_path)  # a local directory, unchanged
    assert hub_path("/no/such/dir") == "/no/such/dir"  # not a repo id: left to the library
    expected = offline / "models--kdsweep-tests--tiny-bert" / "snapshots" / COMMITS["kdsweep-tests/tiny-bert"]
    assert hub_path("kdsweep-tests/tiny-bert") == str(expected)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert hub_path("kdsweep-tests/absent") == "kdsweep-tests/absent"  # online: the library downloads it
    assert hub_path("kdsweep-tests/tiny-bert") == str(expected)  # cached: the prefetched revision


def test_prepare_glue_from_the_cached_parquet_snapshot(offline, tmp_path):
    manifest = prepare_glue("mnli", tmp_path / "mnli", PrepareGlueSpec(source="hub", hub_dataset="kdsweep-tests/glue"))
    for split, hub_split in [("train", "train"), ("dev_matched", "validation_matched")]:
        expected = [
            {"id": str(idx), "text_a": a, "text_b": b, "label": label}
            for a, b, label, idx in MNLI_SPLITS[hub_split]
            if label >= 0
        ]
        assert read_jsonl(tmp_path / "mnli" / f"{split}.jsonl") == expected
    assert read_jsonl(tmp_path / "mnli" / "dev_mismatched.jsonl") == [
        {"id": "20", "text_a": "We eat.", "text_b": "We are hungry.", "label": 1}
    ]
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows_written"]) == (5, 4)
    assert train["dropped_by_reason"] == {"unlabeled (label -1)": 1}
    assert train["label_counts"] == {"entailment": 2, "neutral": 1, "contradiction": 1}


def test_translation_pairs_from_the_cached_parquet_snapshot(offline):
    pairs, stats = load_hub_pairs("kdsweep-tests/europarl", "en-fr", "en", "fr")
    assert pairs == [
        {"id": 1, "source": "The session is open.", "target": "La séance est ouverte."},
        {"id": 3, "source": "Thank you very much.", "target": "Merci beaucoup."},
    ]
    assert dict(stats.dropped) == {"empty_source": 1}


def test_models_and_tokenizers_by_hub_id_from_the_cache(offline, teacher_dir):
    model = load_classifier("kdsweep-tests/tiny-bert", 3)
    assert model_fingerprint(model) == model_fingerprint(load_classifier(str(teacher_dir), 3))
    assert model.config.name_or_path.endswith(COMMITS["kdsweep-tests/tiny-bert"])
    tokenizer = load_tokenizer("kdsweep-tests/tiny-bert")
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(str(teacher_dir)))

    llama_dir = offline / "models--kdsweep-tests--tiny-llama" / "snapshots" / COMMITS["kdsweep-tests/tiny-llama"]
    lm = load_causal_lm("kdsweep-tests/tiny-llama", torch.float32)
    assert model_fingerprint(lm) == model_fingerprint(load_causal_lm(str(llama_dir), torch.float32))

    checkpoint = resolve_comet_checkpoint("kdsweep-tests/tiny-comet")
    comet_dir = offline / "models--kdsweep-tests--tiny-comet" / "snapshots" / COMMITS["kdsweep-tests/tiny-comet"]
    assert checkpoint == str(comet_dir / "checkpoints" / "model.ckpt")
