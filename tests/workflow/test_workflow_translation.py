"""A real Snakemake run of the translation DAG at test size: synthetic Europarl files in a local folder, a BPE
tokenizer, a tiny Llama teacher trained from a config, the top-k cache, a student built from
its layers distilled with 2 CPU processes (DeepSpeed ZeRO-2), generation, SacreBLEU, COMET (the
rule score_comet in COMET's own environment, .venv-comet, with a tiny COMET model built there and
loaded like the real checkpoint), and the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu
import torch
import yaml
from test_workflow import REPO, planned, snakemake
from tiny import HOSTILE_NAME, dot_test_config, injected
from transformers import AutoModelForCausalLM

from kdsweep.core.cache import open_pointer
from kdsweep.core.io import read_jsonl
from kdsweep.core.paths import RunPaths
from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
from kdsweep.translation.teacher import read_cache

pytestmark = pytest.mark.integration
TASK = "europarl_en_fr"
# COMET's interpreter: the workflow's default (translation.evaluate.comet.python: null), built by
# scripts/setup-venv.sh; unbabel-comet cannot be imported in the main environment these tests run in.
COMET_PYTHON = REPO / ".venv-comet" / "bin" / "python"


def build_tiny_comet(out_dir: Path) -> str:
    """tests/tiny_comet.py's model, built by COMET's interpreter; its checkpoint's path."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run(
        [str(COMET_PYTHON), str(REPO / "tests" / "tiny_comet.py"), str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def small_translation_config(comet_ckpt: str) -> dict:
    """.test/translation.yaml, with COMET on (the tiny checkpoint `comet_ckpt`)."""
    config = dot_test_config("translation")
    config["translation"]["evaluate"]["comet"] = {"enabled": True, "model": comet_ckpt, "batch_size": 8, "gpus": 0}
    return config


# translation.distill.experiments for tr_run: around lr 3e-3, alpha 1 and reverse KL with the tail
# bucket (2 runs more), each row's other value the sweep's own run
EXPERIMENTS = {
    "learning_rate": 3.0e-3,
    "alpha": {"enabled": True, "values": [0.5, 1.0]},
    "loss": {"enabled": True, "values": ["forward_kl", "reverse_kl"], "tails": ["bucket"]},
}


@pytest.fixture(scope="module")
def tr_run(tmp_path_factory):
    """The small translation run, its Europarl files (those kdsweep's synthetic rule would write)
    read from a local folder, that folder and the results under HOSTILE_NAME."""
    workdir = tmp_path_factory.mktemp("trwf")
    ckpt = build_tiny_comet(workdir / "comet")
    config = small_translation_config(ckpt)
    config["translation"]["distill"]["experiments"] = EXPERIMENTS
    local = workdir / HOSTILE_NAME / "europarl"
    write_synthetic_europarl(local, SynthesizeEuroparlSpec(size=config["translation"].pop("synthetic")["size"], seed=0))
    config["translation"] |= {"source": "local", "local_dir": str(local)}
    config["results_dir"] = HOSTILE_NAME
    configfile = workdir / "tr.yaml"
    configfile.write_text(yaml.safe_dump(config))
    output = snakemake(workdir, configfile)
    assert not injected(workdir, REPO)  # no command ran from a path
    return workdir, configfile, RunPaths(str(workdir / HOSTILE_NAME / "tr")), output


def test_translation_dag_runs_every_stage(tr_run, monkeypatch):
    workdir, _, paths, output = tr_run
    monkeypatch.chdir(workdir)  # the cache pointer names its store entry relative to the workflow's directory
    assert planned(output) == {
        "prepare_translation": 1,
        "train_tokenizer_lm": 1,
        "train_teacher_lm": 1,
        "cache_teacher_lm": 1,
        "init_student_lm": 1,
        "distill_lm": 2 + 3,  # the sweep, alpha 1, forward KL + bucket, reverse KL + bucket
        "evaluate_translation": 4 + 3,
        "score_comet": 4 + 3,
        "report": 1,
        "all": 1,
    }
    pointer = json.loads(Path(paths.cache_pointer(TASK)).read_text())
    assert pointer["key_parts"]["top_k"] == 8 and pointer["key_parts"]["kind"] == "lm_topk"
    distill_log = Path(paths.log("distill_lm", "lr0.003_a0.5_T1_s42")).read_text()
    assert "training on 2 process(es) (cpu), DeepSpeed ZeRO-2" in distill_log
    assert max(h["step"] for h in read_jsonl(paths.distill_log(TASK, "lr0.003_a0.5_T1_s42"))) == 10

    # The cache holds the trained teacher's distributions: recomputed here with plain forward passes.
    ids, starts, topk, _ = read_cache(open_pointer(paths.cache_pointer(TASK)))
    teacher = AutoModelForCausalLM.from_pretrained(paths.teacher_model(TASK)).eval()
    for i in (0, len(ids) // 2, len(ids) - 1):
        with torch.no_grad():
            log_p = teacher(torch.tensor([ids[i]])).logits[0, starts[i] - 1 : -1].log_softmax(-1)
        top = log_p.topk(8, dim=-1)
        torch.testing.assert_close(topk[i]["topk_logprobs"].float(), top.values, rtol=1e-3, atol=2e-3)
        assert (topk[i]["topk_indices"] == top.indices).float().mean() > 0.9  # fp16 near-ties may swap

    # Distillation moved the student toward the teacher: the KD term, written out here (forward KL of
    # the renormalized top-8 against the student's full softmax) on 32 training pairs, fell.
    def kd(model_dir: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        total, tokens = 0.0, 0
        for i in range(32):
            with torch.no_grad():
                log_q = model(torch.tensor([ids[i]])).logits[0, starts[i] - 1 : -1].log_softmax(-1)
            log_p = topk[i]["topk_logprobs"].float().log_softmax(-1)
            total += (log_p.exp() * (log_p - log_q.gather(-1, topk[i]["topk_indices"]))).sum().item()
            tokens += len(log_p)
        return total / tokens

    base, distilled = kd(paths.student_init(TASK)), kd(paths.distill_model(TASK, "lr0.003_a0.5_T1_s42"))
    assert distilled < 0.8 * base, (base, distilled)


def test_metrics_are_sacrebleus_and_comets_and_reach_the_report(tr_run):
    _, configfile, paths, _ = tr_run
    comet_ckpt = yaml.safe_load(configfile.read_text())["translation"]["evaluate"]["comet"]["model"]
    table = pd.read_csv(paths.report_table(TASK, "learning_rate", "csv"))
    assert list(table["Model"]) == [
        "Base model",
        "Distilled (learning rate 0.003)",
        "Distilled (learning rate 1e-05)",
        "Teacher",
    ]
    for name, (_, row) in zip(
        ["base", "lr0.003_a0.5_T1_s42", "lr1e-05_a0.5_T1_s42", "teacher"], table.iterrows(), strict=True
    ):
        result = json.loads(Path(paths.eval_json(TASK, name)).read_text())
        outputs = read_jsonl(paths.eval_translations(TASK, name))
        hyps, refs = [o["hypothesis"] for o in outputs], [o["reference"] for o in outputs]
        assert len(outputs) == result["examples"] == 24
        assert result["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
        assert result["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
        assert row["SacreBLEU"] == round(result["bleu"], 2)
        for reason, column in (
            ("marker", "Ended with marker"),
            ("eos", "Ended with eos"),
            ("max_new_tokens", "Runaway"),
        ):
            share = sum(o["stop"] == reason for o in outputs) / 24
            assert result["stop_rates"][reason] == share and row[f"{column} (%)"] == round(100 * share, 1)
        # COMET: score_comet's file (the evaluation JSON has none), all 24 translations scored
        comet = json.loads(Path(paths.eval_comet(TASK, name)).read_text())
        assert "comet" not in result and comet["comet_model"] == comet["comet_checkpoint"] == comet_ckpt
        assert isinstance(comet["comet"], float) and float(row["COMET"]) == round(comet["comet"], 4)
        assert [s["id"] for s in comet["segment_scores"]] == [o["id"] for o in outputs] and comet["scored"] == 24
        assert comet["comet"] == pytest.approx(sum(s["comet"] for s in comet["segment_scores"]) / 24)
    report = Path(paths.report_md()).read_text()
    assert "BLEU signature: `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`" in report
    assert "chrF signature: `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`" in report
    assert f"- COMET: {comet_ckpt}" in report
    samples = Path(paths.report_samples(TASK)).read_text()
    assert samples.count("- **Source**") == 3 and "- **Distilled lr1e-05_a0.5_T1_s42**" in samples


def test_translation_experiment_tables_are_the_runs_numbers(tr_run):
    """Switched on (EXPERIMENTS), the alpha and KD-loss tables hold their runs' BLEU and COMET (the
    runs' evaluation JSONs and COMET files); each run trained its row's setting: its evaluation
    names the point, and the reverse-KL student's weights differ from the forward-KL one's (all
    else equal), its model record naming the loss kind and tail."""
    from safetensors.torch import load_file

    _, _, paths, _ = tr_run
    rows = {
        "alpha": {0.5: "lr0.003_a0.5_T1_s42", 1.0: "lr0.003_a1_T1_s42"},
        "loss": {
            "forward_kl, tail bucket": "lr0.003_a0.5_T1_bucket_s42",
            "reverse_kl, tail bucket": "lr0.003_a0.5_T1_rkl_bucket_s42",
        },
    }
    for name, runs in rows.items():
        table = pd.read_csv(paths.report_file(f"{TASK}_{name}", "csv"))
        assert table.iloc[:, 0].tolist() == list(runs)
        for (_, row), run in zip(table.iterrows(), runs.values(), strict=True):
            result = json.loads(Path(paths.eval_json(TASK, run)).read_text())
            comet = json.loads(Path(paths.eval_comet(TASK, run)).read_text())["comet"]
            assert row["SacreBLEU"] == round(result["bleu"], 2) and row["COMET"] == round(comet, 4)
    params = json.loads(Path(paths.eval_json(TASK, "lr0.003_a0.5_T1_rkl_bucket_s42")).read_text())["params"]
    assert params == {
        "learning_rate": 3e-3,
        "alpha": 0.5,
        "temperature": 1.0,
        "loss": "reverse_kl",
        "tail": "bucket",
        "seed": 42,
    }
    forward, reverse = (
        load_file(Path(paths.distill_model(TASK, run)) / "model.safetensors") for run in rows["loss"].values()
    )
    assert any(not torch.equal(forward[k], reverse[k]) for k in forward)
    record = json.loads(
        (Path(paths.distill_model(TASK, "lr0.003_a0.5_T1_rkl_bucket_s42")) / "kdsweep.json").read_text()
    )
    assert (record["settings"]["loss"], record["settings"]["tail"]) == ("reverse_kl", "bucket")
    report = Path(paths.report_md()).read_text()
    assert f"### {TASK}: KD loss kind and tail option (learning rate 0.003, alpha 0.5, temperature 1)" in report


def test_changing_comet_settings_reruns_only_comet(tr_run):
    """The evaluation jobs do not receive COMET's settings: generation is not redone for them."""
    workdir, configfile, _, _ = tr_run
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n")
    config = yaml.safe_load(configfile.read_text())
    config["translation"]["evaluate"]["comet"]["batch_size"] = 4
    other = workdir / "tr-comet-batch.yaml"
    other.write_text(yaml.safe_dump(config))
    assert planned(snakemake(workdir, other, "-n")) == {"score_comet": 7, "report": 1, "all": 1}


def test_rerun_after_a_failed_evaluation_redoes_only_it(tr_run):
    workdir, configfile, paths, _ = tr_run
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n")
    Path(paths.eval_json(TASK, "teacher")).unlink()
    Path(paths.report_md()).unlink()
    # its translations are rewritten, so their COMET is recomputed
    expected = {"evaluate_translation": 1, "score_comet": 1, "report": 1, "all": 1}
    assert planned(snakemake(workdir, configfile, "-n")) == expected


def comet_dry_run(tmp_path, comet: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` of .test/translation.yaml with these COMET settings."""
    config = dot_test_config("translation")
    config["translation"]["evaluate"]["comet"] = comet
    configfile = tmp_path / "tr.yaml"
    configfile.write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    return subprocess.run(
        [*cmd, "--configfile", str(configfile), "--cores", "2"], capture_output=True, text=True, env=env, timeout=300
    )


def test_with_comet_on_the_report_waits_for_score_comet(tmp_path):
    """COMET on (the default interpreter): one score_comet job per evaluated model, the report's
    inputs; with it off, none."""
    on = comet_dry_run(tmp_path, {"enabled": True, "model": "Unbabel/wmt22-comet-da", "gpus": 0})
    assert on.returncode == 0, on.stderr[-3000:]
    assert planned(on.stdout + on.stderr)["score_comet"] == 4
    report_inputs = (on.stdout + on.stderr).split("rule report:")[1].split("output:")[0]
    assert report_inputs.count(".comet.json") == 4
    off = comet_dry_run(tmp_path, {"enabled": False})
    assert off.returncode == 0 and "score_comet" not in planned(off.stdout + off.stderr)


def test_a_missing_comet_interpreter_fails_before_any_job(tmp_path):
    """COMET on, outside conda, its interpreter missing: the plan fails naming the config key and
    how to build it; with COMET off the same setting is not needed (no score_comet job)."""
    missing = str(tmp_path / "no-comet-venv" / "bin" / "python")
    out = comet_dry_run(tmp_path, {"enabled": True, "model": "Unbabel/wmt22-comet-da", "python": missing})
    assert out.returncode != 0
    message = " ".join((out.stdout + out.stderr).split())
    assert f"translation.evaluate.comet.python: {missing} is not an executable Python interpreter" in message
    assert "`make venv` (scripts/setup-venv.sh" in message and "Job stats" not in message
    out = comet_dry_run(tmp_path, {"enabled": False, "reason": "off here", "python": missing})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rule evaluate_translation:" in out.stdout + out.stderr and "score_comet" not in out.stdout + out.stderr


def test_a_sampled_cache_runs_through_the_workflow(tmp_path, monkeypatch):
    """.test/translation.yaml with `teacher.cache.method: sampled` (12 draws at T = 1), a random
    student distilled with KD alone at one learning rate, COMET off: the cache, distillation on 2 processes and the report run, the
    report's cache line says what the cache holds, and distillation moved the student toward the
    teacher's full distribution (the dense forward KL, written out here from the teacher's logits,
    on 32 training pairs, fell)."""
    config = dot_test_config("translation")
    config["translation"]["teacher"]["cache"] = {"method": "sampled", "draws": 12, "temperature": 1.0, "shard_size": 64}
    config["translation"]["distill"]["sweep"] |= {"learning_rate": [3.0e-3], "alpha": [1.0]}  # KD alone
    config["translation"]["student"]["model"] = {  # a random student, far from the teacher
        "family": "llama",
        "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "max_position_embeddings": 128, "tie_word_embeddings": True},
    }  # fmt: skip
    configfile = tmp_path / "tr.yaml"
    configfile.write_text(yaml.safe_dump(config))
    output = snakemake(tmp_path, configfile)
    assert planned(output)["distill_lm"] == 1 and planned(output)["cache_teacher_lm"] == 1
    paths = RunPaths(str(tmp_path / "results" / "tr"))
    monkeypatch.chdir(tmp_path)  # the pointer names its store entry relative to the workflow's directory
    entry = open_pointer(paths.cache_pointer(TASK))
    assert entry.key_parts["method"] == "sampled" and entry.key_parts["kind"] == "lm_sampled"
    report = Path(paths.report_md()).read_text()
    assert "12 tokens drawn per response token from the teacher at temperature 1 (method sampled, seed 0)" in report
    ids, starts, _, _ = read_cache(entry)
    teacher = AutoModelForCausalLM.from_pretrained(paths.teacher_model(TASK)).eval()

    def dense_kl(model_dir: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        total, tokens = 0.0, 0
        for i in range(32):
            with torch.no_grad():
                rows = slice(starts[i] - 1, -1)
                log_p = teacher(torch.tensor([ids[i]])).logits[0, rows].log_softmax(-1)
                log_q = model(torch.tensor([ids[i]])).logits[0, rows].log_softmax(-1)
            total += (log_p.exp() * (log_p - log_q)).sum().item()
            tokens += len(log_p)
        return total / tokens

    base, distilled = dense_kl(paths.student_init(TASK)), dense_kl(paths.distill_model(TASK, "lr0.003_a1_T1_s42"))
    assert distilled < 0.8 * base, (base, distilled)
