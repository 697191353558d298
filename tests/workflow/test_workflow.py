"""Real Snakemake runs of the GLUE DAG: a small demo config end to end (report numbers are
the runs' numbers, reruns redo only what changed, the teacher cache is reused), and the
shipped demo itself (quality and the learning-rate effect)."""

import base64
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sacrebleu.metrics import BLEU
from tiny import HOSTILE_NAME, injected, small_glue_config

from kdsweep.core.config import sweep_points
from kdsweep.core.io import read_jsonl
from kdsweep.core.paths import RunPaths
from kdsweep.families import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SMALL = small_glue_config(
    "small",
    ["mnli", "qqp"],
    240,
    {"max_steps": 10, "batch_size": 16, "eval_steps": 5, "save_steps": 5, "logging_steps": 5},
)


def snakemake(workdir, configfile, *args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        "2",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out.stdout + out.stderr


def planned(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1] if "Job stats:" in output else ""
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if k not in ("total",)}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The small GLUE run, with its results and its DeepSpeed config under HOSTILE_NAME."""
    workdir = tmp_path_factory.mktemp("wf")
    deepspeed = workdir / HOSTILE_NAME / "zero2.json"
    deepspeed.parent.mkdir()
    shutil.copy(REPO / "workflow" / "deepspeed" / "zero2.json", deepspeed)
    config = json.loads(json.dumps(SMALL)) | {"results_dir": HOSTILE_NAME}
    config["glue"]["distill"]["distributed"] = {"deepspeed_config": str(deepspeed)}
    configfile = workdir / "small.yaml"
    configfile.write_text(yaml.safe_dump(config))
    snakemake(workdir, configfile, "--printshellcmds")  # the shell lines go to .snakemake/log too
    config = load_config(configfile)
    return workdir, configfile, RunPaths(str(workdir / HOSTILE_NAME / "small")), config


def test_paths_with_shell_characters_work_and_execute_nothing(small_run):
    """Every rule's shell line held the hostile folder (results, logs, the DeepSpeed config):
    the jobs wrote where they should, nothing else appeared, and no command ran."""
    workdir, _, paths, _ = small_run
    assert not injected(workdir, REPO)
    assert sorted(p.name for p in workdir.iterdir()) == sorted([".snakemake", HOSTILE_NAME, "small.yaml"])
    assert sorted(p.name for p in (workdir / HOSTILE_NAME).iterdir()) == ["small", "zero2.json"]
    shell_lines = "\n".join(p.read_text() for p in Path(workdir, ".snakemake", "log").glob("*.log"))
    assert shell_lines.count(f"--deepspeed {shlex.quote(str(workdir / HOSTILE_NAME / 'zero2.json'))}") == 4
    assert Path(paths.report_md()).is_file()


def test_report_numbers_are_the_runs_numbers(small_run):
    workdir, _, paths, config = small_run
    points = sweep_points(config["glue"]["distill"])
    for task, splits in (("mnli", ("dev_matched", "dev_mismatched")), ("qqp", ("dev",))):
        table = pd.read_csv(paths.report_table(task, "learning_rate", "csv"))
        assert sorted(table["Learning rate"]) == [1e-5, 1e-3]
        for point_id, params in points.items():
            result = json.loads(Path(paths.eval_json(task, point_id)).read_text())
            assert set(result["splits"]) == set(splits)
            row = table[table["Learning rate"] == params["learning_rate"]].iloc[0]
            for split in splits:
                suffix = {"dev_matched": " m", "dev_mismatched": " mm", "dev": ""}[split]
                m = result["splits"][split]
                assert row[f"Accuracy{suffix} (%)"] == pytest.approx(round(100 * m["accuracy"], 2))
                assert row[f"Macro-F1{suffix}"] == pytest.approx(round(100 * m["macro_f1"], 2))
                assert set(m["per_class_f1"]) == (
                    {"entailment", "neutral", "contradiction"} if task == "mnli" else {"not_duplicate", "duplicate"}
                )
                if point_id == next(iter(points)):  # the saved student, predicted here, scored by scikit-learn
                    expected = sklearn_scores(
                        paths.distill_model(task, point_id), Path(paths.data_dir(task)) / f"{split}.jsonl"
                    )
                    assert (m["n"], m["accuracy"], m["macro_f1"]) == pytest.approx(expected, rel=1e-9)
        history = [
            json.loads(line) for line in Path(paths.distill_log(task, next(iter(points)))).read_text().splitlines()
        ]
        assert max(h["step"] for h in history) == 10
    report = Path(paths.report_md()).read_text()
    assert "## MNLI" in report and "## QQP" in report and "dropped" in report
    for rule in (
        "prepare_glue",
        "cache_teacher",
        "distill",
        "evaluate_student",
        "report",
    ):  # log: and benchmark: on every rule
        bench = next(Path(paths.root, "benchmarks").glob(f"{rule}*/**/*.tsv"), None) or Path(paths.benchmark(rule))
        header, row = bench.read_text().splitlines()[:2]
        assert header.split("\t")[0] == "s" and float(row.split("\t")[0]) > 0  # Snakemake's timing, seconds
        log = next(Path(paths.root, "logs").glob(f"{rule}*/**/*.log"), None) or Path(paths.log(rule))
        assert f"kdsweep {rule.split('_')[0]}" in log.read_text()  # the stage ran and logged its settings
    # The distillation jobs ran through kdsweep.cluster.launch with 2 CPU processes and DeepSpeed ZeRO-2 (config defaults).
    distill_log = Path(paths.log("distill", "mnli", next(iter(points)))).read_text()
    assert "training on 2 process(es) (cpu), DeepSpeed ZeRO-2" in distill_log


def sklearn_scores(model_dir: str, data_file: Path) -> tuple[int, float, float]:
    """(n, accuracy, macro-F1) of a saved classifier on a split: plain transformers forward passes
    and scikit-learn's metrics, no kdsweep code."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    max_length = load_config_small()["glue"]["max_length"]
    with torch.no_grad():
        enc = tok(
            [r["text_a"] for r in rows],
            [r["text_b"] for r in rows],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        predictions = model(**enc).logits.argmax(-1).numpy()
    labels = [r["label"] for r in rows]
    classes = list(range(model.config.num_labels))
    macro_f1 = f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)
    return len(rows), accuracy_score(labels, predictions), macro_f1


def load_config_small() -> dict:
    from kdsweep.families import validate_config

    return validate_config(json.loads(json.dumps(SMALL)))


def test_rerun_redoes_only_what_is_missing(small_run):
    workdir, configfile, paths, _ = small_run
    assert "Nothing to be done" in snakemake(workdir, configfile, "-n")
    # As after a failed evaluation job: its output is gone and the report never ran.
    Path(paths.eval_json("qqp", "lr1e-05_a0.5_T2_s42")).unlink()
    Path(paths.report_md()).unlink()
    assert planned(snakemake(workdir, configfile, "-n")) == {"evaluate_student": 1, "report": 1, "all": 1}


def test_teacher_cache_is_reused_when_its_rule_reruns(small_run):
    workdir, configfile, paths, _ = small_run
    pointer = json.loads(Path(paths.cache_pointer("mnli")).read_text())
    shard = Path(pointer["dir"], "shard-00000.safetensors")
    if not shard.is_absolute():
        shard = workdir / shard
    mtime = shard.stat().st_mtime_ns
    snakemake(workdir, configfile, "--forcerun", "cache_teacher", "--until", "cache_teacher")
    again = json.loads(Path(paths.cache_pointer("mnli")).read_text())
    assert again["key"] == pointer["key"] and again["reused"] is True
    assert shard.stat().st_mtime_ns == mtime

    # A damaged entry: forcing the rule rebuilds it (the shard is verified, not just present),
    # and the rebuilt shard is the file first written, byte for byte.
    good = shard.read_bytes()
    damaged = bytearray(good)
    damaged[-10] ^= 0x01
    shard.write_bytes(bytes(damaged))
    snakemake(workdir, configfile, "--forcerun", "cache_teacher", "--until", "cache_teacher")
    rebuilt = json.loads(Path(paths.cache_pointer("mnli")).read_text())
    assert rebuilt["key"] == pointer["key"] and rebuilt["reused"] is False
    assert shard.read_bytes() == good


def test_shipped_demo_shows_the_learning_rate_effect(tmp_path):
    """The real demo (config/demo.yaml), end to end: the slow test that proves the real thing."""
    snakemake(tmp_path, REPO / "config" / "demo.yaml", timeout=1500)
    paths = RunPaths(str(tmp_path / "results" / "demo"))
    chance = {"mnli": ("Accuracy m (%)", 100 / 3), "qqp": ("Accuracy (%)", None)}
    for task, (column, chance_acc) in chance.items():
        table = pd.read_csv(paths.report_table(task, "learning_rate", "csv")).sort_values("Learning rate")
        if chance_acc is None:  # QQP: the majority class is the bar
            counts = json.loads(Path(paths.data_manifest(task)).read_text())["splits"]["dev"]["label_counts"]
            chance_acc = 100 * max(counts.values()) / sum(counts.values())
        best, lowest = table[column].max(), table.iloc[0][column]
        assert best > chance_acc + 10, (task, best, chance_acc)
        assert best > lowest + 5, (task, table)  # the smallest learning rate barely moves the student
    # The translation family: the study's table with base, 3 learning rates and the teacher.
    table = pd.read_csv(paths.report_table("europarl_en_fr", "learning_rate", "csv"))
    assert list(table["Model"]) == [
        "Base model",
        "Distilled (learning rate 0.003)",
        "Distilled (learning rate 0.001)",
        "Distilled (learning rate 0.0003)",
        "Teacher",
    ]
    # On the demo teacher's real distributions, against the student as distillation starts (T = 1,
    # the demo's top-16): the tail bucket is closer to the dense KD loss than ignoring the tail.
    errors = tail_errors(paths, k=16)
    assert all(error["bucket"] < error["ignore"] for error in errors.values()), errors
    base_bleu = table.iloc[0]["SacreBLEU"]
    students = table.iloc[1:4]
    assert (students["SacreBLEU"] > base_bleu).all(), table  # distillation beats the undistilled student
    # Two seeds per point (sweep.seed: [42, 43]): each student row is the mean and sample sd of its
    # two runs' evaluations; each run's interval is sacrebleu's own bootstrap of its translations.
    task, runs = "europarl_en_fr", pd.read_csv(paths.report_file("europarl_en_fr_all_runs", "csv")).set_index("Run")
    for i, lr in enumerate(("0.003", "0.001", "0.0003")):
        names = [f"lr{lr}_a0.5_T1_s{seed}" for seed in (42, 43)]
        bleus = [json.loads(Path(paths.eval_json(task, n)).read_text())["bleu"] for n in names]
        assert bleus[0] != bleus[1]  # the second seed trained another student
        row = students.iloc[i]
        assert row["Seeds"] == 2 and row["SacreBLEU"] == pytest.approx(round(statistics.fmean(bleus), 2))
        assert row["SacreBLEU sd"] == pytest.approx(round(statistics.stdev(bleus), 2))
        assert row["BLEU vs base model"] == "better 2/2", row  # 20+ BLEU over the base student's ~4
        outputs = read_jsonl(paths.eval_translations(task, names[1]))
        own = BLEU().corpus_score(
            [o["hypothesis"] for o in outputs], [[o["reference"] for o in outputs]], n_bootstrap=1000
        )
        assert runs.loc[names[1], "SacreBLEU 95% CI"] == f"[{own._mean - own._ci:.2f}, {own._mean + own._ci:.2f}]"
    glue_runs = pd.read_csv(paths.report_file("mnli_all_runs", "csv"))
    assert len(glue_runs) == 6 and set(glue_runs["seed"]) == {42, 43}
    # From a table cell to its job: the run's model record (kdsweep.json) has the evaluated
    # fingerprint, the job's log file, the cache it was trained from, its seed and the commit.
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for family_task, run_id, runs_table in (
        ("mnli", "lr0.001_a0.5_T2_s43", glue_runs.set_index("run")),
        (task, "lr0.001_a0.5_T1_s43", runs),
    ):
        row = runs_table.loc[run_id]
        record = json.loads((tmp_path / row["Model record"]).read_text())
        assert record["model"]["fingerprint"][:12] == row["Fingerprint"]
        rule = "distill" if family_task == "mnli" else "distill_lm"
        assert (
            Path(record["log_file"]).resolve()
            == Path(paths.log(rule, *([family_task] if rule == "distill" else []), run_id)).resolve()
        )
        assert record["cache"]["key"] == json.loads(Path(paths.cache_pointer(family_task)).read_text())["key"]
        assert record["settings"]["seed"] == 43 and record["git"]["commit"] == commit
        last_step = max(h["step"] for h in read_jsonl(paths.distill_log(family_task, run_id)))
        assert row["Kept step"] == f"{last_step} (last)"  # training.keep: last (the default)
    assert record["cache"]["method"] == "topk"  # the translation student's cache
    # Tracking (TensorBoard, the default): the job's event files, read back, hold its training
    # loss step by step as its log.jsonl does, and the response tokens of each logged step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(paths.tracking_dir(task, "lr0.001_a0.5_T1_s43"), size_guidance={"scalars": 0})
    events.Reload()
    history = [h for h in read_jsonl(paths.distill_log(task, "lr0.001_a0.5_T1_s43")) if "loss" in h]
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == [h["step"] for h in history] and len(history) > 3
    assert [v for _, v in logged] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("train/tokens_per_step"))
    assert table.iloc[4]["SacreBLEU"] > 20 and (table["COMET"] == "not computed").all()
    report = Path(paths.report_md()).read_text()
    assert "BLEU signature: `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`" in report
    assert "COMET not computed: evaluate.comet.enabled is false" in report and "Runaway (%)" in report
    runtime = pd.read_csv(paths.report_file("runtime", "csv")).set_index("Rule")
    assert runtime.loc["distill", "Jobs"] == 12 and runtime.loc["distill_lm", "Jobs"] == 6
    assert runtime.loc["total", "GPU-hours"] == 0  # a local CPU run asks Slurm for no GPUs

    # The report regenerates from the run's outputs alone: delete it, only the report rule reruns,
    # and every table comes back byte for byte.
    tables = {f: f.read_bytes() for f in Path(paths.report_dir()).glob("*") if f.suffix in (".csv", ".md", ".html")}
    shutil.rmtree(paths.report_dir())
    Path(paths.report_md()).unlink()
    rerun = snakemake(tmp_path, REPO / "config" / "demo.yaml")
    assert planned(rerun) == {"report": 1, "all": 1}, rerun[-2000:]
    assert {f: f.read_bytes() for f in tables} == tables
    assert Path(paths.report_md()).read_text() == report

    # Snakemake's HTML report: every table, the loss curves and the samples, embedded.
    html_report = tmp_path / "report.html"
    snakemake(tmp_path, REPO / "config" / "demo.yaml", "--report", str(html_report))
    embedded = embedded_results(html_report.read_text())
    for name in ("mnli_by_learning_rate.html", "europarl_en_fr_by_learning_rate.html", "runtime.html"):
        assert embedded[name] == (Path(paths.report_dir()) / name).read_bytes()
    assert embedded["europarl_en_fr_samples.html"].count(b"<b>Reference</b>") == 10
    for name in ("mnli_loss.png", "europarl_en_fr_loss.png"):
        assert embedded[name] == (Path(paths.report_dir()) / name).read_bytes()


def tail_errors(paths: RunPaths, k: int, examples: int = 60) -> dict[str, dict[str, float]]:
    """Mean absolute error of the sparse KD loss against the dense one per kind and tail option:
    the demo teacher's logits on dev pairs, the base student's, computed here example by example."""
    import torch
    from test_token_kd import cached_topk, dense
    from transformers import AutoModelForCausalLM

    from kdsweep.core.losses import TAIL_OPTIONS, TOKEN_KD_LOSSES, topk_kd
    from kdsweep.families import load_config
    from kdsweep.translation.generation import load_lm_tokenizer
    from kdsweep.translation.prompt import encode_pair, make_prompt

    task = "europarl_en_fr"
    tok = load_lm_tokenizer(paths.teacher_model(task))
    prompt = make_prompt(tok, load_config(REPO / "config" / "demo.yaml")["translation"]["prompt"])
    rows = [json.loads(line) for line in Path(paths.data_dir(task), "dev.jsonl").read_text().splitlines()]
    models = [
        AutoModelForCausalLM.from_pretrained(p).eval() for p in (paths.teacher_model(task), paths.student_init(task))
    ]
    teacher, student = [], []
    with torch.no_grad():
        for row in rows[:examples]:
            ids, start = encode_pair(tok, prompt, row["source"], row["target"])
            for model, out in zip(models, (teacher, student), strict=True):
                out.append(model(torch.tensor([ids])).logits[0, start - 1 : -1])
    teacher, student = torch.cat(teacher), torch.cat(student)
    logprobs, indices, tail = cached_topk(teacher, k)
    return {
        kind: {
            option: (
                topk_kd(student, logprobs.half(), indices, 1.0, kind, option, tail) - dense(student, teacher, 1.0, kind)
            )
            .abs()
            .mean()
            .item()
            for option in TAIL_OPTIONS
        }
        for kind in TOKEN_KD_LOSSES
    }


def embedded_results(html: str) -> dict[str, bytes]:
    """The files a self-contained Snakemake HTML report embeds (base64 data URIs), by file name."""
    found = re.findall(r"data:[\w/+.-]+;charset=[\w-]+;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html)
    return {name: base64.b64decode(data) for name, data in found}


def test_jobs_run_the_interpreter_that_runs_snakemake(tmp_path):
    """`.venv/bin/snakemake` without an activated venv: no python with kdsweep on PATH (only the
    system's python3), yet the job runs (the Snakefile puts the interpreter's folder first on the
    jobs' PATH); without that, the shell finds no `python` and the job fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    target = RunPaths("results/demo").raw_glue_dir("mnli")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(REPO / "Snakefile")]
    out = subprocess.run(
        [*cmd, "--directory", str(tmp_path), target], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / target).glob("*.tsv"))
    assert written == ["dev_matched.tsv", "dev_mismatched.tsv", "train.tsv"]
