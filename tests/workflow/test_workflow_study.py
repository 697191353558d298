"""The study's machinery through real Snakemake runs, at test size: the hub assets a config names
are prefetched (offline, from a Hugging Face cache this test builds in the hub's own layout) into
a manifest with their revisions, and every job reads them with the hub off; a missing asset fails
the job that needs it with the exact prefetch command; the extra experiments (alpha and
temperature sweeps, loss ablation) get their own tables, and the report compares with reference
numbers side by side."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hub_cache import GLUE_MNLI_README
from hub_cache import snapshot as hub_snapshot
from safetensors.torch import load_file
from tiny import small_glue_config, tiny_bert

from kdsweep.core.config import experiment_tables, point_id
from kdsweep.core.paths import RunPaths
from kdsweep.families import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

DATASET, TEACHER = "kdsweep-tests/glue", "kdsweep-tests/tiny-bert-mnli"
COMMITS = {DATASET: "a" * 40, TEACHER: "b" * 40}


def snapshot(hub: Path, repo_id: str, repo_type: str) -> Path:
    return hub_snapshot(hub, repo_id, COMMITS[repo_id], repo_type)


def build_hub_cache(hf_home: Path, raw: Path) -> None:
    """MNLI as the hub's parquet repo (from kdsweep's synthetic generator) and a tiny BERT
    (tokenizer trained on that data) as a hub model, in HF_HOME/hub."""
    from kdsweep.core.models import load_tokenizer
    from kdsweep.glue.data import GLUE_TASKS, parse_glue_tsv
    from kdsweep.glue.models import classifier_from_config
    from kdsweep.glue.synthetic import SynthesizeGlueSpec, write_synthetic_glue
    from kdsweep.glue.tokenizer import train_wordpiece_tokenizer

    write_synthetic_glue("mnli", raw, SynthesizeGlueSpec(train_size=240, dev_size=40, seed=0))
    hub = hf_home / "hub"
    data = snapshot(hub, DATASET, "dataset")
    (data / "README.md").write_text(GLUE_MNLI_README)
    (data / "mnli").mkdir()
    texts = []
    for split, hub_split in GLUE_TASKS["mnli"].hub_splits.items():
        rows, _ = parse_glue_tsv(raw / f"{split}.tsv", GLUE_TASKS["mnli"])
        texts += [r["text_a"] for r in rows] + [r["text_b"] for r in rows]
        table = pa.table(
            {
                "premise": [r["text_a"] for r in rows],
                "hypothesis": [r["text_b"] for r in rows],
                "label": pa.array([r["label"] for r in rows], pa.int64()),
                "idx": pa.array(range(len(rows)), pa.int32()),
            }
        )
        pq.write_table(table, data / "mnli" / f"{hub_split}-00000-of-00001.parquet")
    model = snapshot(hub, TEACHER, "model")
    train_wordpiece_tokenizer(texts, model, vocab_size=300)
    classifier_from_config(tiny_bert(), 3, load_tokenizer(str(model)), seed=0).save_pretrained(model)


def run_snakemake(workdir, configfile, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # a compute node: no hub
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    build_hub_cache(workdir / "hf", workdir / "raw")
    reference = workdir / "reference.yaml"
    reference.write_text(
        "glue:\n  mnli:\n    split: dev_matched\n    rows:\n"
        "      - {learning_rate: 1.0e-3, alpha: 0.5, accuracy: 81.77, macro_f1: 81.68}\n"
        "      - {learning_rate: 2.0e-7, alpha: 0.5, accuracy: 62.45, macro_f1: 61.43}\n"
    )
    steps = {"max_steps": 10, "batch_size": 16, "eval_steps": 5, "save_steps": 5, "logging_steps": 5}
    config = small_glue_config("study", ["mnli"], 240, steps)
    config["glue"] |= {"source": "hub", "hub_dataset": DATASET}
    del config["glue"]["synthetic"], config["glue"]["tokenizer_training"]
    config["glue"]["teacher"]["model"] = TEACHER
    config["assets"] = {"hf_home": str(workdir / "hf")}
    config["report"] = {"reference": str(reference)}
    config["glue"]["distill"]["distributed"] = {"deepspeed": "none", "cpu_processes": 1}
    config["glue"]["distill"]["experiments"] = {
        "alpha": {"enabled": True, "values": [0.5, 1.0]},
        "temperature": {"enabled": True, "values": [2.0, 4.0]},
        "ablation": {"enabled": True, "cosine_weight": 1.0},
    }
    configfile = workdir / "study.yaml"
    configfile.write_text(yaml.safe_dump(config))
    out = run_snakemake(workdir, configfile)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return workdir, configfile, RunPaths(str(workdir / "results" / "study")), load_config(configfile)


def test_assets_are_prefetched_with_revisions_and_read_offline(study_run):
    workdir, _, paths, _ = study_run
    manifest = json.loads(Path(paths.assets_manifest()).read_text())
    got = {(a["repo_id"], a["kind"]): a["revision"] for a in manifest["assets"]}
    assert got == {(DATASET, "dataset"): COMMITS[DATASET], (TEACHER, "model"): COMMITS[TEACHER]}
    assert manifest["hf_hub_cache"] == str(workdir / "hf" / "hub")
    data = json.loads(Path(paths.data_manifest("mnli")).read_text())
    hub_train = next((workdir / "hf" / "hub").glob("datasets--*/snapshots/*/mnli/train-*.parquet"))
    assert data["source"] == "hub" and data["splits"]["train"]["rows_written"] == pq.read_metadata(hub_train).num_rows
    assert data["splits"]["dev_matched"]["source"] == f"hub:{DATASET}/mnli[validation_matched]"


def test_experiment_tables_and_study_comparison_are_the_runs_numbers(study_run):
    _, _, paths, config = study_run
    tables = experiment_tables(config["glue"]["distill"])
    assert set(tables) == {"alpha", "temperature", "ablation"}
    for name, rows in tables.items():
        table = pd.read_csv(paths.report_file(f"mnli_{name}", "csv"))
        assert len(table) == len(rows)
        for (_, row), point in zip(table.iterrows(), rows.values(), strict=True):
            run = {**point, "seed": 42}  # one seed: training.seed
            result = json.loads(Path(paths.eval_json("mnli", point_id(run))).read_text())
            assert row["Accuracy m (%)"] == pytest.approx(round(100 * result["splits"]["dev_matched"]["accuracy"], 2))
            assert result["params"] == run  # the job trained what the table says
    ablation = pd.read_csv(paths.report_file("mnli_ablation", "csv"))
    full = ablation.loc[ablation["Loss"] == "KD + hidden cosine + CE", "Accuracy m (%)"].iloc[0]
    assert (ablation["Accuracy m (%), diff to full"] == (ablation["Accuracy m (%)"] - full).round(2)).all()
    # The random-init run started from other weights than the teacher-layer one (same seed, same
    # data, same steps): its trained weights differ. (Their dev numbers may coincide: 10 steps can
    # leave both predicting one class.)
    teacher_init = load_file(Path(paths.distill_model("mnli", "lr0.001_a0.5_T2_cos1_s42")) / "model.safetensors")
    random_init = load_file(Path(paths.distill_model("mnli", "lr0.001_a0.5_T2_cos1_rand_s42")) / "model.safetensors")
    assert teacher_init.keys() == random_init.keys()
    assert any(not torch.equal(teacher_init[k], random_init[k]) for k in teacher_init)
    cos_log = Path(paths.distill_log("mnli", "lr0.001_a0.5_T2_cos1_s42")).read_text()
    assert '"loss_cos"' in cos_log  # the hidden-state cosine term was trained

    study = pd.read_csv(paths.report_file("mnli_vs_study", "csv"))
    ours = json.loads(Path(paths.eval_json("mnli", "lr0.001_a0.5_T2_s42")).read_text())["splits"]["dev_matched"]
    first = study.iloc[0]
    assert float(first["Accuracy kdsweep (%)"]) == pytest.approx(round(100 * ours["accuracy"], 2))
    assert float(first["Accuracy diff"]) == pytest.approx(round(100 * ours["accuracy"], 2) - 81.77, abs=0.011)
    assert study.iloc[1]["Accuracy kdsweep (%)"] == "not run"
    report = Path(paths.report_md()).read_text()
    assert "### MNLI: kdsweep and the study" in report and "### MNLI: alpha sweep" in report


def test_a_missing_asset_fails_its_job_with_the_prefetch_command(study_run):
    workdir, configfile, paths, _ = study_run
    shutil.rmtree(workdir / "hf" / "hub" / f"models--{TEACHER.replace('/', '--')}")
    out = run_snakemake(workdir, configfile, "--forcerun", "finetune_teacher", "--until", "finetune_teacher")
    assert out.returncode != 0
    log = Path(paths.log("finetune_teacher", "mnli")).read_text()
    assert f"model '{TEACHER}'" in log and "Not in the Hugging Face cache" in log
    command = f"snakemake prefetch_assets --forcerun prefetch_assets --cores 1 --configfile {configfile}"
    assert command in log
    assert not Path(paths.teacher_model("mnli")).exists()  # nothing half-written that a rerun would trust
