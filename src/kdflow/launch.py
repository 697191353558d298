"""Start a training stage with one process per GPU that the (Slurm) job holds.

    python -m kdflow.launch --cpu-processes 2 -- distill --task mnli ...

- GPUs visible (CUDA_VISIBLE_DEVICES, as Slurm sets it): torchrun with one process per GPU.
- No GPU: torchrun with --cpu-processes processes; DeepSpeed's CPU accelerator with gloo.
- Several nodes (SLURM_NNODES > 1): srun starts one torchrun per node, which rendezvous at the
  first node of the allocation (c10d), so every GPU of every node gets a process.
The stage runs under torchrun even with one process, so RANK/WORLD_SIZE/MASTER_ADDR are always
set (DeepSpeed needs them).

Signals: Slurm's warning signal (--signal=USR1@<s>) or a preemption's SIGTERM may reach only this
launcher, or every process of the step. Either way the workers must get it, save a checkpoint
and exit, and this launcher must not return before they have: torchrun runs in its own process
group, the launcher forwards SIGTERM/SIGUSR1 to that group and waits until the group is empty.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

RDZV_PORT = 29500


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def head_node() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def launch_command(
    stage_args: list[str], nproc: int, nnodes: int = 1, head: str | None = None, job_id: str = "kdflow"
) -> list[str]:
    """The command that runs `python -m kdflow <stage_args>` on nnodes x nproc processes."""
    if nnodes == 1:
        torchrun = ["torchrun", "--standalone", f"--nproc-per-node={nproc}"]
        return [*torchrun, "-m", "kdflow", *stage_args]
    torchrun = [
        "torchrun",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--rdzv-id={job_id}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{RDZV_PORT}",
    ]
    return ["srun", f"--nodes={nnodes}", "--ntasks-per-node=1", *torchrun, "-m", "kdflow", *stage_args]


def launch_env(gpus: int, nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus == 0:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env["CUDA_VISIBLE_DEVICES"] = ""  # e.g. Slurm's fake GPUs on a test cluster
    threads = int(env.get("KDFLOW_THREADS", os.cpu_count() or 1))
    env["KDFLOW_THREADS"] = str(max(1, threads // nproc))
    env["OMP_NUM_THREADS"] = env["KDFLOW_THREADS"]
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kdflow.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-processes", type=int, default=2, help="processes when no GPU is visible")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="-- <kdflow stage> <its arguments>")
    args = parser.parse_args(argv)
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    if not stage_args:
        parser.error("give the stage to run after --")
    gpus = visible_gpus()
    nproc = gpus or args.cpu_processes
    nnodes = int(os.environ.get("SLURM_NNODES", "1"))
    head = head_node() if nnodes > 1 else None
    cmd = launch_command(stage_args, nproc, nnodes, head, os.environ.get("SLURM_JOB_ID", "kdflow"))
    print(
        f"kdflow.launch: {nnodes} node(s) x {nproc} process(es) ({'GPU' if gpus else 'CPU'}): {' '.join(cmd)}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(run_process_group(cmd, launch_env(gpus, nproc)))


def run_process_group(cmd: list[str], env: dict[str, str]) -> int:
    """Run cmd in a new process group; forward SIGTERM/SIGUSR1 to the group; return once every
    process of the group has exited: cmd's exit code, or 128 + signal if one was received."""
    _become_subreaper()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, forward)
    code = proc.wait()
    while _group_alive(proc.pid):  # workers orphaned by a dead torchrun may still be saving
        _reap_orphans()
        time.sleep(0.2)
    if code == 0 and received:
        code = 128 + received[0]
    return code if code >= 0 else 128 - code


def _become_subreaper() -> None:
    """Orphaned workers are re-parented to this process (not init), so it can reap them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


if __name__ == "__main__":
    main()
