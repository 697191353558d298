"""Where a demo job's time goes besides its work: Snakemake's own cost per job, and the Python
start-up (imports) every kdsweep job pays, plus the per-rule times of a finished demo run.

    python benchmarks/job_overhead.py [--jobs 40] [--demo results/demo]
    python benchmarks/job_overhead.py --startup-only [--stages report distill] [--repeats 3]

1. Snakemake per job: a throw-away workflow of N jobs that do nothing (`true`), run with the
   same snakemake and --cores 2 as the demo; (wall time) / N.
2. Start-up per kdsweep job, per stage: the wall and CPU time (medians of 3; the CPU time, user +
   system, is less disturbed by other load on the machine) of the stage's own command,
   `python -m kdsweep <stage> --<path> ... --spec '{"__startup_probe__": 1}'`, run as its rule
   runs it (KDSWEEP_THREADS set where the rule sets it). The stage imports what it imports, then
   fails reading its settings (an unknown key; `report` and `prefetch` on a missing one), before
   any work: what every job of that stage pays before it starts working. Imports that the work
   itself reaches later (function-level ones) are not in it; for train-tokenizer, whose work
   imports transformers' tokenizer classes, the whole job is timed too. Beside it, the heaviest
   packages by `python -X importtime` (self time summed per top-level package; importtime
   inflates times).
   Also `python -c pass`, `python -m kdsweep --help`, and what a distillation job pays before its
   workers start (the launcher, kdsweep.cluster.launch, and torchrun).
3. The demo run's benchmark files (Snakemake's `benchmark:` per job): seconds per rule, summed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

NOOP_SNAKEFILE = """
rule all:
    input: expand("done/{{i}}.txt", i=range({jobs}))

rule noop:
    output: "done/{{i}}.txt"
    shell: "touch {{output}}"
"""


def timed(cmd: list[str], check: bool = True, **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=check, capture_output=True, **kwargs)
    return time.perf_counter() - start


def snakemake_per_job(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Snakefile").write_text(NOOP_SNAKEFILE.format(jobs=jobs))
        base = [sys.executable, "-m", "snakemake", "--cores", "2"]
        version = timed([sys.executable, "-m", "snakemake", "--version"])
        one = Path(tmp, "one")
        one.mkdir()
        Path(one, "Snakefile").write_text(NOOP_SNAKEFILE.format(jobs=1))
        start_only = timed(base, cwd=one)
        wall = timed(base, cwd=tmp)
    print(f"## Snakemake: {jobs} no-op jobs, --cores 2")
    print(f"snakemake --version: {version:.2f} s (imports, incl. the executor plugins)")
    if shutil.which("scontrol"):  # snakemake-executor-plugin-slurm runs it when imported (README)
        print(f"  of which `scontrol show config`: {timed(['scontrol', 'show', 'config'], check=False):.2f} s")
    print(f"one job: {start_only:.2f} s (start-up + DAG); {jobs} jobs: {wall:.2f} s")
    print(f"per additional job: {(wall - start_only) / (jobs - 1):.3f} s")


# The stages whose rules set KDSWEEP_THREADS (workflow/rules/*.smk): their jobs set torch's
# thread count before the stage's imports (kdsweep.cli._threads imports torch).
THREADED = {
    "finetune-teacher",
    "cache-teacher",
    "distill",
    "evaluate",
    "train-teacher-lm",
    "cache-teacher-lm",
    "distill-lm",
    "evaluate-translation",
}
HEAVY = ("torch", "transformers", "deepspeed", "sklearn", "pandas", "matplotlib", "datasets")
PROBE_SPEC = '{"__startup_probe__": 1}'


def stage_command(stage: str, folder: Path) -> list[str]:
    """The stage's job command with its required paths (all under `folder`, none existing) and a
    --spec that it refuses before doing any work."""
    from kdsweep.cli import COMMANDS

    cmd = [sys.executable, "-m", "kdsweep", stage]
    for arg in COMMANDS[stage][1]:
        if not arg.endswith("?"):
            cmd += ["--" + arg.replace("_", "-"), str(folder / arg)]
    return [*cmd, "--spec", PROBE_SPEC]


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(cmd: list[str], env: dict, cwd: Path, probe: bool = True) -> tuple[float, float, str]:
    """Wall and CPU time of the command and its stderr. A probe must stop at its settings (exit 1
    naming the probe key or a missing one); a real job must succeed."""
    cpu, start = cpu_seconds(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stopped = done.returncode == 1 and ("__startup_probe__" in done.stderr or "KeyError" in done.stderr)
    if (probe and not stopped) or (not probe and done.returncode != 0):
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}, not as expected:\n{done.stderr[-3000:]}")
    return wall, cpu, done.stderr


def medians(runs: list[tuple[float, float, str]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def imported(importtime_stderr: str) -> dict[str, float]:
    """Every module a `python -X importtime` run imported, with its self import time (s)."""
    modules = {}
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            modules[name] = int(self_us) / 1e6
    return modules


def heaviest(modules: dict[str, float], n: int = 4) -> list[tuple[str, float]]:
    """Top-level packages by summed self import time (s)."""
    per_package: dict[str, float] = defaultdict(float)
    for name, secs in modules.items():
        per_package[name.split(".")[0]] += secs
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:n]


def python_startup(repeats: int = 3, stages: list[str] | None = None) -> None:
    from kdsweep.cli import COMMANDS

    print(f"## Python start-up per job (median of {repeats})")
    baseline = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -m kdsweep --help": [sys.executable, "-m", "kdsweep", "--help"],
        "launcher (visible_gpus)": [
            sys.executable,
            "-c",
            "from kdsweep.cluster.launch import visible_gpus; visible_gpus()",
        ],
        "torchrun --help": [sys.executable, "-m", "torch.distributed.run", "--help"],
    }
    for name, cmd in baseline.items():
        print(f"{name:26s} {statistics.median(timed(cmd) for _ in range(repeats)):5.2f} s")
    print()
    print("| stage | wall s | CPU s | heavy packages loaded | heaviest imports (self time s, -X importtime) |")
    print("|---|--:|--:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages or list(COMMANDS):
            env = dict(os.environ)
            env.pop("KDSWEEP_THREADS", None)
            if stage in THREADED:
                env["KDSWEEP_THREADS"] = "2"
            cmd = stage_command(stage, Path(tmp, "missing"))
            wall, cpu = medians([run_job(cmd, env, Path(tmp)) for _ in range(repeats)])
            modules = imported(run_job([cmd[0], "-X", "importtime", *cmd[1:]], env, Path(tmp))[2])
            loaded = [m for m in HEAVY if m in modules]
            top = ", ".join(f"{name} {secs:.2f}" for name, secs in heaviest(modules))
            print(f"| {stage} | {wall:.2f} | {cpu:.2f} | {' '.join(loaded) or '-'} | {top} |", flush=True)
        tokenizer_jobs(repeats, Path(tmp))


def tokenizer_jobs(repeats: int, tmp: Path) -> None:
    """train-tokenizer's work imports transformers' fast tokenizer classes: the whole job, on 200
    pairs (the work itself takes a few hundredths of a second)."""
    train = tmp / "train.jsonl"
    rows = [
        {"text_a": f"the cat {i}", "text_b": "sat", "source": f"a dog {i}", "target": "un chien"} for i in range(200)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_THREADS"}
    for kind in ("wordpiece", "bpe"):
        cmd = [sys.executable, "-m", "kdsweep", "train-tokenizer", "--train", str(train), "--out", str(tmp / kind)]
        cmd += ["--spec", json.dumps({"vocab_size": 500, "kind": kind})]
        wall, cpu = medians([run_job(cmd, env, tmp, probe=False) for _ in range(repeats)])
        modules = imported(run_job([cmd[0], "-X", "importtime", *cmd[1:]], env, tmp, probe=False)[2])
        loaded = " ".join(m for m in HEAVY if m in modules)
        print(f"| train-tokenizer {kind}, whole job | {wall:.2f} | {cpu:.2f} | {loaded} | |", flush=True)


def demo_rules(demo: Path) -> None:
    per_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in (demo / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(demo / "benchmarks").parts[0].removesuffix(".tsv")
        with open(tsv) as f:
            per_rule[rule].append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    if not per_rule:
        print(f"(no benchmark files under {demo}: run `make demo` first)")
        return
    total = sum(sum(v) for v in per_rule.values())
    jobs = sum(len(v) for v in per_rule.values())
    print(f"## Demo run {demo}: {jobs} jobs, {total:.0f} s of job time (2 jobs share 2 cores)")
    for rule, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:24s} {len(secs):3d} jobs  {sum(secs):7.1f} s  ({sum(secs) / len(secs):.1f} s/job)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--demo", type=Path, default=Path("results/demo"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", nargs="*", help="only these stages' start-up (default: every stage)")
    parser.add_argument("--startup-only", action="store_true", help="only the Python start-up per stage")
    args = parser.parse_args()
    if args.startup_only:
        python_startup(args.repeats, args.stages)
        return
    snakemake_per_job(args.jobs)
    print()
    python_startup(args.repeats, args.stages)
    print()
    demo_rules(args.demo)


if __name__ == "__main__":
    main()
