"""The Slurm profile's variables (profiles/slurm/config.yaml): Discovery-like defaults that a user
overrides by exporting them, without editing the profile.

    KDSWEEP_SLURM_ACCOUNT       account (default: your default account in sacctmgr)
    KDSWEEP_PARTITION_CPU       CPU rules: prepare, tokenizer, report          (short)
    KDSWEEP_PARTITION_GPU       1-GPU rules: teacher, caching, evaluation      (gpu, 8 h max)
    KDSWEEP_PARTITION_MULTIGPU  distillation                                   (multigpu, 24 h max)
    KDSWEEP_GPU_TYPE            one of Discovery's GPU names                   (v100-sxm2)
    KDSWEEP_DISTILL_GPUS        GPUs per node for one distillation job         (2)
    KDSWEEP_DISTILL_NODES       nodes for one distillation job                 (1)

The Slurm plugin rejects hyphenated GPU models in `gpu_model`/`gres` (v100-sxm2), so the profile
asks for GPUs with `--gpus-per-node=<type>:<n>` in slurm_extra, which Slurm accepts.
"""

from __future__ import annotations

import os
import shutil
import subprocess

DISCOVERY_GPU_TYPES = (
    "v100-sxm2",
    "v100-pcie",
    "a100",
    "a5000",
    "a6000",
    "h100",
    "h200",
    "l40s",
    "p100",
    "t4",
    "k80",
    "k40m",
    "quadro",
)
PROFILE_DEFAULTS = {
    "KDSWEEP_PARTITION_CPU": "short",
    "KDSWEEP_PARTITION_GPU": "gpu",
    "KDSWEEP_PARTITION_MULTIGPU": "multigpu",
    "KDSWEEP_GPU_TYPE": "v100-sxm2",
    "KDSWEEP_DISTILL_GPUS": "2",
    "KDSWEEP_DISTILL_NODES": "1",
}


class ClusterSettingError(ValueError):
    pass


def default_account(user: str | None = None) -> str | None:
    """The user's default Slurm account, if sacctmgr knows one."""
    if not shutil.which("sacctmgr"):
        return None
    user = (
        user or os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    )
    out = subprocess.run(
        ["sacctmgr", "-nP", "show", "user", user, "format=defaultaccount"], capture_output=True, text=True, timeout=30
    )
    account = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return account or None


def uses_slurm_profile(resource_settings) -> bool:
    """Whether Snakemake runs with the Slurm profile: its default or per-rule resources
    (workflow.resource_settings) name slurm_* resources or the profile's $KDSWEEP_* variables,
    even when the command line replaced one of the two lists (--default-resources mem_mb=16000)."""
    texts = [str(arg) for arg in (getattr(resource_settings.default_resources, "args", None) or [])]
    for resources in (resource_settings.overwrite_resources or {}).values():
        texts += [f"{name}={value}" for name, value in dict(resources).items()]
    return any(t.startswith("slurm_") or "$KDSWEEP_" in t for t in texts)


def apply_profile_defaults(environ: dict[str, str] = os.environ, slurm: bool = True) -> dict[str, str]:
    """Fill in the profile variables the user did not export. With `slurm` (the run uses the
    Slurm profile) also look up the default account in sacctmgr and check the GPU settings; a
    local run asks nothing of Slurm."""
    for name, value in PROFILE_DEFAULTS.items():
        environ.setdefault(name, value)
    if not slurm:
        return {k: environ[k] for k in PROFILE_DEFAULTS}
    if "KDSWEEP_SLURM_ACCOUNT" not in environ:
        account = default_account()
        if account:
            environ["KDSWEEP_SLURM_ACCOUNT"] = account
    gpu_type = environ["KDSWEEP_GPU_TYPE"]
    if gpu_type not in DISCOVERY_GPU_TYPES:
        raise ClusterSettingError(
            f"KDSWEEP_GPU_TYPE={gpu_type!r} is not a Discovery GPU type; one of {', '.join(DISCOVERY_GPU_TYPES)}"
        )
    for name in ("KDSWEEP_DISTILL_GPUS", "KDSWEEP_DISTILL_NODES"):
        if not environ[name].isdigit() or int(environ[name]) < 1:
            raise ClusterSettingError(f"{name}={environ[name]!r} must be a positive integer")
    return {k: environ[k] for k in (*PROFILE_DEFAULTS, "KDSWEEP_SLURM_ACCOUNT") if k in environ}


def outlive_slurm_signals(environ: dict[str, str] = os.environ) -> bool:
    """Inside a Slurm job, make this Snakemake process ignore SIGUSR1 and SIGTERM.

    Slurm signals every process of a job step: its warning signal (--signal=USR1@<s>, asked for
    by the profile) and, on preemption or cancellation, SIGTERM followed by SIGKILL. The step's
    main process is the job's Snakemake; if it died at once (Python's default for SIGUSR1),
    Slurm would kill the training processes before they finish saving their checkpoint. Ignored
    signals stay ignored in the shell Snakemake starts; kdsweep's launcher and trainer install
    their own handlers (save a checkpoint, exit non-zero), and Snakemake then reports the job's
    failure. Returns whether this process is in a Slurm job.
    """
    if "SLURM_JOB_ID" not in environ:
        return False
    import signal

    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    return True
