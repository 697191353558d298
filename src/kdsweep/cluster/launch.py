"""Start a training stage with one process per GPU that the (Slurm) job holds.

    python -m kdsweep.cluster.launch --cpu-processes 2 -- distill --task mnli ...

- GPUs visible (CUDA_VISIBLE_DEVICES, as Slurm sets it): torchrun with one process per GPU.
- No GPU: torchrun with --cpu-processes processes; DeepSpeed's CPU accelerator with gloo.
- Several nodes (the Slurm job holds more than one): srun starts one torchrun per node, which
  rendezvous at the first node of the allocation (c10d), so every GPU of every node gets a
  process. The launcher itself runs in a one-task step on the first node: Snakemake's Slurm job
  runs each job's command under `srun -n1` with the job's SLURM_* variables removed, so there
  SLURM_NNODES=1, SLURM_JOB_NUM_NODES is unset and SLURM_JOB_NODELIST names the first node only
  (seen on Slurm 22.05). The launcher therefore asks slurmctld for the job's nodes (`scontrol
  show job`); the nested srun gets the job's identity but not the outer step's layout
  (SLURM_NTASKS, SLURM_NNODES, CPU binding: they would override its own), asks for the nodes and
  tasks explicitly, and shares the CPUs the outer step holds (--overlap; without it the step
  waits for the outer one forever).
The stage runs under torchrun even with one process, so RANK/WORLD_SIZE/MASTER_ADDR are always
set (DeepSpeed needs them).

Signals: Slurm's warning signal (--signal=USR1@<s>) or a preemption's SIGTERM may reach only this
launcher, or every process of the step; a terminal's Ctrl-C (SIGINT) reaches Snakemake, the job's
shell and this launcher, but not torchrun or its workers (each runs in a session of its own).
Either way the workers must get it, save a checkpoint and exit, and this launcher must not return
before they have: it forwards SIGINT (as SIGTERM, which srun passes on to every node), SIGTERM
and SIGUSR1 to every process it started (torchrun, the workers and anything under them, found
through /proc; workers orphaned by a dead torchrun are re-parented to the launcher) and returns
only once none of them is left, with 128 + the first signal received. The workers treat all
three alike (kdsweep.core.trainer.STOP_SIGNALS): the ranks agree on the stop at the end of the current
step, save one checkpoint, and exit 128 + signal. When the signal reached only a worker, torchrun
reports a failed child (exit 1); the workers also write the signal to the file named by
KDSWEEP_STOP_REPORT (set here, one per launch), so this launcher still returns the preemption
code, 128 + signal (sacct shows 138 as the training step's ExitCode 10:0). torchrun itself stops
its workers on SIGINT/SIGTERM and kills them after its shutdown timeout
(TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default); SIGUSR1, which it does not handle, kills it at
once, and its workers save on as orphans under this launcher.
On several nodes srun's task on each node is not torchrun itself but this launcher again
(--node-agent: it only runs the given command under run_process_group). A task that died of
SIGUSR1 would end the node's step, and Slurm would kill what is left of it (with
proctrack/cgroup, as on most clusters: the workers mid-checkpoint); the node agent forwards the
signals and outlives the node's workers instead, exactly as the launcher does on one node. Each
node agent returns its workers' preemption code, and srun the largest of them.
Escalation, after Ctrl-C only (Slurm bounds the others itself): a second SIGINT, or the job still
running STOP_GRACE_S seconds (KDSWEEP_STOP_GRACE) after the first, kills every process of the job
with SIGKILL; the newest complete checkpoint stays, one killed mid-write is never resumed. On
several nodes that kills this node's srun client only; the other nodes' agents are Slurm's
children, and Slurm ends the step (a job's end, or `scancel <job>`).
A job that finishes (exit 0) returns 0 even if a signal came after its last training step.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RDZV_PORT = 29500
STOP_REPORT = "KDSWEEP_STOP_REPORT"  # the file a worker that stopped on a signal writes it to
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
STOP_GRACE_S = 60.0  # after a Ctrl-C (SIGINT), before the job is killed


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# Kept for the nested srun: which job it belongs to, and how to reach slurmctld; per task, the
# CPUs the job asked for (each node's torchrun and its workers share them).
SRUN_ENV_KEPT = {
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_CLUSTER_NAME",
    "SLURM_CONF",
    "SLURM_SUBMIT_DIR",
    "SLURM_SUBMIT_HOST",
    "SLURM_CPUS_PER_TASK",
}


def hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def job_nodelist(scontrol_show_job: str) -> str | None:
    """The allocated NodeList in `scontrol show job -o` output (not ReqNodeList/ExcNodeList)."""
    found = re.search(r"(?:^|\s)NodeList=(\S+)", scontrol_show_job)
    return found.group(1) if found and found.group(1) != "(null)" else None


def job_nodes(environ: dict[str, str] = os.environ) -> list[str]:
    """The nodes the Slurm job holds, the first one first; [] outside Slurm. Asks slurmctld (the
    current step's variables may describe a one-node step); falls back to the variables."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return []
    try:
        shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True)
        nodelist = job_nodelist(shown.stdout) if shown.returncode == 0 else None
        if nodelist:
            return hostnames(nodelist)
        why = shown.stderr.strip() or f"no NodeList for job {job}"
    except (OSError, subprocess.CalledProcessError) as error:  # no scontrol here (a container?)
        why = str(error)
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    print(
        f"kdsweep.cluster.launch: could not ask slurmctld for the nodes of job {job} ({why}); using SLURM_JOB_NODELIST="
        f"{nodelist!r}, which inside a one-node step names one node only",
        file=sys.stderr,
    )
    try:
        return hostnames(nodelist) if nodelist else []
    except (OSError, subprocess.CalledProcessError):
        return [nodelist] if "," not in nodelist and "[" not in nodelist else []


def srun_env(env: dict[str, str]) -> dict[str, str]:
    """env without the SLURM_*/SRUN_* variables of the step the launcher runs in (the job's identity
    stays): srun reads them as options, and the outer one-task step's would override the nested
    step's nodes, tasks and CPU binding."""
    return {k: v for k, v in env.items() if not (k.startswith(("SLURM_", "SRUN_")) and k not in SRUN_ENV_KEPT)}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # what the torchrun script runs


def launch_command(
    stage_args: list[str],
    nproc: int,
    nnodes: int = 1,
    head: str | None = None,
    job_id: str = "kdsweep",
    cpus_per_task: str | None = None,
) -> list[str]:
    """The command that runs `python -m kdsweep <stage_args>` on nnodes x nproc processes.

    Several nodes: srun gets the job's CPUs per task on its command line (since Slurm 22.05 srun
    does not take them from SLURM_CPUS_PER_TASK, and a step's task would get one CPU), and is
    told not to kill the other nodes' tasks when one node's ends first (--kill-on-bad-exit=0,
    --wait=0, whatever slurm.conf says): after a preemption each node's workers finish writing
    their part of the checkpoint.

    torchrun is run as `python -m torch.distributed.run` with this interpreter (the one that runs
    Snakemake), so a venv that was never activated (no torchrun on PATH) still works."""
    if nnodes == 1:
        torchrun = [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}"]
        return [*torchrun, "-m", "kdsweep", *stage_args]
    torchrun = [
        *TORCHRUN,
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--rdzv-id={job_id}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{RDZV_PORT}",
    ]
    srun = ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1"]
    srun += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    srun += ["--kill-on-bad-exit=0", "--wait=0"]
    node_agent = [sys.executable, "-m", "kdsweep.cluster.launch", "--node-agent", "--"]
    return [*srun, *node_agent, *torchrun, "-m", "kdsweep", *stage_args]


def launch_env(gpus: int, nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus == 0:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env["CUDA_VISIBLE_DEVICES"] = ""  # e.g. Slurm's fake GPUs on a test cluster
    threads = int(env.get("KDSWEEP_THREADS", os.cpu_count() or 1))
    env["KDSWEEP_THREADS"] = str(max(1, threads // nproc))
    env["OMP_NUM_THREADS"] = env["KDSWEEP_THREADS"]
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kdsweep.cluster.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cpu-processes", type=int, default=2, help="processes when no GPU is visible")
    parser.add_argument(
        "--node-agent", action="store_true", help="run the command after -- as srun's task on one node (internal)"
    )
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="-- <kdsweep stage> <its arguments>")
    args = parser.parse_args(argv)
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    if not stage_args:
        parser.error("give the stage to run after --")
    if args.node_agent:  # one node's torchrun, started by the launcher's srun
        sys.exit(run_process_group(stage_args, dict(os.environ)))
    gpus = visible_gpus()
    nproc = gpus or args.cpu_processes
    nodes = job_nodes()
    nnodes = max(1, len(nodes))
    head = nodes[0] if nnodes > 1 else None
    job_id, cpus = os.environ.get("SLURM_JOB_ID", "kdsweep"), os.environ.get("SLURM_CPUS_PER_TASK")
    cmd = launch_command(stage_args, nproc, nnodes, head, job_id, cpus)
    env = launch_env(gpus, nproc)
    print(
        f"kdsweep.cluster.launch: {nnodes} node(s) x {nproc} process(es) ({'GPU' if gpus else 'CPU'}): {' '.join(cmd)}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(run_process_group(cmd, srun_env(env) if nnodes > 1 else env))


def run_process_group(cmd: list[str], env: dict[str, str], grace: float | None = None) -> int:
    """Run cmd in a new session; forward SIGINT/SIGTERM/SIGUSR1 to every process of the job (cmd
    and its descendants); return once none is left: cmd's exit code, or 128 + the first signal
    received (by this process, or by a worker that reported it: report_stop). After a SIGINT the job gets `grace` seconds (default STOP_GRACE_S) to stop; a second
    SIGINT, or the grace running out, kills it."""
    grace = float(os.environ.get("KDSWEEP_STOP_GRACE", STOP_GRACE_S)) if grace is None else grace
    with tempfile.TemporaryDirectory(prefix="kdsweep-launch-") as folder:
        report = Path(folder) / "stopped"
        code = _run(cmd, {**env, STOP_REPORT: str(report)}, grace)
        stopped = report.read_text().strip() if report.is_file() else ""
    if code != 0 and code < 128 and stopped.isdigit():  # a worker's signal, not the launcher's
        return 128 + int(stopped)
    return code


def report_stop(signum: int) -> None:
    """Called by a worker that saved a checkpoint on a signal and is about to exit: tell the
    process that started it (run_process_group: the launcher, or on several nodes that node's
    agent, each with a report file of its own) which signal stopped the job."""
    path = os.environ.get(STOP_REPORT)
    if path:
        try:
            Path(path).write_text(f"{signum}\n")
        except OSError:
            pass


def _run(cmd: list[str], env: dict[str, str], grace: float) -> int:
    _become_subreaper()
    me = os.getpid()
    others = set(_process_table()["children"].get(me, ()))  # not the job's (a caller's own children)
    received: list[int] = []
    deadline: list[float] = []

    started: list[int] = []

    def job() -> list[int]:
        return _job_processes(me, others, started)

    def forward(signum, frame):
        repeated = signum == signal.SIGINT and signal.SIGINT in received
        received.append(signum)
        if signum == signal.SIGINT and not deadline:
            deadline.append(time.monotonic() + grace)
        _signal_all(job(), signal.SIGKILL if repeated else _forwarded(signum))

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        started.append(proc.pid)
        if received:  # a signal came before the job existed
            _signal_all(job(), _forwarded(received[-1]))
        while True:  # workers orphaned by a dead torchrun may still be saving
            code = proc.poll()
            if code is not None and not job():
                break
            if deadline and time.monotonic() > deadline[0]:
                deadline.clear()
                _signal_all(job(), signal.SIGKILL)
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == 0:  # finished: a signal that came after the last training step changed nothing
        return 0
    if received:
        return 128 + received[0]
    return code if code >= 0 else 128 - code


def _forwarded(signum: int) -> int:
    """What the job gets for a signal: SIGINT becomes SIGTERM. torchrun and the workers treat both
    alike, but srun (several nodes) only prints the step's status on a single SIGINT, while it
    passes SIGTERM on to every node's torchrun."""
    return signal.SIGTERM if signum == signal.SIGINT else signum


def _process_table() -> dict:
    """{"children": {ppid: [pid, ...]}, "zombies": {pid, ...}} of every process in /proc."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid, state, ppid = int(entry.name), fields[0], int(fields[1])
        children.setdefault(ppid, []).append(pid)
        if state in (b"Z", b"X"):
            zombies.add(pid)
    return {"children": children, "zombies": zombies}


def _job_processes(me: int, others: set[int], popen: list[int]) -> list[int]:
    """The living processes of the job: this process's children other than `others` and all
    their descendants. Reaps the job's zombies that are this process's children, except those in
    `popen` (their Popen reaps them)."""
    table = _process_table()
    children, zombies = table["children"], table["zombies"]
    stack = [pid for pid in children.get(me, ()) if pid not in others]
    alive = []
    while stack:
        pid = stack.pop()
        stack += children.get(pid, ())
        if pid not in zombies:
            alive.append(pid)
    for pid in children.get(me, ()):
        if pid in zombies and pid not in others and pid not in popen:
            try:
                os.waitpid(pid, os.WNOHANG)  # an orphan re-parented here (Popen reaps cmd itself)
            except ChildProcessError:
                pass
    return alive


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _become_subreaper() -> None:
    """Orphaned workers are re-parented to this process (not init), so it can reap them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()
