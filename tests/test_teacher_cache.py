import json
import shutil

import pytest
import torch

from kdflow.fileio import read_json, read_jsonl
from kdflow.models import load_classifier, load_tokenizer
from kdflow.teacher import cache_teacher_logits, class_logits_problem
from kdflow.teacher_cache import CacheDamaged, CacheEntry, open_pointer
from kdflow.training import PairClassificationDataset, PairCollator, predict_logits


def run_cache(teacher_dir, data_dir, store, pointer, max_length=32):
    return cache_teacher_logits(
        "mnli", str(teacher_dir), str(teacher_dir), data_dir, max_length, store, pointer, batch_size=64
    )


def test_round_trip_matches_the_teacher(teacher_dir, glue_data, tmp_path):
    manifest = run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "mnli.json")
    entry = open_pointer(tmp_path / "mnli.json")
    cached = entry.read_all(class_logits_problem(3))
    rows = read_jsonl(glue_data["data"] / "train.jsonl")
    assert cached["logits"].shape == (len(rows), 3) and manifest["rows"] == len(rows)
    tok = load_tokenizer(str(teacher_dir))
    expected = predict_logits(
        load_classifier(str(teacher_dir), 3), PairClassificationDataset(rows, tok, 32), PairCollator(tok), 16
    )
    torch.testing.assert_close(cached["logits"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(cached["pseudo_labels"], expected.argmax(-1))
    assert read_json(tmp_path / "mnli.json")["reused"] is False


def test_unchanged_inputs_are_reused_not_recomputed(teacher_dir, glue_data, tmp_path):
    run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "a.json")
    entry = open_pointer(tmp_path / "a.json")
    shard = entry.shard_path(0)
    before = shard.stat().st_mtime_ns
    (tmp_path / "a.json").unlink()  # what Snakemake does to a rerun job's output
    run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "a.json")
    assert read_json(tmp_path / "a.json")["reused"] is True
    assert shard.stat().st_mtime_ns == before
    assert read_json(tmp_path / "a.json")["key"] == entry.key


@pytest.mark.parametrize("change", ["data", "teacher", "tokenizer", "max_length"])
def test_a_changed_input_builds_a_new_entry(teacher_dir, glue_data, tmp_path, change):
    store = tmp_path / "store"
    run_cache(teacher_dir, glue_data["data"], store, tmp_path / "a.json")
    key = read_json(tmp_path / "a.json")["key"]
    data, teacher, max_length = glue_data["data"], teacher_dir, 32
    if change == "data":
        data = tmp_path / "data"
        shutil.copytree(glue_data["data"], data)
        rows = (data / "train.jsonl").read_text().splitlines()
        (data / "train.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    elif change in ("teacher", "tokenizer"):
        teacher = tmp_path / "teacher"
        shutil.copytree(teacher_dir, teacher)
        if change == "teacher":
            model = load_classifier(str(teacher), 3)
            with torch.no_grad():
                model.classifier.weight.mul_(2)
            model.save_pretrained(teacher)
        else:
            tok = load_tokenizer(str(teacher))
            tok.add_tokens(["zebra"])
            tok.save_pretrained(teacher)
    else:
        max_length = 16
    run_cache(teacher, data, store, tmp_path / "b.json", max_length)
    pointer = read_json(tmp_path / "b.json")
    assert pointer["key"] != key and pointer["reused"] is False
    assert len([p for p in store.iterdir() if p.is_dir()]) == 2


def test_incomplete_entry_is_not_trusted(tmp_path):
    entry = CacheEntry(tmp_path, {"kind": "test", "n": 1})
    entry.write_shard(0, {"x": torch.arange(3)})
    assert not entry.is_complete()
    with pytest.raises(RuntimeError, match=r"shards \[1\] missing"):
        entry.finish(2, {})
    pointer = tmp_path / "p.json"
    pointer.write_text(json.dumps({"key": entry.key, "dir": str(entry.dir), "key_parts": entry.key_parts}))
    with pytest.raises(RuntimeError, match="missing or incomplete"):
        open_pointer(pointer)
    entry.write_shard(1, {"x": torch.arange(3, 5)})
    entry.finish(2, {})
    assert torch.equal(open_pointer(pointer).read_all(lambda shard: None)["x"], torch.arange(5))
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("kind, rule", [("class_logits", "cache_teacher"), ("lm_topk", "cache_teacher_lm")])
def test_a_deleted_entry_names_the_rule_and_command_that_rebuild_it(tmp_path, kind, rule):
    """A scratch purge of the store leaves the pointer (the rule's output) up to date, so a plain
    rerun never rebuilds the entry: the message must say which rule to force, and how."""
    entry = CacheEntry(tmp_path / "store", {"kind": kind, "n": 1})
    entry.write_shard(0, {"x": torch.arange(3)})
    entry.finish(1, {})
    pointer = tmp_path / "p.json"
    pointer.write_text(json.dumps({"key": entry.key, "dir": str(entry.dir), "key_parts": entry.key_parts}))
    shutil.rmtree(tmp_path / "store")
    with pytest.raises(RuntimeError, match=rf"missing or incomplete.*snakemake --forcerun {rule} <your usual options>"):
        open_pointer(pointer)


def test_pointer_refuses_other_training_data(teacher_dir, glue_data, tmp_path):
    run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "mnli.json")
    train = glue_data["data"] / "train.jsonl"
    assert open_pointer(tmp_path / "mnli.json", train).is_complete()
    other = tmp_path / "train.jsonl"
    other.write_text(train.read_text().replace("a", "b", 1))
    with pytest.raises(RuntimeError, match=f"built from other training data than {other}.*--forcerun cache_teacher "):
        open_pointer(tmp_path / "mnli.json", other)


def test_nan_logits_are_refused_and_the_cache_rule_rebuilds_them(teacher_dir, glue_data, tmp_path):
    """A shard whose checksums are right but whose logits are NaN (a writer's bug) is refused
    before training, naming the file; rerunning the cache rule recomputes it, as built first."""
    run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "a.json")
    entry = open_pointer(tmp_path / "a.json")
    good = entry.read_shard(0)
    entry.write_shard(0, {**good, "logits": good["logits"].index_fill(0, torch.tensor([7]), float("nan"))})
    with pytest.raises(CacheDamaged, match=r"shard-00000.safetensors: non-finite teacher logits for 1 examples "
                       r"\(the first: training example 7\).*--forcerun cache_teacher "):  # fmt: skip
        open_pointer(tmp_path / "a.json").read_all(class_logits_problem(3))
    run_cache(teacher_dir, glue_data["data"], tmp_path / "store", tmp_path / "b.json")
    assert read_json(tmp_path / "b.json")["reused"] is False and read_json(tmp_path / "b.json")["key"] == entry.key
    rebuilt = open_pointer(tmp_path / "b.json").read_all(class_logits_problem(3))
    assert all(torch.equal(rebuilt[k], good[k]) for k in good)
