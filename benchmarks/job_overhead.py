"""Where a demo job's time goes besides its work: Snakemake's own cost per job, and the Python
start-up (imports) every kdsweep job pays, plus the per-rule times of a finished demo run.

    python benchmarks/job_overhead.py [--jobs 40] [--demo results/demo]

1. Snakemake per job: a throw-away workflow of N jobs that do nothing (`true`), run with the
   same snakemake and --cores 2 as the demo; (wall time) / N.
2. Start-up per kdsweep job: wall time of `python -m kdsweep --help` (no stage imports) and of
   importing what a training stage imports (transformers, deepspeed, the stage modules).
3. The demo run's benchmark files (Snakemake's `benchmark:` per job): seconds per rule, summed.
"""

from __future__ import annotations

import argparse
import csv
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


def timed(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kwargs)
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
    print(f"one job: {start_only:.2f} s (start-up + DAG); {jobs} jobs: {wall:.2f} s")
    print(f"per additional job: {(wall - start_only) / (jobs - 1):.3f} s")


def python_startup(repeats: int = 3) -> None:
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -m kdsweep --help": [sys.executable, "-m", "kdsweep", "--help"],
        "import a training stage": [sys.executable, "-c", "import kdsweep.translation.distill, kdsweep.glue.teacher"],
        "import the evaluation stage": [
            sys.executable,
            "-c",
            "import kdsweep.translation.evaluate, kdsweep.translation.metrics",
        ],
    }
    print(f"## Python start-up per job (median of {repeats})")
    for name, cmd in cases.items():
        print(f"{name:30s} {statistics.median(timed(cmd) for _ in range(repeats)):.2f} s")


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
    args = parser.parse_args()
    snakemake_per_job(args.jobs)
    print()
    python_startup()
    print()
    demo_rules(args.demo)


if __name__ == "__main__":
    main()
