"""Job start-up: each stage imports only what it uses (benchmarks/job_overhead.py times it). A
stage's command runs in a fresh interpreter with a --spec it refuses (an unknown key, or for
report and prefetch a missing one), so it stops right after its imports, before any work; the
test then lists the heavy packages that were imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kdsweep
from kdsweep.cli import COMMANDS

HEAVY = ("torch", "transformers", "transformers.trainer", "deepspeed", "sklearn")
PROBE = """
import json, sys
from kdsweep.cli import main
try:
    main(sys.argv[1:])
    stopped = "no error"
except Exception as e:
    stopped = f"{type(e).__name__}: {e}"
print(json.dumps({"stopped": stopped, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def loaded_heavy(stage: str, tmp_path: Path, spec: str = '{"__startup_probe__": 1}', **paths) -> list[str]:
    """The heavy packages `python -m kdsweep <stage>` imports before it stops at its settings (or,
    with a valid spec and real paths, by the end of the job)."""
    argv = [stage]
    for arg in COMMANDS[stage][1]:
        name = arg.rstrip("?")
        if name in paths or not arg.endswith("?"):
            argv += ["--" + name.replace("_", "-"), str(paths.get(name, tmp_path / "missing" / name))]
    env = {**os.environ, "PYTHONPATH": str(Path(kdsweep.__file__).parents[1])}
    env.pop("KDSWEEP_THREADS", None)  # as the light stages' rules run them (it imports torch)
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv, "--spec", spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "__startup_probe__" in spec:  # it must have stopped at its settings, not at a broken import
        assert "__startup_probe__" in result["stopped"] or result["stopped"].startswith("KeyError"), result
    return result["heavy"]


LIGHT = ["prefetch", "synthesize-glue", "prepare-glue", "train-tokenizer", "synthesize-europarl"]
LIGHT += ["prepare-translation", "report"]


@pytest.mark.parametrize("stage", LIGHT)
def test_light_stages_import_no_torch_nor_transformers(stage, tmp_path):
    assert loaded_heavy(stage, tmp_path) == []


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_whole_tokenizer_job_imports_no_torch(kind, tmp_path):
    """Its work needs transformers' fast tokenizer classes, which do not import torch."""
    rows = [
        {"text_a": f"the cat {i}", "text_b": "sat", "source": f"a dog {i}", "target": "un chien"} for i in range(20)
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = json.dumps({"vocab_size": 300, "kind": kind})
    assert loaded_heavy("train-tokenizer", tmp_path, spec, train=train, out=tmp_path / "tok") == ["transformers"]
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


@pytest.mark.parametrize("stage", ["distill", "distill-lm"])
def test_training_stages_import_neither_deepspeed_nor_sklearn(stage, tmp_path):
    """Without --deepspeed; transformers' Trainer itself is needed."""
    assert loaded_heavy(stage, tmp_path) == ["torch", "transformers", "transformers.trainer"]


@pytest.mark.parametrize("stage", ["cache-teacher", "cache-teacher-lm", "init-student-lm"])
def test_stages_that_do_not_train_skip_the_trainer(stage, tmp_path):
    assert loaded_heavy(stage, tmp_path) == ["torch", "transformers"]
