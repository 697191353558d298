"""Real DeepSpeed on the CPU (gloo), launched as the distill rule launches it: kdsweep.cluster.launch ->
torchrun -> `kdsweep distill`. Two processes with ZeRO-2 follow one process without DeepSpeed at
the same global batch; a bad DeepSpeed config fails with DeepSpeed's own message before any step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_bert

from kdsweep.core.io import read_jsonl
from kdsweep.core.models import load_tokenizer
from kdsweep.families import validate_config
from kdsweep.glue.models import classifier_from_config, load_classifier
from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
# Dropout off: the two runs differ only in how the global batch is split and reduced.
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def setup(glue_data, tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    tok = load_tokenizer(str(tokenizer_dir))
    spec = tiny_bert(**NO_DROPOUT)
    teacher = classifier_from_config(spec, 3, tok, seed=0)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    teacher, spec = str(root / "teacher"), GlueCacheSpec(max_length=32)
    cache_teacher_logits("mnli", teacher, teacher, glue_data["data"], root / "store", root / "cache.json", spec)
    config = validate_config(
        {
            "run_name": "ds",
            "glue": {
                "tasks": ["mnli"],
                "source": "synthetic",
                "max_length": 32,
                "teacher": {"model": "unused"},
                "student": {"model": {"from_teacher": {"layers": [0, 1]}}},
                "distill": {
                    "sweep": {"learning_rate": [1e-3]},
                    "training": {
                        "max_steps": 4,
                        "batch_size": 16,
                        "logging_steps": 1,
                        "eval_steps": 100,
                        "save_steps": 100,
                    },
                },
            },
        }
    )
    return root, config, glue_data["data"]


def run_distill(setup, name, processes, deepspeed=None):
    root, config, data = setup
    spec = {
        "point": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        "student": config["glue"]["student"],
        "distill": {k: v for k, v in config["glue"]["distill"].items() if k != "sweep"},
        "max_length": 32,
        "eval_batch_size": 64,
    }
    out = root / name
    cmd = [
        sys.executable,
        "-m",
        "kdsweep.cluster.launch",
        "--cpu-processes",
        str(processes),
        "--",
        "distill",
        "--task",
        "mnli",
        "--teacher",
        str(root / "teacher"),
        "--teacher-tokenizer",
        str(root / "teacher"),
        "--student-tokenizer",
        str(root / "teacher"),
        "--data-dir",
        str(data),
        "--cache",
        str(root / "cache.json"),
        "--model-out",
        str(out / "model"),
        "--log-out",
        str(out / "log.jsonl"),
        "--checkpoints",
        str(out / "ckpt"),
        "--spec",
        json.dumps(spec),
    ]
    if deepspeed:
        cmd[cmd.index("--task") : cmd.index("--task")] = ["--deepspeed", str(deepspeed)]
    env = dict(os.environ, KDSWEEP_THREADS="2")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600), out


def test_two_process_zero2_matches_one_process(setup):
    single, out1 = run_distill(setup, "single", 1)
    assert single.returncode == 0, single.stderr[-4000:]
    zero2, out2 = run_distill(setup, "zero2", 2, REPO / "workflow" / "deepspeed" / "zero2.json")
    assert zero2.returncode == 0, zero2.stderr[-4000:]
    assert "1 node(s) x 2 process(es) (CPU)" in zero2.stderr
    assert "training on 2 process(es) (cpu), DeepSpeed ZeRO-2" in zero2.stderr
    assert "training on 1 process(es) (cpu), no DeepSpeed" in single.stderr
    losses1 = [h["loss"] for h in read_jsonl(out1 / "log.jsonl") if "loss" in h]
    losses2 = [h["loss"] for h in read_jsonl(out2 / "log.jsonl") if "loss" in h]
    assert len(losses1) == len(losses2) == 4
    # Tolerance: float32 all-reduce and a different reduction order; 1e-3 relative on the loss,
    # 1e-4 absolute on every weight after 4 AdamW steps at lr 1e-3.
    assert losses2 == pytest.approx(losses1, rel=1e-3)
    m1, m2 = load_classifier(str(out1 / "model"), 3), load_classifier(str(out2 / "model"), 3)
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)


def test_bad_deepspeed_config_fails_with_deepspeeds_message_before_training(setup, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 7},
                "train_micro_batch_size_per_gpu": "auto",
                "train_batch_size": "auto",
                "gradient_accumulation_steps": "auto",
            }
        )
    )
    result, out = run_distill(setup, "bad", 2, bad)
    assert result.returncode != 0
    assert "1 validation error for DeepSpeedZeroConfig" in result.stderr and "stage" in result.stderr
    assert "{'loss'" not in result.stderr  # no training step ran
    assert not (out / "model").exists()
