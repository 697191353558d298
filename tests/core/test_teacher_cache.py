import json
import shutil

import pytest
import torch
from transformers import AutoConfig

from kdsweep.core.cache import CacheDamaged, CacheEntry, open_pointer
from kdsweep.core.io import read_json, read_jsonl
from kdsweep.core.models import ModelMismatch, load_tokenizer
from kdsweep.glue.dataset import PairClassificationDataset, PairCollator, predict_logits
from kdsweep.glue.distill import GlueDistillSpec, distill_student
from kdsweep.glue.models import load_classifier
from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits, class_logits_problem


def run_cache(teacher_dir, data_dir, store, pointer, max_length=32):
    spec = GlueCacheSpec(max_length=max_length, batch_size=64)
    return cache_teacher_logits("mnli", str(teacher_dir), str(teacher_dir), data_dir, store, pointer, spec)


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
            from transformers import AutoTokenizer

            # another tokenizer whose ids still fit the teacher: the same vocabulary, cased
            AutoTokenizer.from_pretrained(teacher, do_lower_case=False).save_pretrained(teacher)
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


# A teacher used as it is (teacher.finetune.enabled: false) is checked when it is loaded, before
# anything is predicted: a trained head, kdsweep's label order, a tokenizer whose ids fit it.


@pytest.fixture(scope="module")
def teachers(teacher_dir, tmp_path_factory):
    """Variants of the tiny MNLI teacher, each saved with the teacher's own tokenizer: {name: folder}."""
    from conftest import TINY_BERT
    from transformers import AutoModelForSequenceClassification

    from kdsweep.glue.models import classifier_from_config

    root = tmp_path_factory.mktemp("teachers")
    tok = load_tokenizer(str(teacher_dir))

    def labelled(name, id2label):
        model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
        model.config.id2label = dict(enumerate(id2label))
        model.config.label2id = {label: i for i, label in enumerate(id2label)}
        return save(model, name)

    def save(model, name):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        return root / name

    wider = load_tokenizer(str(teacher_dir))
    wider.add_tokens(["zebra", "xylophone", "quokka"])  # 3 ids beyond the teacher's vocabulary
    wider.save_pretrained(root / "wider_tokenizer")
    return {
        "reversed": labelled("reversed", ["contradiction", "neutral", "entailment"]),
        "kdsweep_order": labelled("kdsweep_order", ["ENTAILMENT", "Neutral", "contradiction"]),
        "other_names": labelled("other_names", ["yes", "maybe", "no"]),
        "two_labels": save(classifier_from_config(TINY_BERT, 2, tok, seed=0), "two_labels"),
        "no_head": save(AutoModelForSequenceClassification.from_pretrained(teacher_dir).bert, "no_head"),
        "wider_tokenizer": root / "wider_tokenizer",
    }


def cache_with(teacher, tokenizer, glue_data, tmp_path):
    spec = GlueCacheSpec(max_length=32, batch_size=64)
    return cache_teacher_logits(
        "mnli", str(teacher), str(tokenizer), glue_data["data"], tmp_path / "store", tmp_path / "p.json", spec
    )


def assert_nothing_cached(tmp_path):
    assert not (tmp_path / "store").exists() and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("name", ["reversed", "other_names"])
def test_a_teacher_with_another_label_order_is_refused(teachers, glue_data, tmp_path, name):
    with pytest.raises(ModelMismatch) as err:
        cache_with(teachers[name], teachers[name], glue_data, tmp_path)
    message = str(err.value)
    assert message.startswith(f"glue.teacher.model: {teachers[name]} names its labels")
    names = {"reversed": "['contradiction', 'neutral', 'entailment']", "other_names": "['yes', 'maybe', 'no']"}
    assert names[name] in message and "['entailment', 'neutral', 'contradiction']" in message
    assert_nothing_cached(tmp_path)


def test_a_teacher_naming_kdsweeps_labels_in_any_case_or_generic_names_is_used(
    teachers, teacher_dir, glue_data, tmp_path
):
    # teacher_dir has transformers' generic LABEL_0.. names: unknown, accepted.
    rows = len(read_jsonl(glue_data["data"] / "train.jsonl"))
    assert cache_with(teachers["kdsweep_order"], teachers["kdsweep_order"], glue_data, tmp_path / "a")["rows"] == rows
    assert cache_with(teacher_dir, teacher_dir, glue_data, tmp_path / "b")["rows"] == rows


def test_a_teacher_kdsweep_fine_tuned_from_another_label_order_is_used(teachers, glue_data, tmp_path):
    """Fine-tuning trains the head on kdsweep's label order, so the saved teacher's config names
    kdsweep's labels, and the cache uses it."""
    from tiny import lm_training

    from kdsweep.glue.teacher import GlueTeacherSpec, finetune_teacher

    training = lm_training(max_steps=1, batch_size=8, eval_steps=1000, save_steps=1000, logging_steps=1)
    out = tmp_path / "teacher"
    spec = GlueTeacherSpec(
        model=str(teachers["reversed"]), finetune={"learning_rate": 1e-3, "training": training}, max_length=32
    )
    finetune_teacher(
        "mnli", str(teachers["reversed"]), glue_data["data"], out, tmp_path / "log.jsonl", tmp_path / "ck", spec
    )
    assert load_classifier(str(out), 3).config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert cache_with(out, out, glue_data, tmp_path)["rows"] == len(read_jsonl(glue_data["data"] / "train.jsonl"))


def test_a_teacher_with_another_number_of_labels_is_refused(teachers, glue_data, tmp_path):
    with pytest.raises(
        ModelMismatch, match=r"^glue\.teacher\.model: .*two_labels is a classifier of 2 labels .* the task has 3"
    ):
        cache_with(teachers["two_labels"], teachers["two_labels"], glue_data, tmp_path)
    assert_nothing_cached(tmp_path)


def test_a_teacher_without_a_trained_head_is_refused(teachers, glue_data, tmp_path):
    with pytest.raises(ModelMismatch) as err:
        cache_with(teachers["no_head"], teachers["no_head"], glue_data, tmp_path)
    message = str(err.value)
    assert message.startswith(f"glue.teacher.model: {teachers['no_head']} is not a trained classifier")
    assert "classifier.bias, classifier.weight" in message
    assert_nothing_cached(tmp_path)


def test_a_student_from_a_base_model_still_gets_a_fresh_head(teachers):
    student = load_classifier(str(teachers["no_head"]), 3)  # the default: a student's fresh head
    assert student.config.num_labels == 3


def test_a_teacher_tokenizer_with_ids_beyond_the_teachers_vocabulary_is_refused(
    teachers, teacher_dir, glue_data, tmp_path
):
    with pytest.raises(ModelMismatch) as err:
        cache_with(teacher_dir, teachers["wider_tokenizer"], glue_data, tmp_path)
    message = str(err.value)
    vocab = AutoConfig.from_pretrained(teacher_dir).vocab_size
    tokens = len(load_tokenizer(str(teachers["wider_tokenizer"])))
    assert tokens == vocab + 3
    assert message.startswith(
        f"glue.teacher.tokenizer: the tokenizer {teachers['wider_tokenizer']} has {tokens} tokens"
    )
    assert f"the model {teacher_dir} a vocabulary of {vocab}" in message
    assert_nothing_cached(tmp_path)


def distill_until_the_teacher_is_loaded(teacher, tokenizer, cosine_weight, glue_data, tmp_path, pointer):
    """distill_student up to the point where it has its teacher; a refusal comes before any training."""
    spec = GlueDistillSpec(
        point={"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        student={"model": {"from_teacher": {"layers": [0]}}},
        distill={"cosine_weight": cosine_weight, "hard_labels": False, "training": {"seed": 0}},
        max_length=32,
        eval_batch_size=16,
    )
    out = tmp_path / "out"
    paths = (str(teacher), str(tokenizer), str(tokenizer), glue_data["data"], pointer, out / "model", out / "log.jsonl")
    distill_student("mnli", *paths, out / "ck", spec)


@pytest.fixture(scope="module")
def good_cache(teacher_dir, glue_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("good_cache")
    run_cache(teacher_dir, glue_data["data"], root / "store", root / "p.json")
    return root / "p.json"


@pytest.mark.parametrize("cosine_weight", [0.0, 0.5])  # the teacher builds the student; it also runs online
@pytest.mark.parametrize("name, says", [("reversed", "names its labels"), ("no_head", "not a trained classifier")])
def test_distill_refuses_such_a_teacher_too(teachers, glue_data, good_cache, tmp_path, cosine_weight, name, says):
    with pytest.raises(ModelMismatch, match=f"^glue\\.teacher\\.model: .*{says}"):
        distill_until_the_teacher_is_loaded(
            teachers[name], teachers[name], cosine_weight, glue_data, tmp_path, good_cache
        )
    assert not (tmp_path / "out").exists()


def test_distill_refuses_an_online_teacher_tokenizer_that_does_not_fit(
    teachers, teacher_dir, glue_data, good_cache, tmp_path
):
    with pytest.raises(ModelMismatch, match=r"^glue\.teacher\.tokenizer: .* has \d+ tokens .* vocabulary of \d+"):
        distill_until_the_teacher_is_loaded(
            teacher_dir, teachers["wider_tokenizer"], 0.5, glue_data, tmp_path, good_cache
        )
    assert not (tmp_path / "out").exists()


def test_the_shared_shard_loop_resumes_and_recomputes_only_damaged_shards(tmp_path):
    """CacheEntry.fill, the loop both families' caches use: a job killed while computing shard 2
    resumes there (shards 0 and 1 are not recomputed), a damaged shard is recomputed, and the
    entry ends byte for byte as one uninterrupted fill."""
    values = torch.arange(10, dtype=torch.float32)

    def compute(start, stop, label):
        calls.append(start)
        if start == kill_at:
            raise KeyboardInterrupt  # the job dies mid-run
        return {"x": values[start:stop] * 2}

    def check(shard):
        return None if torch.equal(shard["x"], shard["x"].round()) else "not whole numbers"

    calls, kill_at = [], None
    whole = CacheEntry(tmp_path / "a", {"kind": "test"})
    assert whole.fill(10, 4, compute, check) == 3 and calls == [0, 4, 8]

    entry = CacheEntry(tmp_path / "b", {"kind": "test"})
    calls, kill_at = [], 8
    with pytest.raises(KeyboardInterrupt):
        entry.fill(10, 4, compute, check)
    calls, kill_at = [], None
    assert entry.fill(10, 4, compute, check) == 3 and calls == [8]  # resumed at the missing shard
    shard = entry.read_shard(1)
    entry.write_shard(1, {"x": shard["x"] + 0.5})  # a sound file whose values the check refuses
    calls = []
    entry.fill(10, 4, compute, check)
    assert calls == [4]
    for i in range(3):
        assert entry.shard_path(i).read_bytes() == whole.shard_path(i).read_bytes()
