"""Provenance: a distilled model's kdsweep.json names its job, cache, fingerprints, versions and
commit, each checked here against an independent source (the pointer file, git, importlib, the
weight file's bytes); the evaluation names the model's fingerprint."""

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest
from tiny import DEMO_PROMPT, lm_training, tiny_llama

from kdsweep.core import provenance
from kdsweep.core.io import read_jsonl
from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
from kdsweep.translation.models import causal_lm_from_config
from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_lm
from kdsweep.translation.tokenizer import train_bpe_tokenizer

MAX_LENGTH = 192
POINT = {"learning_rate": 2e-3, "alpha": 0.7, "temperature": 2.0}
SEED = 11


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny teacher, its top-k cache, a base student (init-student-lm) and one distilled
    student (distill-lm, 2 steps), all run in-process as the rules run them."""
    from kdsweep.translation.distill import InitStudentLMSpec, init_student_lm

    root = tmp_path_factory.mktemp("prov")
    write_synthetic_europarl(root / "raw", SynthesizeEuroparlSpec(size=80, seed=3))
    prepare_translation(
        root / "data", PrepareTranslationSpec(source="synthetic", dev_size=8, test_size=6), local_dir=root / "raw"
    )
    rows = read_jsonl(root / "data" / "train.jsonl")
    tok = train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], root / "tok", 400)
    causal_lm_from_config(tiny_llama(2), tok, seed=0).save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    teacher = str(root / "teacher")
    cache = {"top_k": 8, "batch_size": 16, "shard_size": 40, "value_dtype": "float16", "targets": "reference"}
    cache |= {"max_new_tokens": 12, "chunk_size": 64}
    cache_spec = CacheTeacherLMSpec(prompt=DEMO_PROMPT, cache=cache, max_length=MAX_LENGTH)
    cache_teacher_lm(teacher, teacher, root / "data", root / "store", root / "ptr.json", cache_spec)
    init_student_lm(teacher, teacher, root / "base", InitStudentLMSpec(tiny_llama(1), seed=0))
    distill(root, "student")
    return root


def distill(root: Path, name: str) -> None:
    """Stage distill-lm of the sweep point POINT, into root/name."""
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    training = lm_training(max_steps=2, batch_size=8, eval_steps=1000, save_steps=1000, seed=SEED)
    spec = {
        "point": POINT,
        "distill": {"loss": "reverse_kl", "tail": "ignore", "chunk_size": 64, "ce_only_tokens": [], "training": training},
        "prompt": DEMO_PROMPT, "max_length": MAX_LENGTH, "packing": True, "eval_batch_size": 8,
    }  # fmt: skip
    distill_student_lm(
        str(root / "base"), str(root / "teacher"), root / "data", root / "ptr.json",
        root / name, root / f"{name}.log.jsonl", root / f"{name}.ckpt", DistillLMSpec(**spec),
    )  # fmt: skip


def record_of(model: Path) -> dict:
    return json.loads((model / "kdsweep.json").read_text())


def weights_sha256(model: Path) -> str:
    """The fingerprint as documented, recomputed here: config.json and the weight file, each by
    name and the SHA-256 of its bytes."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update(name.encode() + b"\0" + hashlib.sha256((model / name).read_bytes()).hexdigest().encode())
    return h.hexdigest()


def test_a_distilled_model_records_its_job_cache_and_teacher(distilled):
    record = record_of(distilled / "student")
    pointer = json.loads((distilled / "ptr.json").read_text())  # read on its own, not through open_pointer
    assert record["job"]["stage"] == "distill_lm" and record["job"]["point"] == POINT
    assert record["job"]["cache"] == record["cache"]["key"] == pointer["key"]
    assert record["cache"]["method"] == "topk" == pointer["key_parts"]["method"]
    assert record["cache"]["key_parts"] == pointer["key_parts"]
    # The teacher's and the data's fingerprints are the cache key's own parts (one hashing scheme).
    assert (record["teacher"], record["tokenizer"], record["data"]) == tuple(
        pointer["key_parts"][k] for k in ("teacher", "tokenizer", "data")
    )
    assert record["data"] == hashlib.sha256((distilled / "data" / "train.jsonl").read_bytes()).hexdigest()
    settings = {**POINT, "seed": SEED, "loss": "reverse_kl", "tail": "ignore"}
    assert record["settings"] == settings
    assert record["job"]["spec"]["distill"]["training"]["seed"] == SEED
    assert record["run"] == {"world_size": 1, "zero_stage": None, "precision": "fp32", "deepspeed_config": None}


def test_the_record_names_the_commit_and_the_package_versions(distilled):
    record = record_of(distilled / "student")
    source = Path(provenance.__file__).parent
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert record["git"]["commit"] == head.stdout.strip() and record["git"]["reason"] is None
    assert isinstance(record["git"]["dirty"], bool)
    for name in ("torch", "transformers", "accelerate", "deepspeed", "sacrebleu", "kdsweep"):
        assert record["versions"][name] == importlib.metadata.version(name)
    assert record["host"] and record["created"].endswith("Z")


def test_the_fingerprint_is_the_weights_and_config_hash_and_changes_with_one_byte(distilled, tmp_path):
    model = distilled / "student"
    record = record_of(model)
    assert record["model"]["files"] == ["config.json", "model.safetensors"]
    assert record["model"]["fingerprint"] == weights_sha256(model) == provenance.model_fingerprint(model)
    # Not over kdsweep.json (a timestamp and a host): rewriting it changes nothing.
    (model / "kdsweep.json").write_text(json.dumps({**record, "created": "1970-01-01T00:00:00Z", "host": "x"}))
    assert provenance.model_fingerprint(model) == record["model"]["fingerprint"]
    (model / "kdsweep.json").write_text(json.dumps(record))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((model / name).read_bytes())
    assert provenance.model_fingerprint(copy) == record["model"]["fingerprint"]  # same weights, same fingerprint
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-100] ^= 0x01  # one byte of one weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert provenance.model_fingerprint(copy) != record["model"]["fingerprint"]
    assert provenance.model_fingerprint(copy) == weights_sha256(copy)


def test_a_rerun_giving_the_same_weights_gives_the_same_fingerprint(distilled, monkeypatch):
    """And the record is in the folder before it is renamed into place: a model folder is never
    seen without its kdsweep.json."""
    import os

    renames, replace = [], os.replace

    def spy(src, dst):
        if Path(dst) == distilled / "again":
            renames.append((Path(src) / "kdsweep.json").is_file())
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    distill(distilled, "again")
    assert renames == [True]
    first, again = record_of(distilled / "student"), record_of(distilled / "again")
    assert (distilled / "again/model.safetensors").read_bytes() == (
        distilled / "student/model.safetensors"
    ).read_bytes()
    assert again["model"]["fingerprint"] == first["model"]["fingerprint"]


def test_teacher_finetuning_records_its_data(distilled, tmp_path):
    from kdsweep.translation.teacher import TeacherLMSpec, train_teacher_lm

    finetune = {"learning_rate": 1e-3, "training": lm_training(max_steps=1, eval_steps=1000, save_steps=1000)}
    spec = TeacherLMSpec(model=tiny_llama(1), finetune=finetune, prompt=DEMO_PROMPT, max_length=MAX_LENGTH)
    args = (tmp_path / "teacher", tmp_path / "log.jsonl", tmp_path / "ckpt")
    train_teacher_lm(str(distilled / "teacher"), distilled / "data", *args, spec)
    record = record_of(tmp_path / "teacher")
    assert record["job"]["stage"] == "teacher_lm" and record["cache"] is None and record["teacher"] is None
    assert record["data"] == hashlib.sha256((distilled / "data" / "train.jsonl").read_bytes()).hexdigest()
    assert record["settings"]["learning_rate"] == 1e-3 and record["settings"]["alpha"] == 0.0
    assert record["model"]["fingerprint"] == weights_sha256(tmp_path / "teacher")


def test_the_base_student_and_no_leftovers(distilled):
    base = record_of(distilled / "base")
    assert base["job"]["stage"] == "init_student_lm" and base["settings"]["seed"] == 0
    assert base["model"]["fingerprint"] == weights_sha256(distilled / "base")
    assert base["cache"] is None and base["run"] is None
    assert not list(distilled.glob(".*partial*")) and not (distilled / "student.ckpt").exists()


def test_describe_traces_the_model_to_its_job(distilled):
    described = provenance.describe(distilled / "student")
    record = record_of(distilled / "student")
    assert described["stage"] == "distill_lm" and described["point"] == POINT
    assert described["fingerprint"] == record["model"]["fingerprint"]
    assert described["cache_key"] == record["cache"]["key"] and described["cache_method"] == "topk"
    assert described["git_commit"] == record["git"]["commit"]
    assert "log_file" in described and "slurm_job_id" in described
    assert provenance.describe(distilled / "teacher") is None  # saved by hand here: no record


def test_evaluation_names_the_model_fingerprint(distilled, tmp_path):
    from kdsweep.translation.evaluate import EvaluateTranslationSpec, evaluate_translation

    spec = EvaluateTranslationSpec(
        prompt=DEMO_PROMPT, max_length=MAX_LENGTH, evaluate={"batch_size": 6, "max_new_tokens": 4, "num_beams": 1}
    )
    args = (distilled / "data", tmp_path / "m.json", tmp_path / "t.jsonl")
    result = evaluate_translation(str(distilled / "student"), *args, "student", spec)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["model_fingerprint"] == record_of(distilled / "student")["model"]["fingerprint"]
    assert saved["model_provenance"] == str(distilled / "student" / "kdsweep.json") == result["model_provenance"]
    traced = provenance.trace(tmp_path / "m.json")
    assert traced["job"]["stage"] == "distill_lm" and traced["job"]["point"] == POINT and traced["current"]
    # A model without a record (the teacher, saved by hand): the fingerprint is computed, and says so.
    teacher = evaluate_translation(str(distilled / "teacher"), *args, "teacher", spec)
    assert teacher["model_fingerprint"] == weights_sha256(distilled / "teacher")
    assert teacher["model_provenance"] is None
    assert provenance.trace(tmp_path / "m.json")["job"] is None


def test_log_file_is_where_stderr_goes(tmp_path):
    log = tmp_path / "job.log"
    code = "from kdsweep.core.provenance import job_log_file; print(job_log_file())"
    import sys

    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE, text=True, check=True)
    assert done.stdout.strip() == str(log)


def test_git_state_outside_a_checkout(tmp_path):
    state = provenance.git_state(tmp_path)
    assert state["commit"] is None and "no git checkout" in state["reason"]


def test_a_glue_student_records_its_cache_and_its_evaluation_names_it(teacher_dir, glue_data, tmp_path):
    """The classification family: the cache of class logits has no method (its kind says what it is)."""
    from kdsweep.glue.distill import GlueDistillSpec, distill_student
    from kdsweep.glue.evaluate import GlueEvaluateSpec, evaluate_classifier
    from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits

    teacher, data = str(teacher_dir), glue_data["data"]
    pointer = tmp_path / "p.json"
    cache_teacher_logits("mnli", teacher, teacher, data, tmp_path / "store", pointer, GlueCacheSpec(max_length=32))
    training = lm_training(max_steps=1, batch_size=8, eval_steps=1000, save_steps=1000, seed=SEED)
    spec = GlueDistillSpec(
        point={"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        student={"model": {"from_teacher": {"layers": [0]}}},
        distill={"cosine_weight": 0.0, "hard_labels": False, "training": training},
        max_length=32,
        eval_batch_size=16,
    )
    model = tmp_path / "model"
    paths = (teacher, teacher, teacher, data, pointer, model, tmp_path / "log.jsonl")
    distill_student("mnli", *paths, tmp_path / "ck", spec)
    record, saved = record_of(model), json.loads(pointer.read_text())
    assert (record["job"]["stage"], record["job"]["task"]) == ("distill", "mnli")
    assert record["cache"]["key"] == saved["key"] and record["cache"]["method"] is None
    assert record["cache"]["kind"] == "class_logits" and record["teacher"] == saved["key_parts"]["teacher"]
    assert record["settings"]["seed"] == SEED and record["model"]["fingerprint"] == weights_sha256(model)
    result = evaluate_classifier("mnli", str(model), data, tmp_path / "eval.json", "s", GlueEvaluateSpec(max_length=32))
    assert result["model_fingerprint"] == record["model"]["fingerprint"]
    assert result["model_provenance"] == str(model / "kdsweep.json")


def test_the_record_says_which_step_the_model_holds(distilled):
    """keep: last (the default): the last step, and the evaluation after training from log.jsonl;
    a model that did not train (the base student) has none."""
    history = read_jsonl(distilled / "student.log.jsonl")
    kept = {"policy": "last", "step": 2, "metric": "eval_loss", "value": history[-1]["eval_loss"]}
    assert record_of(distilled / "student")["kept"] == kept == provenance.kept(distilled / "student")
    assert provenance.kept_step(distilled / "student") == 2 == history[-1]["step"]
    assert provenance.kept_step(distilled / "base") is None
