"""The launcher's commands, its signal forwarding, and the Slurm profile's variables."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kdflow.cluster import ClusterSettingError, apply_profile_defaults
from kdflow.launch import launch_command, launch_env, run_process_group


def test_single_node_runs_torchrun_standalone():
    assert launch_command(["distill", "--task", "mnli"], nproc=4) == [
        "torchrun",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "kdflow",
        "distill",
        "--task",
        "mnli",
    ]


def test_several_nodes_start_one_torchrun_per_node_through_srun():
    cmd = launch_command(["distill"], nproc=8, nnodes=2, head="gpu001", job_id="4242")
    assert cmd[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"]
    assert cmd[3:9] == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-id=4242",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu001:29500",
    ]
    assert cmd[-3:] == ["-m", "kdflow", "distill"]


def test_cpu_launch_env_hides_fake_gpus_and_splits_threads(monkeypatch):
    monkeypatch.setenv("KDFLOW_THREADS", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what Slurm sets for fake GPUs
    env = launch_env(gpus=0, nproc=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu"
    assert env["KDFLOW_THREADS"] == env["OMP_NUM_THREADS"] == "4"


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


def test_profile_variables_default_and_validate(monkeypatch):
    env = {"KDFLOW_SLURM_ACCOUNT": "mylab", "KDFLOW_GPU_TYPE": "a100"}
    values = apply_profile_defaults(env)
    assert values["KDFLOW_PARTITION_MULTIGPU"] == "multigpu" and values["KDFLOW_GPU_TYPE"] == "a100"
    assert values["KDFLOW_SLURM_ACCOUNT"] == "mylab" and values["KDFLOW_DISTILL_GPUS"] == "2"
    with pytest.raises(ClusterSettingError, match="KDFLOW_GPU_TYPE='v100sxm2' is not a Discovery GPU type"):
        apply_profile_defaults({"KDFLOW_SLURM_ACCOUNT": "x", "KDFLOW_GPU_TYPE": "v100sxm2"})
    with pytest.raises(ClusterSettingError, match="KDFLOW_DISTILL_GPUS='0' must be a positive integer"):
        apply_profile_defaults({"KDFLOW_SLURM_ACCOUNT": "x", "KDFLOW_DISTILL_GPUS": "0"})


def test_profile_plans_every_rule_with_its_partition(tmp_path):
    """The README's cluster command, as a dry run: the profile is found and every job gets its resources."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", KDFLOW_SLURM_ACCOUNT="mylab", KDFLOW_GPU_TYPE="a100")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "profiles/slurm",
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
    prepare = text[text.index("rule prepare_glue:") :][:1500]
    assert "slurm_partition=short" in prepare and "gpus-per-node" not in prepare
