"""The launcher's commands, its signal forwarding, and the Slurm profile's variables."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import wait_for_a_checkpoint

import kdsweep
from kdsweep.cluster.launch import job_nodelist, job_nodes, launch_command, launch_env, run_process_group, srun_env
from kdsweep.cluster.slurm import ClusterSettingError, apply_profile_defaults
from kdsweep.core.io import read_jsonl
from kdsweep.core.trainer import last_complete_checkpoint
from kdsweep.families import validate_config


def test_single_node_runs_torchrun_standalone():
    assert launch_command(["distill", "--task", "mnli"], nproc=4) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "kdsweep",
        "distill",
        "--task",
        "mnli",
    ]


def test_several_nodes_start_one_torchrun_per_node_through_srun():
    cmd = launch_command(["distill"], nproc=8, nnodes=2, head="gpu001", job_id="4242", cpus_per_task="16")
    # --overlap: the launcher runs inside a step that holds the first node's CPUs; explicit
    # nodes, tasks and CPUs: the outer step's SLURM_NNODES=1 / SLURM_NTASKS=1 must not leak in,
    # and srun >= 22.05 does not read SLURM_CPUS_PER_TASK. One node ending first (preempted)
    # must not get the other killed while it saves.
    assert cmd[:6] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=16"]
    assert cmd[6:8] == ["--kill-on-bad-exit=0", "--wait=0"]
    cmd = cmd[:5] + cmd[8:]
    # On each node the launcher again (a node agent: it outlives the node's workers), then torchrun.
    assert cmd[5:10] == [sys.executable, "-m", "kdsweep.cluster.launch", "--node-agent", "--"]
    assert cmd[10:18] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-id=4242",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu001:29500",
    ]
    assert cmd[-3:] == ["-m", "kdsweep", "distill"]


# `scontrol show job -o` of a 2-node job on the local 2-node Slurm (scripts/local-slurm.sh).
SHOW_JOB = (
    "JobId=149 JobName=job3.sh UserId=root(0) Partition=multinode AllocNode:Sid=localhost:18117 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=kd-n[1-2] BatchHost=kd-n1 NumNodes=2 NumCPUs=4"
)


def test_the_nodes_are_the_jobs_not_the_steps():
    assert job_nodelist(SHOW_JOB) == "kd-n[1-2]"
    assert job_nodelist("JobId=7 ReqNodeList=gpu[1-4] NodeList=(null) NumNodes=2") is None  # pending
    assert job_nodes({}) == []  # outside Slurm: one node, no srun


def test_the_nested_srun_keeps_the_job_but_not_the_outer_steps_layout():
    # What Snakemake's `srun -n1` step of a 2-node job holds (seen on the local 2-node Slurm).
    step = {
        "SLURM_JOB_ID": "148",
        "SLURM_JOBID": "148",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NODELIST": "kd-n1",
        "SLURM_CPU_BIND": "quiet,mask_cpu:0x3",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_STEP_ID": "0",
        "PATH": "/usr/bin",
    }
    assert srun_env(step) == {
        "SLURM_JOB_ID": "148",
        "SLURM_JOBID": "148",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_CPUS_PER_TASK": "16",
        "PATH": "/usr/bin",
    }


def test_a_node_agent_runs_its_command_and_returns_its_exit_code():
    agent = [
        sys.executable,
        "-m",
        "kdsweep.cluster.launch",
        "--node-agent",
        "--",
        sys.executable,
        "-c",
        "raise SystemExit(3)",
    ]
    assert subprocess.run(agent, env=dict(os.environ, PYTHONPATH=str(REPO / "src"))).returncode == 3


def test_cpu_launch_env_hides_fake_gpus_and_splits_threads(monkeypatch):
    monkeypatch.setenv("KDSWEEP_THREADS", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what Slurm sets for fake GPUs
    env = launch_env(gpus=0, nproc=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu"
    assert env["KDSWEEP_THREADS"] == env["OMP_NUM_THREADS"] == "4"


def test_signal_is_forwarded_and_the_launcher_waits_for_orphaned_workers(tmp_path):
    # A "torchrun" that dies on SIGUSR1 at once, leaving a worker that needs 1 s to save.
    worker = textwrap.dedent(f"""
        import signal, time, pathlib
        def save(signum, frame):
            time.sleep(1.0)
            pathlib.Path({str(tmp_path / "saved")!r}).write_text(str(signum))
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGUSR1, save)
        pathlib.Path({str(tmp_path / "ready")!r}).touch()
        time.sleep(60)
    """)
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(60)"

    def slurm_signals_the_launcher():
        for _ in range(100):
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    threading.Thread(target=slurm_signals_the_launcher).start()
    try:
        code = run_process_group([sys.executable, "-c", parent], dict(os.environ))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert (tmp_path / "saved").read_text() == str(int(signal.SIGUSR1))  # the worker finished saving first
    assert code == 128 + signal.SIGUSR1


def test_a_signal_only_a_worker_got_still_gives_the_preemption_code(tmp_path):
    # A "torchrun" whose worker alone gets SIGUSR1: the worker reports it (as kdsweep's commands do
    # on Preempted) and exits 138; torchrun, like the real one, exits 1 on a failed child.
    worker = textwrap.dedent(f"""
        import signal, sys, time, pathlib
        from kdsweep.cluster.launch import report_stop
        def save(signum, frame):
            report_stop(signum)
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGUSR1, save)
        pathlib.Path({str(tmp_path / "pid")!r}).write_text(str(__import__("os").getpid()))
        time.sleep(60)
    """)
    parent = f"import subprocess, sys; sys.exit(1 if subprocess.call([sys.executable, '-c', {worker!r}]) else 0)"

    def slurm_signals_the_worker():
        deadline = time.monotonic() + 60
        while not ((tmp_path / "pid").exists() and (tmp_path / "pid").read_text()):
            assert time.monotonic() < deadline, "the fake worker never started"
            time.sleep(0.1)
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGUSR1)

    threading.Thread(target=slurm_signals_the_worker).start()
    env = dict(os.environ, PYTHONPATH=str(Path(kdsweep.__file__).parents[1]))
    assert run_process_group([sys.executable, "-c", parent], env) == 128 + signal.SIGUSR1
    crash = "import sys; sys.exit(1)"  # no report: a failure stays a failure
    assert run_process_group([sys.executable, "-c", crash], env) == 1


@pytest.mark.parametrize("escalation", ["grace runs out", "second Ctrl-C"])
def test_a_job_that_does_not_stop_after_ctrl_c_is_killed(escalation, tmp_path):
    # A "worker" that ignores SIGTERM (as a hung collective would keep it): after a Ctrl-C the
    # launcher kills it when the grace period runs out, or at once on a second Ctrl-C.
    worker = textwrap.dedent(f"""
        import os, signal, time, pathlib
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        pathlib.Path({str(tmp_path / "pid")!r}).write_text(str(os.getpid()))
        time.sleep(120)
    """)
    grace = 2.0 if escalation == "grace runs out" else 60.0

    def ctrl_c():
        deadline = time.monotonic() + 60
        while not ((tmp_path / "pid").exists() and (tmp_path / "pid").read_text()):
            assert time.monotonic() < deadline, "the fake worker never started"
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
        if escalation == "second Ctrl-C":
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGINT)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    threading.Thread(target=ctrl_c).start()
    started = time.monotonic()
    try:
        code = run_process_group([sys.executable, "-c", worker], dict(os.environ), grace=grace)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    took = time.monotonic() - started
    assert code == 128 + signal.SIGINT
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    assert took < 20, took  # killed, not waited for (the worker sleeps 120 s)


def test_a_job_that_finished_despite_a_late_signal_is_not_reported_preempted(tmp_path):
    # Slurm's warning signal after the last training step: the workers go on to write the model
    # and exit 0; the launcher must return 0 (a failure code would make Snakemake delete the model
    # and retry a job whose checkpoints are already gone).
    job = textwrap.dedent(f"""
        import signal, time, pathlib
        signal.signal(signal.SIGUSR1, lambda *a: None)  # noted, too late to stop anything
        pathlib.Path({str(tmp_path / "ready")!r}).touch()
        time.sleep(1.5)
    """)

    def slurm_signals_the_launcher():
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    threading.Thread(target=slurm_signals_the_launcher).start()
    try:
        assert run_process_group([sys.executable, "-c", job], dict(os.environ)) == 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_profile_variables_default_and_validate(monkeypatch):
    env = {"KDSWEEP_SLURM_ACCOUNT": "mylab", "KDSWEEP_GPU_TYPE": "a100"}
    values = apply_profile_defaults(env)
    assert values["KDSWEEP_PARTITION_MULTIGPU"] == "multigpu" and values["KDSWEEP_GPU_TYPE"] == "a100"
    assert values["KDSWEEP_SLURM_ACCOUNT"] == "mylab" and values["KDSWEEP_DISTILL_GPUS"] == "2"
    with pytest.raises(ClusterSettingError, match="KDSWEEP_GPU_TYPE='v100sxm2' is not a Discovery GPU type"):
        apply_profile_defaults({"KDSWEEP_SLURM_ACCOUNT": "x", "KDSWEEP_GPU_TYPE": "v100sxm2"})
    with pytest.raises(ClusterSettingError, match="KDSWEEP_DISTILL_GPUS='0' must be a positive integer"):
        apply_profile_defaults({"KDSWEEP_SLURM_ACCOUNT": "x", "KDSWEEP_DISTILL_GPUS": "0"})


@pytest.mark.parametrize("profile", ["slurm", "profiles/slurm"])
def test_profile_plans_every_rule_with_its_partition(profile, tmp_path):
    """The README's cluster command as written (`--profile slurm`, from the repository root: the
    ./slurm link), as a dry run: the profile is found and every job gets its resources."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        KDSWEEP_SLURM_ACCOUNT="mylab",
        KDSWEEP_GPU_TYPE="a100",
        KDSWEEP_DISTILL_NODES="2",
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    repo = str(REPO)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            profile,
            "-n",
            "--directory",
            str(tmp_path),
            "--configfile",
            "config/config.yaml",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    distill = text[text.index("rule distill:") :][:1500]
    assert "slurm_partition=multigpu" in distill and "--gpus-per-node=a100:2 --signal=USR1@600" in distill
    assert "slurm_account=mylab" in distill and "runtime=1440" in distill
    # A task per node: sbatch's --ntasks=1 (the plugin's default) would cut the job to one node.
    assert re.search(r"\bnodes=2\b", distill) and re.search(r"\btasks=2\b", distill), distill
    prepare = text[text.index("rule prepare_glue:") :][:1500]
    assert "slurm_partition=short" in prepare and "gpus-per-node" not in prepare


REPO = Path(__file__).resolve().parents[2]


def distill_command(
    teacher: Path, data: Path, cache: Path, out: Path, max_steps: int, logging_steps: int = 1, zero2: bool = True
) -> list[str]:
    """`python -m kdsweep.cluster.launch --cpu-processes 2 -- distill ...` as the distill rule runs it
    (DeepSpeed ZeRO-2, or `deepspeed: none` without zero2)."""
    distill = validate_config(
        {
            "run_name": "sig",
            "glue": {
                "tasks": ["mnli"],
                "source": "synthetic",
                "max_length": 32,
                "teacher": {"model": "unused"},
                "student": {"model": {"from_teacher": {"layers": [0]}}},
                "distill": {
                    "sweep": {"learning_rate": [1e-3]},
                    "training": {
                        "max_steps": max_steps,
                        "batch_size": 8,
                        "logging_steps": logging_steps,
                        "eval_steps": 1000,
                        "save_steps": 10,
                    },
                },
            },
        }
    )["glue"]["distill"]
    spec = {
        "point": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        "student": {"model": {"from_teacher": {"layers": [0]}}},
        "distill": {k: v for k, v in distill.items() if k != "sweep"},
        "max_length": 32,
        "eval_batch_size": 64,
    }
    stage = ["distill", "--deepspeed", str(REPO / "workflow" / "deepspeed" / "zero2.json")] if zero2 else ["distill"]
    stage += ["--task", "mnli"]
    stage += ["--teacher", str(teacher), "--teacher-tokenizer", str(teacher)]
    stage += ["--student-tokenizer", str(teacher), "--data-dir", str(data), "--cache", str(cache)]
    stage += [
        "--model-out",
        str(out / "model"),
        "--log-out",
        str(out / "log.jsonl"),
        "--checkpoints",
        str(out / "ckpt"),
    ]
    return [
        sys.executable,
        "-m",
        "kdsweep.cluster.launch",
        "--cpu-processes",
        "2",
        "--",
        *stage,
        "--spec",
        json.dumps(spec),
    ]


def job_env() -> dict[str, str]:
    env = dict(os.environ, KDSWEEP_THREADS="2", PYTHONPATH=str(Path(kdsweep.__file__).parents[1]))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def processes_mentioning(text: str) -> list[str]:
    """The command lines of living processes (not zombies) that contain `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.integration
def test_ctrl_c_stops_every_process_of_a_distillation_and_a_rerun_resumes(teacher_dir, glue_data, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group of the launch (the job's
    shell starts it in the foreground group; torchrun and its workers run in sessions of their
    own). The workers save a checkpoint and stop, no process of the job outlives the launcher, which
    exits 130 within a bounded time; the rerun resumes from the newest complete checkpoint."""
    from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits

    cache = tmp_path / "cache.json"
    cache_teacher_logits(
        "mnli", str(teacher_dir), str(teacher_dir), glue_data["data"], tmp_path / "store", cache, GlueCacheSpec(32)
    )
    out, max_steps = tmp_path / "job", 150  # ~20 steps/s here: the Ctrl-C comes mid-training
    cmd = distill_command(teacher_dir, glue_data["data"], cache, out, max_steps)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=job_env(), stdout=log, stderr=subprocess.STDOUT, process_group=0)
        try:
            wait_for_a_checkpoint(first, out / "ckpt", tmp_path / "first.log")
            os.killpg(first.pid, signal.SIGINT)
            interrupted = time.monotonic()
            code = first.wait(timeout=120)
            stopped_after = time.monotonic() - interrupted
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
    text = (tmp_path / "first.log").read_text()
    assert code == 128 + signal.SIGINT, text[-4000:]
    assert processes_mentioning(str(out)) == []  # nothing of the job outlives the launcher
    assert stopped_after < 60, stopped_after
    assert "stopped by SIGTERM; saved" in text, text[-4000:]  # the workers checkpointed, not just died
    last = last_complete_checkpoint(out / "ckpt")
    step = int(last.rsplit("-", 1)[-1])
    assert 0 < step < max_steps and not (out / "model").exists()

    rerun = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming from {last} (step {step})" in rerun.stderr
    history = read_jsonl(out / "log.jsonl")
    assert [h["step"] for h in history if "loss" in h] == list(range(1, max_steps + 1))
    assert (out / "model").is_dir() and not (out / "ckpt").exists()


def cached_teacher(teacher_dir, glue_data, tmp_path) -> Path:
    from kdsweep.glue.teacher import GlueCacheSpec, cache_teacher_logits

    cache = tmp_path / "cache.json"
    cache_teacher_logits(
        "mnli", str(teacher_dir), str(teacher_dir), glue_data["data"], tmp_path / "store", cache, GlueCacheSpec(32)
    )
    return cache


def uninterrupted_weights(teacher_dir, glue_data, cache, out, max_steps) -> dict:
    """The weights of the same distillation run through the launcher without interruption."""
    whole = subprocess.run(
        distill_command(teacher_dir, glue_data["data"], cache, out, max_steps),
        env=job_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-4000:]
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(teacher_dir, glue_data, tmp_path_factory) -> dict:
    """The teacher cache and the weights of the 60-step distillation run without interruption,
    shared by the signal tests."""
    root = tmp_path_factory.mktemp("signals")
    cache = cached_teacher(teacher_dir, glue_data, root)
    return {"cache": cache, "weights": uninterrupted_weights(teacher_dir, glue_data, cache, root / "whole", 60)}


@pytest.mark.integration
def test_kill_9_mid_distillation_resumes_to_the_uninterrupted_model(uninterrupted, teacher_dir, glue_data, tmp_path):
    """Every process of a 2-process DeepSpeed distillation killed at once (kill -9: a node lost,
    nothing handled): the rerun starts (the lock died with its holder), resumes from the newest
    complete checkpoint, and ends with exactly the weights of a run never interrupted."""
    cache, max_steps, expected = uninterrupted["cache"], 60, uninterrupted["weights"]

    out = tmp_path / "killed"
    cmd = distill_command(teacher_dir, glue_data["data"], cache, out, max_steps)
    first = subprocess.Popen(cmd, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_checkpoint(first, out / "ckpt")
    for line in processes_mentioning(str(out)):
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    first.wait(timeout=60)
    assert processes_mentioning(str(out)) == []
    last = last_complete_checkpoint(out / "ckpt")
    step = int(last.rsplit("-", 1)[-1])
    assert 0 < step < max_steps and not (out / "model").exists()

    # The rerun logs every 2nd step (a setting that resumes): steps 1..step come from the
    # checkpoint, so the log shows where training really picked up.
    rerun = subprocess.run(
        distill_command(teacher_dir, glue_data["data"], cache, out, max_steps, logging_steps=2),
        env=job_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming from {last} (step {step})" in rerun.stderr
    logged = [h["step"] for h in read_jsonl(out / "log.jsonl") if "loss" in h]
    assert logged == [*range(1, step + 1), *range(step + 2, max_steps + 1, 2)]
    got = load_file(str(out / "model" / "model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [
        k for k in expected if not torch.equal(expected[k], got[k])
    ]


def worker_pid(job_folder: str, local_rank: int) -> int:
    """The worker process of `local_rank` (its environment says so) among the job's processes."""
    for line in processes_mentioning(job_folder):
        pid = int(line.split(":")[0])
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"torch.distributed.run" not in cmdline and b"kdsweep.cluster.launch" not in cmdline:
                return pid
    raise AssertionError(f"no worker of local rank {local_rank}: {processes_mentioning(job_folder)}")


def launcher_pid(job_folder: str) -> int:
    for line in processes_mentioning(job_folder):
        if "kdsweep.cluster.launch" in line:
            return int(line.split(":")[0])
    raise AssertionError(f"no launcher: {processes_mentioning(job_folder)}")


def send_usr1(to: str, job_folder: str) -> None:
    """SIGUSR1 as Slurm may deliver it: to every process of the job step (what --signal=USR1@<s>
    does), to one rank only, or to the launcher only (the step's main process)."""
    if to == "every process":
        for line in processes_mentioning(job_folder):
            os.kill(int(line.split(":")[0]), signal.SIGUSR1)
    elif to == "rank 1 only":
        os.kill(worker_pid(job_folder, local_rank=1), signal.SIGUSR1)
    else:
        os.kill(launcher_pid(job_folder), signal.SIGUSR1)


@pytest.mark.integration
@pytest.mark.parametrize("to", ["every process", "rank 1 only", "launcher only"])
def test_a_preemption_signal_stops_every_rank_at_the_same_step(to, uninterrupted, teacher_dir, glue_data, tmp_path):
    """Slurm's warning signal (SIGUSR1) during a 2-process distillation (gloo, DeepSpeed ZeRO-2),
    delivered three ways: the ranks agree on the stop at the step's end, both save the same
    checkpoint (each its ZeRO partition), every process exits and the launcher returns the
    preemption code (128 + SIGUSR1) within 90 s, not after a collective time-out; the rerun
    resumes from that step and ends with exactly (torch.equal) the uninterrupted run's weights."""
    cache, max_steps = uninterrupted["cache"], 60
    out = tmp_path / "job"
    cmd = distill_command(teacher_dir, glue_data["data"], cache, out, max_steps)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=job_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_a_checkpoint(first, out / "ckpt", tmp_path / "first.log")
            send_usr1(to, str(out))
            code = first.wait(timeout=90)  # a rank saving alone would hang far longer (collective time-out)
        finally:
            if first.poll() is None:
                for line in processes_mentioning(str(out)):
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
    text = (tmp_path / "first.log").read_text()
    assert code == 128 + signal.SIGUSR1, text[-4000:]
    assert processes_mentioning(str(out)) == [], text[-4000:]
    assert text.count("stopped by SIGUSR1; saved") == 2, text[-4000:]  # both ranks, the same checkpoint
    last = last_complete_checkpoint(out / "ckpt")
    step = int(last.rsplit("-", 1)[-1])
    assert 10 < step < max_steps and not (out / "model").exists()
    partitions = sorted(p.name for p in Path(last).glob("global_step*/*optim_states.pt"))
    assert len(partitions) == 2, partitions  # rank 0's and rank 1's ZeRO-2 optimizer partitions

    rerun = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming from {last} (step {step})" in rerun.stderr
    got, expected = load_file(str(out / "model" / "model.safetensors")), uninterrupted["weights"]
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.integration
def test_two_processes_without_deepspeed_resume_to_the_uninterrupted_model(
    uninterrupted, teacher_dir, glue_data, tmp_path
):
    """`deepspeed: none` on 2 CPU processes (DDP, gloo): stopped by a signal, the rerun loads the
    whole optimizer state (before the fix: torch.load failed on accelerate's device "cpu:0") and
    ends with exactly the weights of the same run uninterrupted."""
    cache, max_steps = uninterrupted["cache"], 60
    whole = subprocess.run(
        distill_command(teacher_dir, glue_data["data"], cache, tmp_path / "whole", max_steps, zero2=False),
        env=job_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-4000:]
    out = tmp_path / "job"
    cmd = distill_command(teacher_dir, glue_data["data"], cache, out, max_steps, zero2=False)
    first = subprocess.Popen(cmd, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_checkpoint(first, out / "ckpt")
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=90) == 128 + signal.SIGUSR1
    last = last_complete_checkpoint(out / "ckpt")
    rerun = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming from {last}" in rerun.stderr and "training on 2 process(es) (cpu), no DeepSpeed" in rerun.stderr
    expected = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    got = load_file(str(out / "model" / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_only_the_slurm_profile_asks_slurm_anything(tmp_path):
    """Including the rule files has no side effects: a local `snakemake -n` neither calls sacctmgr
    (for the default account) nor checks the profile's GPU type; the same plan under the Slurm
    profile does both. A fake sacctmgr on PATH records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sacctmgr-calls"
    fake = bin_dir / "sacctmgr"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho mylab\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSWEEP_")}
    env |= {"HF_HUB_OFFLINE": "1", "KDSWEEP_GPU_TYPE": "not-a-gpu"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"

    def plan(*profile):
        cmd = [sys.executable, "-m", "snakemake", *profile, "-n", "--cores", "1", "--directory", str(tmp_path)]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    local = plan()
    assert local.returncode == 0, local.stderr[-3000:]
    assert not calls.exists()
    message = "KDSWEEP_GPU_TYPE='not-a-gpu' is not a Discovery GPU type"
    # The profile as shipped, and with its default resources replaced on the command line.
    for extra in ([], ["--default-resources", "mem_mb=16000"]):
        calls.unlink(missing_ok=True)
        cluster = plan("--profile", "slurm", *extra)
        assert cluster.returncode != 0 and message in cluster.stdout + cluster.stderr, extra
        assert "show user" in calls.read_text()  # the default account was looked up
