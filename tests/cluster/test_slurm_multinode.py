"""A distillation on two Slurm nodes: the local Slurm's multi-node mode
(scripts/local-slurm.sh start-multinode: nodes kd-n1 and kd-n2, each a slurmd in a network and
UTS namespace of its own, 10.203.0.11 and .12 on a private bridge), driven through the
repository's profile exactly as a user runs it, with KDSWEEP_DISTILL_NODES=2.

The distill job asks Slurm for 2 nodes; kdsweep.cluster.launch starts one torchrun per node with srun;
the c10d rendezvous and gloo cross the namespaces (one process per node, ZeRO-2 on CPUs). Checks
sacct's rows for the job (the torchrun step on both nodes), the trainer's ranks by host; then
stops the job mid-run with Slurm's warning signal (what the profile's --signal=USR1@600 sends,
sent at once with `scancel --signal=USR1`): both ranks save the same checkpoint, the job fails,
and the rerun resumes from that step on both nodes and finishes.

Needs root, network namespaces and apt (Debian's slurm packages); elsewhere it is skipped with
the reason printed.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import run_and_signal_distill, small_glue_config

from kdsweep.cluster import launch
from kdsweep.core.io import read_jsonl
from kdsweep.core.paths import RunPaths

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "scripts" / "local-slurm.sh")
pytestmark = pytest.mark.cluster

RUN = "multinode"
POINT = "lr0.001_a0.5_T2_s42"
MAX_STEPS = 200
CONFIG = small_glue_config(
    RUN,
    ["mnli"],
    400,
    {"max_steps": MAX_STEPS, "batch_size": 16, "eval_steps": 100, "save_steps": 20, "logging_steps": 5},
    distributed={"deepspeed": "zero2", "cpu_processes": 1},  # 1 process per node: 2 cores in all
)
CONFIG["glue"]["distill"]["sweep"] = {"learning_rate": [1e-3]}
NODES = {"kd-n1", "kd-n2"}


def why_not_here() -> str | None:
    if os.environ.get("KDSWEEP_SKIP_CLUSTER_TESTS") == "1":
        return "KDSWEEP_SKIP_CLUSTER_TESTS=1"
    if os.geteuid() != 0:
        return "not root: the local Slurm needs root to install packages, start daemons and make network namespaces"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "no Slurm installed and no apt-get to install it"
    if not shutil.which("ip") and not shutil.which("apt-get"):
        return "no `ip` (iproute2) and no apt-get to install it"
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return f"no `{tool}` (util-linux): cannot start a slurmd in a namespace"
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make network namespaces here (unshare --net: {probe.stderr.strip() or probe.returncode})"
    return None


@pytest.fixture(scope="module")
def two_nodes():
    reason = why_not_here()
    if reason:
        print(f"\n2-node Slurm test skipped: {reason}", file=sys.stderr)
        pytest.skip(f"2-node Slurm test skipped: {reason}")
    start = subprocess.run([SCRIPT, "start-multinode"], capture_output=True, text=True, timeout=1200)
    assert start.returncode == 0, start.stdout + start.stderr
    yield
    # The whole local cluster goes, as after tests/cluster/test_slurm_cluster.py; either test starts it again.
    subprocess.run([SCRIPT, "stop"], capture_output=True, text=True, timeout=300)


def env() -> dict:
    e = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        KDSWEEP_SLURM_ACCOUNT="kdsweep",
        KDSWEEP_PARTITION_MULTIGPU="multinode",  # the partition of kd-n1 and kd-n2
        KDSWEEP_DISTILL_NODES="2",
        KDSWEEP_DISTILL_GPUS="1",
        KDSWEEP_PROGRESS_SECONDS="0",  # a progress line (the step counter) at every step
    )
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e["PATH"]
    # The jobs run in the results folder: this checkout's kdsweep, whatever the caller's PYTHONPATH.
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), e.get("PYTHONPATH")) if p)
    return e


TARGET = RunPaths(f"results/{RUN}").distill_model("mnli", POINT)


def snakemake_cmd(workdir: Path, *extra: str) -> list[str]:
    # The README's command with a test-sized config, threads for 2 real cores, quick status
    # polls, and the distilled model as the target (the evaluation and report are the
    # single-node test's).
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "multinode.yaml"),
        "--set-threads",
        "distill=1",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *extra,
        TARGET,
    ]


def distill_inputs_here(workdir: Path) -> None:
    """The distillation's inputs (data, tokenizer, teacher, its cache), made on this machine
    without Slurm: through Slurm each of those five jobs costs the plugin's ~40 s of status
    polls (tests/cluster/test_slurm_cluster.py runs them there)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(workdir)]
    cache = RunPaths(f"results/{RUN}").cache_pointer("mnli")  # needs the data, tokenizer and teacher
    cmd += [cache, "--configfile", str(workdir / "multinode.yaml")]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]


def sacct_rows(job_id: str) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-P", "-n", "-j", job_id, "-o", "JobID,JobName,Partition,NNodes,NodeList,State,ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keys = ("id", "name", "partition", "nnodes", "nodelist", "state", "exitcode")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line]


def hostnames(nodelist: str) -> set[str]:
    return set(launch.hostnames(nodelist))


def distill_job(since: str) -> str:
    """The id of the distill job submitted since `since` (the job's comment names the rule)."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", since, "-o", "JobID,Comment"], capture_output=True, text=True, check=True
    ).stdout
    ids = [line.split("|")[0] for line in out.splitlines() if f"rule_distill_wildcards_mnli_{POINT}" in line]
    assert len(ids) == 1, out
    return ids[0]


def wait_for_accounting(job_id: str, n_steps: int) -> list[dict]:
    """sacct's rows of a finished job, once slurmdbd has them all (it lags a little)."""
    for _ in range(60):
        rows = sacct_rows(job_id)
        if len(rows) >= n_steps and all(r["state"] not in ("RUNNING", "PENDING", "COMPLETING") for r in rows):
            return rows
        time.sleep(0.5)
    return sacct_rows(job_id)


def show(rows: list[dict]) -> str:
    return "\n".join(
        f"  {r['id']:<12} {r['name']:<10} {r['partition']:<10} {r['nnodes']:>2} {r['nodelist']:<12} {r['state']:<10}"
        f" {r['exitcode']}"
        for r in rows
    )


def check_both_nodes_trained(job_id: str, job_log: str, state: str, exit_code: str) -> list[dict]:
    rows = wait_for_accounting(job_id, 4)
    job = next(r for r in rows if r["id"] == job_id)
    assert job["partition"] == "multinode" and hostnames(job["nodelist"]) == NODES and job["state"] == state, rows
    # The batch script and Snakemake's own step (.0, the launcher) run on the first node; the
    # launcher's srun (.1) runs a task on each node: the node agent and its torchrun.
    assert {r["id"]: hostnames(r["nodelist"]) for r in rows if r["id"] != job_id} == {
        f"{job_id}.batch": {"kd-n1"},
        f"{job_id}.0": {"kd-n1"},
        f"{job_id}.1": NODES,
    }, show(rows)
    step = next(r for r in rows if r["id"] == f"{job_id}.1")
    # The training step's exit code: the node agents' (srun's largest), 138 = 128 + SIGUSR1 when
    # preempted, which sacct (Slurm 22.05) shows as "10:0" (an exit status above 128 less 128:
    # `srun bash -c 'exit 138'` shows the same), against "1:0" for a crash.
    assert step["nnodes"] == "2" and step["exitcode"] == exit_code, show(rows)
    assert "kdsweep.cluster.launch: 2 node(s) x 1 process(es) (CPU): srun --overlap --nodes=2" in job_log, job_log[
        -3000:
    ]
    assert "training on 2 process(es) (cpu), DeepSpeed ZeRO-2" in job_log, job_log[-3000:]
    by_host = re.search(r"ranks by host: (.*)", job_log)
    assert by_host and set(re.findall(r"(kd-n\d) \[\d\]", by_host.group(1))) == NODES, job_log[-3000:]
    return rows


def test_a_two_node_distillation_is_preempted_and_resumes_on_both_nodes(two_nodes, tmp_path):
    (tmp_path / "multinode.yaml").write_text(yaml.safe_dump(CONFIG))
    paths = RunPaths(str(tmp_path / "results" / RUN))
    checkpoints = Path(paths.distill_checkpoints("mnli", POINT))
    job_log_path = Path(paths.log("distill", "mnli", POINT))
    started = time.time()
    distill_inputs_here(tmp_path)

    # 1. The workflow through the profile up to the distilled model; the 2-node distill job gets
    #    Slurm's warning signal once it has saved a checkpoint.
    signalled, output, code = run_and_signal_distill(
        snakemake_cmd(tmp_path, "--retries", "0"), REPO, env(), checkpoints, f"rule_distill_wildcards_mnli_{POINT}"
    )
    assert signalled, "the distill job was never seen running with a checkpoint:\n" + output[-5000:]
    assert code != 0, output[-3000:]
    assert not Path(paths.distill_model("mnli", POINT)).exists()
    stopped_log = job_log_path.read_text()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/kdsweep-complete"))
    assert saved, "no complete checkpoint survived the signal:\n" + stopped_log[-3000:]
    stop = re.search(r"stopped by SIGUSR1; saved \S+checkpoint-(\d+); rerun to resume", stopped_log)
    assert stop and int(stop.group(1)) == max(saved) < MAX_STEPS, stopped_log[-3000:]
    step = max(saved)
    rows = check_both_nodes_trained(signalled, stopped_log, "FAILED", "10:0")
    print(f"\nsacct, the signalled job (checkpoint-{step}):\n{show(rows)}")
    # Both ranks (one per node) got the signal and wrote their ZeRO-2 partition of that same step.
    assert len(re.findall(r"received SIGUSR1: saving a checkpoint and stopping", stopped_log)) >= 2, stopped_log
    partitions = sorted(p.name for p in (checkpoints / f"checkpoint-{step}").glob("global_step*/*optim_states.pt"))
    assert len(partitions) == 2, partitions

    # 2. The plan: the distillation only.
    plan = subprocess.run(
        snakemake_cmd(tmp_path, "-n"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", (plan.stdout + plan.stderr).split("Job stats:")[1], re.M))
    assert counts == {"distill": "1", "total": "1"}, counts

    # 3. The rerun resumes from that step, on both nodes again, and finishes.
    rerun_since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    rerun = subprocess.run(snakemake_cmd(tmp_path), cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-5000:]
    job_log = job_log_path.read_text()
    assert "received SIGUSR1" not in job_log  # this is the rerun's log
    resumed = re.search(r"resuming from \S+checkpoint-(\d+) \(step (\d+)\)", job_log)
    assert resumed and int(resumed.group(1)) == int(resumed.group(2)) == step, job_log[-3000:]
    rerun_job = distill_job(rerun_since)
    rows = check_both_nodes_trained(rerun_job, job_log, "COMPLETED", "0:0")
    print(f"sacct, the rerun (resumed from step {step}):\n{show(rows)}")
    # The step counter went on from the checkpoint: the rerun's first step is the one after it
    # (not 1), and the log history holds every logged step once.
    progress = [int(m) for m in re.findall(r"train: (\d+)/\d+ steps", job_log)]
    assert progress[:1] == [step + 1] and progress[-1] == MAX_STEPS, progress
    first_progress = [int(m) for m in re.findall(r"train: (\d+)/\d+ steps", stopped_log)]
    assert first_progress[:1] == [1] and first_progress[-1] == step, first_progress
    print(f"step counter: first run 1..{first_progress[-1]}, rerun {progress[0]}..{progress[-1]}")
    steps = [h["step"] for h in read_jsonl(paths.distill_log("mnli", POINT)) if "loss" in h]
    assert steps == list(range(5, MAX_STEPS + 1, 5)), steps
    assert Path(paths.distill_model("mnli", POINT), "config.json").exists()
    print(f"2-node test: {time.time() - started:.0f} s")
