"""Config validation (before any job is planned), sweep expansion, and Snakemake's planning of
the study config and lint, run for real through the snakemake command line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsweep.core.config import (
    ConfigError,
    distill_points,
    experiment_tables,
    point_id,
    sweep_points,
    swept_axes,
    training_seed,
)
from kdsweep.families import load_config, validate_config

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.fixture
def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_shipped_configs_are_valid_and_get_defaults():
    study = load_config(REPO / "config" / "config.yaml")
    assert study["glue"]["teacher"]["model"] == "bert-base-uncased"
    assert study["glue"]["student"]["model"] == "distilbert-base-uncased"
    assert study["glue"]["distill"]["sweep"]["learning_rate"] == [2e-5, 2e-7, 2e-9]
    assert study["glue"]["distill"]["sweep"]["alpha"] == [0.5]
    demo = load_config(REPO / "config" / "demo.yaml")
    assert len(demo["glue"]["distill"]["sweep"]["learning_rate"]) >= 3
    assert demo["glue"]["distill"]["training"]["save_steps"] == 100
    assert demo["glue"]["distill"]["training"]["gradient_accumulation_steps"] == 1  # default filled in
    assert demo["glue"]["subset_seed"] == 0
    tr = study["translation"]
    assert tr["teacher"]["model"] == "meta-llama/Llama-3.2-3B-Instruct"
    assert tr["student"]["model"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert tr["distill"]["sweep"]["learning_rate"] == [1e-3, 1e-4, 1e-5]
    assert tr["teacher"]["cache"]["top_k"] == 64 and tr["distill"]["loss"] == "forward_kl"
    assert tr["prompt"]["template"] is None and tr["evaluate"]["comet"]["model"] == "Unbabel/wmt22-comet-da"


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["glue"].update(tasks=["mnli", "sst2"]),
            r"glue\.tasks\[1\]: 'sst2' is not one of \['mnli', 'qqp'\]",
        ),
        (
            lambda c: c["glue"]["distill"]["sweep"].update(learning_rate=[1e-3, -1e-5]),
            r"distill\.sweep\.learning_rate\[1\]: -1e-05 is less than or equal to the minimum of 0",
        ),
        (
            lambda c: c["glue"]["distill"]["sweep"].update(alpha=[1.5]),
            r"distill\.sweep\.alpha\[0\]: 1\.5 is greater than the maximum of 1",
        ),
        (
            lambda c: c["glue"]["distill"]["sweep"].update(alpha=[-0.1]),
            r"distill\.sweep\.alpha\[0\]: -0\.1 is less than the minimum of 0",
        ),
        (lambda c: c["glue"].pop("teacher"), r"glue: 'teacher' is a required property"),
        (
            lambda c: [c.pop("glue"), c.pop("translation")],
            r"<top level>: .* is not valid under any of the given schemas",
        ),
        (
            lambda c: c["translation"]["distill"].update(loss="kl"),
            r"translation\.distill\.loss: 'kl' is not one of \['forward_kl', 'reverse_kl', 'jsd'\]",
        ),
        (
            lambda c: c["translation"]["teacher"]["cache"].update(top_k=0),
            r"translation\.teacher\.cache\.top_k: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c["translation"]["teacher"]["model"].update(family="bert"),
            r"translation\.teacher\.model\.family: 'bert' cannot be used for translation",
        ),
        (lambda c: c["translation"].update(source="local"), r"translation: 'local_dir' is a required property"),
        (lambda c: c["glue"]["teacher"].pop("model"), r"teacher: 'model' is a required property"),
        (lambda c: c["glue"].update(source="local"), r"glue: 'local_dir' is a required property"),
        (
            lambda c: c["glue"]["distill"].update(temprature=[2.0]),
            r"distill: Additional properties are not allowed \('temprature'",
        ),
        (
            lambda c: c["glue"]["teacher"]["finetune"].update(enabled=False),
            r"teacher\.finetune\.enabled: a teacher built from a config",
        ),
    ],
)
def test_bad_values_fail_naming_the_key(demo, edit, message):
    edit(demo)
    with pytest.raises(ConfigError, match=message):
        validate_config(demo)


HOSTILE = ["x$(touch OWNED)", "x`touch OWNED`", "a b", "it's", 'say "hi"', "x;touch OWNED"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    "key",
    ["glue.teacher.model", "glue.student.tokenizer", "translation.teacher.model", "translation.student.tokenizer"],
)
def test_a_model_name_that_is_no_hub_name_and_no_folder_is_refused(demo, tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)  # relative names are looked up where Snakemake runs
    block = demo
    *parents, leaf = key.split(".")
    for part in parents:
        block = block[part]
    block[leaf] = value
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .* is neither an existing local folder nor a hub name"):
        validate_config(demo)
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("value", ["en; touch OWNED", "$(id)", "EN", "english", "e n"])
@pytest.mark.parametrize("key", ["source_lang", "target_lang"])
def test_language_codes_are_iso_codes(demo, key, value):
    demo["translation"][key] = value
    with pytest.raises(ConfigError, match=rf"translation\.{key}: .* does not match"):
        validate_config(demo)


def _model_folder(path: Path, tokenizer: bool = True) -> Path:
    """A real tiny Llama folder, with its tokenizer files."""
    from tiny import tiny_llama

    from kdsweep.translation.models import causal_lm_from_config
    from kdsweep.translation.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["le chat", "the cat", "un chien", "a dog"] * 20, path, 300)
    causal_lm_from_config(tiny_llama(4), tok, seed=0).save_pretrained(path)  # the demo student takes layers 0, 3
    if not tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (path / name).unlink(missing_ok=True)
    return path


def test_a_local_model_folder_must_be_whole(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _model_folder(tmp_path / "teacher")
    demo["translation"]["teacher"] = {"model": "teacher", "finetune": {"enabled": False}}
    validate_config(json.loads(json.dumps(demo)))  # whole: accepted

    def refused(message):
        with pytest.raises(ConfigError, match=message):
            validate_config(json.loads(json.dumps(demo)))

    demo["translation"]["teacher"]["model"] = "./missing"
    refused(r"translation\.teacher\.model: './missing' is neither an existing local folder")
    demo["translation"]["teacher"]["model"] = "teacher"
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    demo["translation"]["teacher"]["cache"] = {"top_k": vocab + 1}
    refused(rf"translation\.teacher\.cache\.top_k: {vocab + 1} is larger than the teacher's vocabulary \({vocab} tok")
    demo["translation"]["teacher"]["cache"] = {"top_k": vocab}
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-100])
    refused(
        rf"translation\.teacher\.model: local folder teacher: model\.safetensors: {len(whole) - 100} bytes where "
        rf"its header declares {len(whole)}"
    )
    weights.write_bytes(whole)
    (folder / "tokenizer.json").unlink()
    refused(r"translation\.teacher\.model: local folder teacher: no tokenizer")
    demo["translation"]["teacher"]["tokenizer"] = "teacher"
    refused(r"translation\.teacher\.tokenizer: local folder teacher: no tokenizer")
    (tmp_path / "empty").mkdir()
    demo["translation"]["teacher"] |= {"model": "empty", "tokenizer": None}
    refused(r"translation\.teacher\.model: local folder empty: empty \(left by a job that failed\?\)")


@pytest.mark.parametrize(
    "template, message",
    [
        ("English: {source}\nFrench:", r"translation\.prompt\.template must contain \{target\} exactly once"),
        ("{target} from {source}", r"translation\.prompt\.template: \{source\} must come before \{target\}"),
        ("{source} {source} {target}", r"must contain \{source\} exactly once"),
    ],
)
def test_a_prompt_template_without_its_fields_fails_validation(demo, template, message):
    demo["translation"]["prompt"] = {"template": template}
    with pytest.raises(ConfigError, match=message):
        validate_config(demo)


def test_a_missing_comet_checkpoint_fails_validation(demo, tmp_path):
    demo["translation"]["evaluate"]["comet"] = {"model": str(tmp_path / "comet/checkpoints/model.ckpt")}
    with pytest.raises(ConfigError, match=r"translation\.evaluate\.comet\.model: .* neither an existing local"):
        validate_config(demo)


def test_sweep_points_and_ids(demo):
    demo["glue"]["distill"]["sweep"] = {"learning_rate": [2e-5, 2e-7], "alpha": [0.5, 1.0], "temperature": [2.0]}
    validate_config(demo)
    points = sweep_points(demo["glue"]["distill"])  # one seed by default: training.seed
    assert list(points) == ["lr2e-05_a0.5_T2_s42", "lr2e-05_a1_T2_s42", "lr2e-07_a0.5_T2_s42", "lr2e-07_a1_T2_s42"]
    assert points["lr2e-07_a1_T2_s42"] == {"learning_rate": 2e-7, "alpha": 1.0, "temperature": 2.0, "seed": 42}
    assert swept_axes(demo["glue"]["distill"]) == ["learning_rate", "alpha"]  # seeds repeat a point: not an axis
    assert list(sweep_points(demo["translation"]["distill"])) == [
        f"lr{lr}_a0.5_T1_s{seed}" for lr in ("0.003", "0.001", "0.0003") for seed in (42, 43)
    ]
    assert point_id({"learning_rate": 1e-3, "alpha": 0.25, "temperature": 4}) == "lr0.001_a0.25_T4"
    # sweep.seed: every point once per seed, seeds innermost; training.seed no longer decides
    demo["glue"]["distill"]["sweep"]["seed"] = [7, 3]
    demo["glue"]["distill"]["training"]["seed"] = 1
    points = sweep_points(demo["glue"]["distill"])
    assert list(points)[:2] == ["lr2e-05_a0.5_T2_s7", "lr2e-05_a0.5_T2_s3"] and len(points) == 8
    assert {p["seed"] for p in points.values()} == {7, 3}


def test_a_run_trains_with_its_own_seed_and_seeds_are_validated(demo):
    train = {"seed": 42, "epochs": 1}
    assert training_seed(train, {"learning_rate": 1e-3, "seed": 7}) == {"seed": 7, "epochs": 1}
    assert training_seed(train, {"learning_rate": 1e-3}) == train  # a point written by hand without one
    demo["glue"]["distill"]["sweep"]["seed"] = [1, 1]
    with pytest.raises(ConfigError, match=r"glue\.distill\.sweep\.seed: \[1, 1\] has non-unique elements"):
        validate_config(demo)
    demo["glue"]["distill"]["sweep"]["seed"] = []
    with pytest.raises(ConfigError, match=r"glue\.distill\.sweep\.seed: \[\] should be non-empty"):
        validate_config(demo)


def test_experiments_add_runs_around_one_point_and_share_equal_runs(demo):
    demo["glue"]["distill"]["experiments"] = {
        "alpha": {"enabled": True, "values": [0.0, 0.5, 1.0]},
        "temperature": {"enabled": True, "values": [1.0, 2.0]},
        "ablation": {"enabled": True, "cosine_weight": 0.5},
    }
    validate_config(demo)
    tables = experiment_tables(demo["glue"]["distill"])
    assert {label: point_id(p) for label, p in tables["alpha"].items()} == {
        "0": "lr0.001_a0_T2",
        "0.5": "lr0.001_a0.5_T2",  # the sweep's own first point: not trained twice
        "1": "lr0.001_a1_T2",
    }
    assert [point_id(p) for p in tables["temperature"].values()] == ["lr0.001_a0.5_T1", "lr0.001_a0.5_T2"]
    assert {label: point_id(p) for label, p in tables["ablation"].items()} == {
        "KD only": "lr0.001_a1_T2",  # = alpha 1 of the alpha sweep (cosine weight 0 is the block's own)
        "KD + hidden cosine": "lr0.001_a1_T2_cos0.5",
        "KD + hidden cosine + CE": "lr0.001_a0.5_T2_cos0.5",
        "KD + hidden cosine + CE, random init": "lr0.001_a0.5_T2_cos0.5_rand",
    }
    points = distill_points(demo["glue"]["distill"])
    # sweep, alpha 0 and 1, temperature 1, three ablation runs, each once per seed (the demo's 42, 43)
    assert len(points) == 2 * (3 + 2 + 1 + 3)
    assert points["lr0.001_a0.5_T2_cos0.5_rand_s43"] == {
        "learning_rate": 1e-3,
        "alpha": 0.5,
        "temperature": 2.0,
        "cosine_weight": 0.5,
        "init": "random",
        "seed": 43,
    }
    # With a block-wide cosine weight, "KD only" must turn it off: a run of its own.
    demo["glue"]["distill"]["cosine_weight"] = 0.5
    ablation = experiment_tables(demo["glue"]["distill"])["ablation"]
    assert point_id(ablation["KD only"]) == "lr0.001_a1_T2_cos0"
    assert point_id(ablation["KD + hidden cosine"]) == "lr0.001_a1_T2"
    # Switched off (the default), nothing is added.
    assert experiment_tables(load_config(REPO / "config" / "demo.yaml")["glue"]["distill"]) == {}


def test_experiment_values_are_validated(demo):
    demo["glue"]["distill"]["experiments"] = {"alpha": {"enabled": True, "values": [0.5, 1.5]}}
    with pytest.raises(ConfigError, match=r"distill\.experiments\.alpha\.values\[1\]: 1\.5 is greater than"):
        validate_config(demo)
    demo["glue"]["distill"]["experiments"] = {"ablation": {"enabled": "yes"}}
    with pytest.raises(ConfigError, match=r"distill\.experiments\.ablation\.enabled: 'yes' is not of type 'boolean'"):
        validate_config(demo)


def offline_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def test_study_plans_both_tables_offline(tmp_path):
    out = subprocess.run(
        [
            *SNAKEMAKE,
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            "--quiet",
            "rules",
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, re.M))
    assert counts["prepare_glue"] == "2"
    assert counts["finetune_teacher"] == "2"
    assert counts["cache_teacher"] == "2"
    assert counts["distill"] == "6"
    assert counts["evaluate_student"] == "6"
    assert counts["report"] == "1"
    assert "synthesize_glue" not in counts and "train_tokenizer" not in counts
    # EuroLlama: hub teacher and student used as they are (no training, no init), 3 learning rates,
    # evaluation of the base student, the teacher and the 3 students.
    assert counts["prepare_translation"] == "1" and counts["cache_teacher_lm"] == "1"
    assert counts["distill_lm"] == "3" and counts["evaluate_translation"] == "5"
    assert not {"train_teacher_lm", "init_student_lm", "synthesize_europarl", "train_tokenizer_lm"} & set(counts)
    # The hub assets are prefetched once, before the jobs that need them.
    assert counts["prefetch_assets"] == "1"


def test_study_plan_prefetches_first_and_switches_the_hub_off(tmp_path):
    """Dry run with the shell commands: prefetch_assets goes online (HF_HUB_OFFLINE not set, as on
    a login node), every job that starts a family's DAG waits for its manifest, and the report
    compares with the study."""
    out = subprocess.run(
        [*SNAKEMAKE, "-n", "-p", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
        + ["--configfile", str(REPO / "config" / "config.yaml")],
        capture_output=True,
        text=True,
        env={k: v for k, v in offline_env().items() if k != "HF_HUB_OFFLINE"},  # as on a login node
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    jobs = {m.group(1): m.group(0) for m in re.finditer(r"^(?:local)?rule (\w+):.*?(?=^\S|\Z)", text, re.M | re.S)}
    assert "rule prefetch_assets:" in text
    assert "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 TRANSFORMERS_OFFLINE=0 python -m kdsweep prefetch" in text
    for rule in ("prepare_glue", "prepare_translation"):
        assert "results/study/assets.json" in jobs[rule].split("output:")[0], jobs[rule]
    for name in ("mnli_vs_study", "qqp_vs_study", "europarl_en_fr_vs_study"):
        assert f"results/study/report/{name}.html" in jobs["report"]


def test_invalid_config_fails_before_any_job(tmp_path, demo):
    demo["glue"]["distill"]["sweep"]["alpha"] = [2.0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(demo))
    out = subprocess.run(
        [
            *SNAKEMAKE,
            "--cores",
            "1",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(bad),
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert out.returncode != 0
    assert "distill.sweep.alpha[0]: 2.0 is greater than the maximum of 1" in out.stderr
    assert not (tmp_path / "results").exists()


def test_snakemake_lint_snakefmt_and_ruff_are_clean():
    lint = subprocess.run(
        [*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "--directory", str(REPO)],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fmt.returncode == 0, fmt.stderr
    for cmd in (["check", "src", "tests", "benchmarks"], ["format", "--check", "src", "tests", "benchmarks"]):
        ruff = subprocess.run(
            [sys.executable, "-m", "ruff", *cmd], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr


def test_translation_temperature_other_than_1_needs_the_explicit_option():
    """A top-k cache holds the teacher at T = 1: the translation sweep defaults to T = 1, and
    another temperature fails validation unless allow_tempered_topk accepts the bias."""
    base = {
        "run_name": "t",
        "translation": {"source": "synthetic", "teacher": {"model": "t"}, "student": {"model": "s"}},
    }

    def config(**distill):
        return json.loads(json.dumps({**base, "translation": {**base["translation"], "distill": distill}}))

    assert validate_config(config(sweep={"learning_rate": [1e-3]}))["translation"]["distill"]["sweep"][
        "temperature"
    ] == [1.0]
    with pytest.raises(
        ConfigError, match=r"translation.distill.sweep.temperature: 2 with a top-k teacher cache.*allow_tempered_topk"
    ):
        validate_config(config(sweep={"learning_rate": [1e-3], "temperature": [1.0, 2.0]}))
    allowed = validate_config(config(sweep={"learning_rate": [1e-3], "temperature": [2.0]}, allow_tempered_topk=True))
    assert allowed["translation"]["distill"]["sweep"]["temperature"] == [2.0]


def test_a_sampled_cache_serves_forward_kl_at_its_own_temperature_only():
    """A sampled cache's draws estimate forward KL at the temperature they were drawn at: a sweep
    temperature other than the cache's, another divergence or a tail option fail validation,
    naming the key; the cache's own temperature passes (no allow_tempered_topk needed)."""
    base = {
        "run_name": "t",
        "translation": {"source": "synthetic", "teacher": {"model": "t"}, "student": {"model": "s"}},
    }

    def config(cache, **distill):
        tr = {**base["translation"], "distill": {"sweep": {"learning_rate": [1e-3]}, **distill}}
        tr["teacher"] = {**tr["teacher"], "cache": cache}
        return json.loads(json.dumps({**base, "translation": tr}))

    sampled = {"method": "sampled", "draws": 12, "temperature": 2.0}
    ok = validate_config(config(sampled, sweep={"learning_rate": [1e-3], "temperature": [2.0]}))
    assert ok["translation"]["teacher"]["cache"] | {"seed": 0} == {**ok["translation"]["teacher"]["cache"], **sampled}
    with pytest.raises(
        ConfigError,
        match=r"translation.distill.sweep.temperature: 1 with a sampled teacher cache drawn at temperature 2",
    ):
        validate_config(config(sampled, sweep={"learning_rate": [1e-3], "temperature": [2.0, 1.0]}))
    with pytest.raises(ConfigError, match=r"translation.distill.loss: jsd with a sampled teacher cache"):
        validate_config(config(sampled, sweep={"learning_rate": [1e-3], "temperature": [2.0]}, loss="jsd"))
    with pytest.raises(ConfigError, match=r"translation.distill.tail: bucket applies to a top-k cache"):
        validate_config(config(sampled, sweep={"learning_rate": [1e-3], "temperature": [2.0]}, tail="bucket"))
    with pytest.raises(ConfigError, match=r"translation.teacher.cache.method"):
        validate_config(config({"method": "nucleus"}))
    assert validate_config(config({}))["translation"]["teacher"]["cache"]["method"] == "topk"  # the default


@pytest.mark.parametrize(
    "edit, message",
    [
        (  # a typo in a model built from a config would silently keep transformers' default (768 wide)
            lambda c: c["glue"]["teacher"]["model"]["config"].update(hiden_size=64),
            r"^glue\.teacher\.model\.config\.hiden_size: not a setting of BertConfig \(did you mean hidden_size\?\)",
        ),
        (
            lambda c: c["translation"]["teacher"]["model"]["config"].update(num_hiden_layers=2),
            r"^translation\.teacher\.model\.config\.num_hiden_layers: not a setting of LlamaConfig",
        ),
        (
            lambda c: c["glue"]["teacher"]["model"]["config"].update(hidden_size=33),
            r"^glue\.teacher\.model\.config: hidden_size 33 must be a multiple of num_attention_heads 4",
        ),
        (
            lambda c: c["glue"].update(max_length=65),
            r"^glue\.max_length: 65 tokens, but glue\.teacher\.model has max_position_embeddings 64",
        ),
        (
            lambda c: c["translation"].update(max_length=129),
            r"^translation\.max_length: 129 tokens, but translation\.teacher\.model has max_position_embeddings 128",
        ),
        (
            lambda c: c["glue"]["student"]["model"]["from_teacher"].update(layers=[0, 4]),
            r"^glue\.student\.model\.from_teacher\.layers: \[0, 4\] out of range, the teacher has 4 layers",
        ),
        (
            lambda c: c["glue"]["distill"]["sweep"].update(alpha=[0.3333333, 0.33333334]),
            r"^glue\.distill\.sweep\.alpha: 0\.3333333 and 0\.33333334 would be one job \(0\.333333",
        ),
        (
            lambda c: c["translation"]["distill"]["sweep"].update(learning_rate=[1e-5, 1.0000001e-5]),
            r"^translation\.distill\.sweep\.learning_rate: 1e-05 and 1\.0000001e-05 would be one job",
        ),
        (lambda c: c.update(run_name=".."), r"run_name: '\.\.' does not match"),
        (lambda c: c.update(run_name="."), r"run_name: '\.' does not match"),
        (
            lambda c: c["translation"].update(source_lang="fr"),
            r"^translation\.target_lang: 'fr' is also the source language",
        ),
        (
            lambda c: c["translation"].update(source_lang="de", target_lang="en", prompt={"template": None}),
            r"^translation\.prompt\.template: null is the study's prompt, which asks for a translation from English "
            r"to French; write a template for de -> en",
        ),
    ],
)
def test_what_is_known_of_the_models_and_sweeps_is_checked_before_any_job(demo, edit, message):
    assert (
        demo["glue"]["teacher"]["model"]["config"]["num_hidden_layers"] == 4
    )  # the demo's models, as the cases assume
    assert (
        demo["glue"]["max_length"] <= 64 and demo["glue"]["teacher"]["model"]["config"]["max_position_embeddings"] == 64
    )
    edit(demo)
    with pytest.raises(ConfigError, match=message):
        validate_config(demo)


def test_a_deepspeed_config_and_results_dir_must_be_what_they_say(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = r"^translation\.distill\.distributed\.deepspeed_config: "
    for content, message in (("{not json", "is not valid JSON"), ("[1, 2]", "does not hold a JSON object")):
        (tmp_path / "ds.json").write_text(content)
        demo["translation"]["distill"]["distributed"] = {"deepspeed_config": str(tmp_path / "ds.json")}
        with pytest.raises(ConfigError, match=key + f".*ds.json {message}"):
            validate_config(json.loads(json.dumps(demo)))
    demo["translation"]["distill"]["distributed"] = {"deepspeed_config": str(tmp_path)}
    with pytest.raises(ConfigError, match=key + f"{tmp_path} is not a file"):
        validate_config(json.loads(json.dumps(demo)))
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    demo["translation"]["distill"]["distributed"] = {"deepspeed_config": str(tmp_path / "ds.json")}
    (tmp_path / "results").write_text("a file")
    with pytest.raises(ConfigError, match=r"^results_dir: results exists and is not a folder"):
        validate_config(json.loads(json.dumps(demo)))
    (tmp_path / "results").unlink()
    validate_config(demo)


def test_a_key_given_twice_fails_naming_the_file_and_line(demo, tmp_path):
    text = yaml.safe_dump(demo, sort_keys=False)
    (tmp_path / "once.yaml").write_text(text)
    assert load_config(tmp_path / "once.yaml")["run_name"] == demo["run_name"]
    (tmp_path / "twice.yaml").write_text(text + "run_name: other\n")
    with pytest.raises(ConfigError, match=r"(?s)twice\.yaml: key 'run_name' given twice \(first on line 1\).*line \d+"):
        load_config(tmp_path / "twice.yaml")
    out = subprocess.run(
        [*SNAKEMAKE, "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "twice.yaml")],
        capture_output=True, text=True, env=offline_env(), timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "key 'run_name' given twice" in out.stdout + out.stderr, out.stderr[-3000:]


@pytest.mark.parametrize("name", ["glue", "translation"])
def test_the_small_test_configs_are_valid_and_plan(name, tmp_path):
    """.test/<name>.yaml, which the workflow tests run, passes validation and plans its family's
    whole DAG (a dry run, as a shell user would start it)."""
    config = load_config(REPO / ".test" / f"{name}.yaml")
    assert set(config) & {"glue", "translation"} == {name}
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--cores",
        "2",
        "--configfile",
        str(REPO / ".test" / f"{name}.yaml"),
    ]
    out = subprocess.run([*cmd, "--directory", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    last_rule = "evaluate_student" if name == "glue" else "evaluate_translation"
    assert f"rule {last_rule}:" in out.stdout + out.stderr and "rule report:" in out.stdout + out.stderr


def test_translation_experiments_vary_alpha_temperature_and_the_kd_loss_around_one_run(demo):
    """translation.distill.experiments: alpha and temperature sweeps and the KD loss kind x tail
    option around one learning rate, each row once per seed; rows equal to a sweep point are its
    runs; a top-k cache refuses experiment temperatures other than 1 (without allow_tempered_topk)
    and a sampled cache every loss kind but forward KL and every tail, naming the key."""
    distill = demo["translation"]["distill"]
    distill["experiments"] = {
        "learning_rate": 1e-3,
        "alpha": {"enabled": True, "values": [0.5, 1.0]},
        "loss": {"enabled": True, "values": ["forward_kl", "reverse_kl"], "tails": ["ignore", "bucket"]},
    }
    validate_config(demo)
    tables = experiment_tables(distill)
    assert set(tables) == {"alpha", "loss"}
    assert {label: point_id(p) for label, p in tables["alpha"].items()} == {
        "0.5": "lr0.001_a0.5_T1",  # the sweep's own point at lr 1e-3
        "1": "lr0.001_a1_T1",
    }
    assert {label: point_id(p) for label, p in tables["loss"].items()} == {
        "forward_kl, tail ignore": "lr0.001_a0.5_T1",  # the block's own loss and tail: the sweep's run
        "forward_kl, tail bucket": "lr0.001_a0.5_T1_bucket",
        "reverse_kl, tail ignore": "lr0.001_a0.5_T1_rkl",
        "reverse_kl, tail bucket": "lr0.001_a0.5_T1_rkl_bucket",
    }
    points = distill_points(distill)  # sweep 3 x 2 seeds + alpha 1 + three loss rows, each x 2 seeds
    assert len(points) == 2 * (3 + 1 + 3)
    assert points["lr0.001_a0.5_T1_rkl_bucket_s43"] == {
        "learning_rate": 1e-3,
        "alpha": 0.5,
        "temperature": 1.0,
        "loss": "reverse_kl",
        "tail": "bucket",
        "seed": 43,
    }
    distill["experiments"]["temperature"] = {"enabled": True, "values": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=r"translation\.distill\.experiments\.temperature\.values: 2 with a top-k"):
        validate_config(demo)
    distill["experiments"]["temperature"]["enabled"] = False
    demo["translation"]["teacher"]["cache"] |= {"method": "sampled", "draws": 12, "temperature": 1.0}
    with pytest.raises(
        ConfigError, match=r"translation\.distill\.experiments\.loss\.values: reverse_kl with a sampled"
    ):
        validate_config(demo)
    distill["experiments"]["loss"]["values"] = ["forward_kl"]
    with pytest.raises(ConfigError, match=r"translation\.distill\.experiments\.loss\.tails: bucket applies to a top-k"):
        validate_config(demo)
