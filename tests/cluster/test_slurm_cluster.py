"""The workflow on a real Slurm cluster started on this machine (scripts/local-slurm.sh: munge,
slurmctld, slurmd, slurmdbd + MariaDB, Discovery-like partitions, fake GPUs), through the
repository's profile exactly as a user runs it: `snakemake --profile profiles/slurm`.

Checks from sacct that every rule ran in the partition and with the GPUs the profile says; then
stops one distillation job mid-run with Slurm's own warning signal (the profile's
--signal=USR1@600, sent at once with `scancel --signal=USR1`) and checks that the job saved a
checkpoint and failed, and that the rerun redoes only that job and what depends on it, resuming
from the checkpoint.

Needs root and apt (Debian's slurm packages); elsewhere it is skipped with the reason printed.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny import run_and_signal_distill, small_glue_config

from kdsweep.core.io import read_jsonl
from kdsweep.core.paths import RunPaths

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster

CONFIG = small_glue_config(
    "cluster",
    ["mnli"],
    400,
    {"max_steps": 300, "batch_size": 16, "eval_steps": 100, "save_steps": 20, "logging_steps": 5},
    distributed={"deepspeed": "zero2", "cpu_processes": 2},
)

# What profiles/slurm/config.yaml asks for, per rule: partition and GPUs (type v100-sxm2).
EXPECTED = {
    "synthesize_glue": ("short", 0),
    "prepare_glue": ("short", 0),
    "train_tokenizer": ("short", 0),
    "finetune_teacher": ("gpu", 1),
    "cache_teacher": ("gpu", 1),
    "evaluate_teacher": ("gpu", 1),
    "distill": ("multigpu", 2),
    "evaluate_student": ("gpu", 1),
    "report": ("short", 0),
}
KILLED = "lr0.001_a0.5_T2_s42"


def why_not_here() -> str | None:
    if os.environ.get("KDSWEEP_SKIP_CLUSTER_TESTS") == "1":
        return "KDSWEEP_SKIP_CLUSTER_TESTS=1"
    if os.geteuid() != 0:
        return "not root: the local Slurm needs root to install packages and start daemons"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "no Slurm installed and no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = why_not_here()
    if reason:
        print(f"\nreal-Slurm cluster test skipped: {reason}", file=sys.stderr)
        pytest.skip(f"real-Slurm cluster test skipped: {reason}")
    start = subprocess.run(
        [str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, text=True, timeout=1200
    )
    assert start.returncode == 0, start.stdout + start.stderr
    yield
    subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "stop"], capture_output=True, text=True, timeout=300)


def snakemake_cmd(workdir: Path, *extra: str) -> list[str]:
    # Exactly the README's command, plus a test-sized config, threads that fit 2 real cores,
    # and quick status polls.
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "cluster.yaml"),
        "--set-threads",
        "finetune_teacher=1",
        "cache_teacher=1",
        "distill=2",
        "evaluate_student=1",
        "evaluate_teacher=1",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *extra,
    ]


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", KDSWEEP_SLURM_ACCOUNT="kdsweep")
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e["PATH"]
    return e


def sacct_jobs(since: str) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", since, "-o", "JobID,Partition,AllocTRES,State,Comment"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, partition, tres, state, comment = line.split("|", 4)
        m = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", comment)
        if m:
            gpus = re.search(r"gres/gpu:v100-sxm2=(\d+)", tres)
            jobs.append(
                {
                    "id": job_id,
                    "rule": m.group(1),
                    "wildcards": m.group(2) or "",
                    "partition": partition,
                    "gpus": int(gpus.group(1)) if gpus else 0,
                    "tres": tres,
                    "state": state,
                }
            )
    return jobs


def test_profile_partitions_gpus_and_resume_after_a_killed_job(cluster, tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(CONFIG))
    paths = RunPaths(str(tmp_path / "results" / "cluster"))
    checkpoints = Path(paths.distill_checkpoints("mnli", KILLED))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))

    # 1. The whole workflow through the profile; one distillation job is cancelled mid-run.
    killed_job, output, code = run_and_signal_distill(
        snakemake_cmd(tmp_path, "--retries", "0"), REPO, env(), checkpoints, f"rule_distill_wildcards_mnli_{KILLED}"
    )
    assert killed_job, "the distillation job was never seen running with a checkpoint:\n" + output[-5000:]
    assert code != 0, output[-3000:]  # the killed job failed the run...
    assert not Path(paths.distill_model("mnli", KILLED)).exists()  # ...left no output a rerun could trust
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/kdsweep-complete"))
    assert saved, "no complete checkpoint survived the kill"
    stopped_log = Path(paths.log("distill", "mnli", KILLED)).read_text()
    assert "received SIGUSR1: saving a checkpoint and stopping" in stopped_log, stopped_log[-3000:]
    stop = re.search(r"stopped by SIGUSR1; saved \S+checkpoint-(\d+); rerun to resume", stopped_log)
    assert stop and int(stop.group(1)) == max(saved), stopped_log[-3000:]  # the checkpoint taken on the signal

    jobs = sacct_jobs(since)
    print(
        "\nsacct after the first run:\n"
        + "\n".join(f"{j['id']:>4} {j['rule']:<18} {j['partition']:<9} {j['tres']} {j['state']}" for j in jobs)
    )
    assert {j["rule"] for j in jobs} == set(EXPECTED) - {"report"}  # the report waits for the killed job
    for j in jobs:
        assert (j["partition"], j["gpus"]) == EXPECTED[j["rule"]], j
    assert next(j for j in jobs if j["id"] == killed_job)["state"] == "FAILED"
    assert Path(paths.report_md()).exists() is False

    # 2. The plan: only the killed job and what depends on it.
    plan = subprocess.run(
        snakemake_cmd(tmp_path, "-n"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", (plan.stdout + plan.stderr).split("Job stats:")[1], re.M))
    counts.pop("total", None)
    assert counts == {"distill": "1", "evaluate_student": "1", "report": "1", "all": "1"}, counts

    # 3. The rerun resumes from the checkpoint and finishes.
    rerun_since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    rerun = subprocess.run(snakemake_cmd(tmp_path), cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-5000:]
    rerun_jobs = sacct_jobs(rerun_since)
    assert sorted(j["rule"] for j in rerun_jobs) == ["distill", "evaluate_student", "report"]
    for j in rerun_jobs:
        assert (j["partition"], j["gpus"]) == EXPECTED[j["rule"]] and j["state"] == "COMPLETED", j
    job_log = Path(paths.log("distill", "mnli", KILLED)).read_text()
    assert "received SIGUSR1: saving a checkpoint and stopping" not in job_log  # this is the rerun's log
    resumed = re.search(r"resuming from \S+checkpoint-(\d+) \(step \d+\)", job_log)
    assert resumed and int(resumed.group(1)) == max(saved), job_log[-3000:]
    assert "training on 2 process(es) (cpu), DeepSpeed ZeRO-2" in job_log
    steps = [h["step"] for h in read_jsonl(paths.distill_log("mnli", KILLED)) if "loss" in h]
    assert steps == list(range(5, 301, 5))  # the step counter continued: every step logged once
    report = Path(paths.report_md()).read_text()  # the report of the resumed run, with the killed point's row
    assert "## MNLI" in report and f"{float(KILLED.split('_')[0][2:]):g}" in report
    # GPU-hours from the resources each job asked Slurm for (the profile's benchmark-extended).
    runtime = pd.read_csv(paths.report_file("runtime", "csv")).set_index("Rule")
    for rule, (_, gpus) in EXPECTED.items():
        if rule != "report":
            assert runtime.loc[rule, "GPUs per job"] == gpus, runtime
    distill = runtime.loc["distill"]
    assert distill["GPU-hours"] == pytest.approx(distill["Wall time (s)"] * 2 / 3600, abs=0.002)


SLEEPER = """
rule all:
    input: "done.txt"

rule sleeper:
    output: "done.txt"
    shell: "sleep 600; touch {output}"
"""


@pytest.mark.parametrize("status_command", ["the profile's (squeue)", "sacct"])
def test_a_job_cancelled_by_hand_ends_the_run(cluster, tmp_path, status_command):
    """A plain `scancel <job>` (no signal): sacct records "CANCELLED by <uid>". With the profile's
    status command Snakemake reports the job failed and exits; with sacct, plugin 2.8.0 takes that
    state for a running job and waits forever (the reason for the profile's setting: when this case
    fails, the plugin has learned the state and the setting can go)."""
    (tmp_path / "Snakefile").write_text(SLEEPER)
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / "slurm"), "--retries", "0"]
    cmd += ["--slurm-init-seconds-before-status-checks", "2"]
    if status_command == "sacct":
        cmd += ["--slurm-status-command", "sacct"]
    e = env() | {f"KDSWEEP_PARTITION_{k}": v for k, v in (("CPU", "short"), ("GPU", "gpu"), ("MULTIGPU", "multigpu"))}
    run = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=e | {"KDSWEEP_GPU_TYPE": "v100-sxm2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        job = None
        deadline = time.time() + 120
        while job is None and time.time() < deadline and run.poll() is None:
            running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True).stdout
            job = next((j for j, c in (line.split("|") for line in running.splitlines()) if "rule_sleeper" in c), None)
            time.sleep(1)
        assert job, "the job never ran"
        subprocess.run(["scancel", job], check=True)
        time.sleep(3)
        state = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "State", "-j", job], capture_output=True, text=True)
        assert state.stdout.strip() == f"CANCELLED by {os.getuid()}"
        try:
            output = run.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            output = None
        if status_command == "sacct":
            assert output is None, "Snakemake noticed the cancelled job: the plugin now knows 'CANCELLED by'"
        else:
            assert output is not None, "Snakemake still waits for the cancelled job"
            assert run.returncode != 0 and f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output, output
            assert not (tmp_path / "done.txt").exists()
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
