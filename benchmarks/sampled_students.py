"""Student quality from a sampled teacher cache against top-k and dense ones, on the demo's
translation task: the same distillation and evaluation from four caches, side by side in one run.

    make demo                                   # the teacher, data and base student of results/demo
    HF_HUB_OFFLINE=1 python benchmarks/sampled_students.py [--out /tmp/sampled_students]
        [--seeds 0 1 2] [--methods dense top16 top64 sampled12] [--timing-builds 3]
        [--config config/demo.yaml] [--temperature 1]

Caches (translation.teacher.cache, on the train split of the demo's prepared data): dense KD
(method topk with top_k = the teacher's vocabulary, 1000: every token), top-16 (the demo's own),
top-64, and sampled-12 (method sampled, 12 draws at the distillation temperature, the cache's
seed = the run's seed). Each method's config (config/demo.yaml with its cache block and the one
sweep point) goes through kdsweep.families.validate_config, and each stage gets the settings its
Snakemake rule (workflow/rules/translation.smk) builds from that config:

- cache: kdsweep.translation.teacher.cache_teacher_lm with the rule's spec, called in this process
  (what `kdsweep cache-teacher-lm` runs, on 2 threads as the rule's KDSWEEP_THREADS) and timed:
  loading the teacher, computing and writing the shards, the manifest's summary. Another job on
  the machine can slow one build many times over, so after the students each cache is built again
  into a scratch store, round-robin, up to --timing-builds builds, and the table shows the
  fastest. A top-k cache does not depend on the seed: one for all seeds; a sampled cache is built
  per seed (its time: the mean over the seeds). Bytes/token: the manifest's bytes_per_token.
- distill: `kdsweep distill-lm` under kdsweep.cluster.launch with the demo's `distributed` block
  (one CPU process, DeepSpeed ZeRO-2), at the demo's best point (learning rate 3e-3, alpha 0.5,
  temperature 1) and its training block (2 epochs, batch 32, ...) with training.seed = the seed.
- evaluate: `kdsweep evaluate-translation` on the test split with the demo's evaluate settings
  (greedy, max_new_tokens 48); COMET off.

--temperature T (default 1) distills at T instead: the point's temperature is T, a sampled cache
is drawn at T (translation.teacher.cache.temperature: the config refuses any other), and a top-k
or dense cache, which holds the teacher at T = 1 whatever T, is tempered by the loss, which the
config allows only with translation.distill.allow_tempered_topk: true (set for them at T != 1;
dense, k = V, is exact at any T, top-k is not). At T != 1 the caches and students are named with
the temperature (top64_T2_seed0) and --out defaults to /tmp/sampled_students_T<T>, so a T = 1
run's outputs are neither overwritten nor reused.

The table: bytes/token, mean cache build time, and BLEU and chrF as mean +- sample sd over the
seeds (each seed's BLEU in brackets); under it the teacher's, the base student's and the demo's
own top-16 student's (training seed 42, T 1) BLEU and chrF, read from results/demo/eval.
Everything is written under --out; a rerun skips every cache, student and evaluation already
there (a killed distillation resumes from its checkpoints).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2  # the rules' `threads: 2` (KDSWEEP_THREADS)
POINT = {"learning_rate": 3e-3, "alpha": 0.5, "temperature": 1.0}  # the demo's best point
# method name -> translation.teacher.cache settings; top_k None: the teacher's vocabulary (dense).
# A sampled cache draws at the distillation temperature (--temperature), set in method_config.
METHODS = {
    "dense": {"method": "topk", "top_k": None},
    "top16": {"method": "topk", "top_k": 16},
    "top64": {"method": "topk", "top_k": 64},
    "sampled12": {"method": "sampled", "draws": 12},
}


def point_at(temperature: float) -> dict:
    """The demo's best point at the distillation temperature."""
    return {**POINT, "temperature": float(temperature)}


def method_config(raw: dict, method: str, seed: int, vocab: int, temperature: float = 1.0) -> dict:
    """config/demo.yaml with the method's cache block, the one point at `temperature` and the
    training seed, validated (defaults filled in, the translation family's checks) as a run of it
    would be. A sampled cache draws at `temperature`; a top-k one holds the teacher at 1 and is
    tempered by the loss, allowed at T != 1 by allow_tempered_topk."""
    from kdsweep.families import validate_config

    config = copy.deepcopy(raw)
    config.pop("glue", None)
    tr = config["translation"]
    cache = dict(METHODS[method])
    if cache.get("top_k", 0) is None:
        cache["top_k"] = vocab
    if cache["method"] == "sampled":
        cache["seed"] = seed
        cache["temperature"] = float(temperature)
    elif temperature != 1:
        tr["distill"]["allow_tempered_topk"] = True
    tr["teacher"]["cache"] = {**tr["teacher"]["cache"], **cache}
    tr["distill"]["sweep"] = {axis: [value] for axis, value in point_at(temperature).items()}
    tr["distill"]["training"] = {**tr["distill"]["training"], "seed": seed}
    tr["evaluate"]["comet"] = {**tr["evaluate"].get("comet", {}), "enabled": False}
    return validate_config(config)


def run_name(method: str, temperature: float) -> str:
    """The method's name in file names: with the temperature at T != 1 (top64_T2)."""
    return method if temperature == 1 else f"{method}_T{temperature:g}"


def cache_name(method: str, seed: int, temperature: float = 1.0) -> str:
    """A top-k cache is one for all seeds; a sampled cache is drawn per seed."""
    name = run_name(method, temperature)
    return f"{name}_seed{seed}" if METHODS[method]["method"] == "sampled" else name


class Demo:
    """The finished demo run's inputs, as the rules name them (kdsweep.core.plan, RunPaths)."""

    def __init__(self, config: dict):
        from kdsweep.core import plan
        from kdsweep.core.config import run_root, translation_task
        from kdsweep.core.paths import RunPaths

        tr, self.task = config["translation"], translation_task(config)
        self.paths = RunPaths(run_root(config))
        self.data = self.paths.data_dir(self.task)
        self.teacher = plan.teacher_model(tr, self.task, self.paths)
        self.teacher_tokenizer = plan.teacher_tokenizer(tr, self.task, self.paths)
        self.student = plan.base_student(tr, self.task, self.paths)
        missing = [p for p in (self.data, self.teacher, self.teacher_tokenizer, self.student) if not Path(p).exists()]
        if missing:
            raise SystemExit(f"{', '.join(missing)}: missing; run `make demo` first")

    def vocab_size(self) -> int:
        return json.loads((Path(self.teacher) / "config.json").read_text())["vocab_size"]

    def eval_json(self, name: str) -> dict | None:
        path = Path(self.paths.eval_json(self.task, name))
        return json.loads(path.read_text()) if path.is_file() else None


def timed_build(demo: Demo, tr: dict, store: Path, pointer: Path, log: Path) -> tuple[float, bool]:
    """cache_teacher_lm with the rule's spec (as `kdsweep cache-teacher-lm` runs it, its log to
    `log`): (wall seconds, whether the store already held the entry)."""
    import torch

    from kdsweep.core.spec import from_json
    from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_lm

    spec = {"prompt": tr["prompt"], "cache": tr["teacher"]["cache"], "max_length": tr["max_length"]}
    spec["packing"] = tr["packing"]
    pointer.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("kdsweep").info("kdsweep cache-teacher-lm %s", json.dumps(spec, sort_keys=True))
    torch.set_num_threads(THREADS)
    try:
        start = time.perf_counter()
        settings = from_json(CacheTeacherLMSpec, spec, "kdsweep cache-teacher-lm --spec")
        cache_teacher_lm(demo.teacher, demo.teacher_tokenizer, demo.data, store, pointer, settings)
        seconds = time.perf_counter() - start
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return seconds, json.loads(pointer.read_text())["reused"]


def build_cache(demo: Demo, tr: dict, out: Path, name: str) -> dict:
    """The cache's pointer, build times and manifest; built (and timed) unless already there."""
    from kdsweep.core.cache import open_pointer

    pointer, record = out / "cache" / f"{name}.json", out / "cache" / f"{name}.timing.json"
    if not (pointer.is_file() and record.is_file()):
        print(f"cache {name}: building", flush=True)
        commit = source_commit()
        seconds, reused = timed_build(demo, tr, out / "cache" / "store", pointer, out / "logs" / f"cache_{name}.log")
        builds = [] if reused else [seconds]  # a reused entry was not built: no time
        record.write_text(json.dumps({"builds": builds, "reused": reused, "commit": commit}))
        print(f"cache {name}: {seconds:.1f} s{' (reused, not built)' if reused else ''}", flush=True)
    manifest = open_pointer(pointer, Path(demo.data) / "train.jsonl").manifest()
    return {"pointer": pointer, "tr": tr, "record": record, "manifest": manifest}


def read_record(path: Path) -> dict:
    """A cache's timing record: {"builds": [seconds of each timed build], "reused", "commit"}."""
    record = json.loads(path.read_text())
    if "builds" not in record:  # written by an earlier version of this script: one build
        record["builds"] = [] if record["reused"] else [record["seconds"]]
    return record


def retime(demo: Demo, caches: dict[str, dict], out: Path, builds: int) -> None:
    """Build every cache again, into a scratch store deleted after each build, round-robin, until
    each has `builds` timed builds: another job on the machine slows one build many times over,
    the fastest of a few is what the build costs (resumes: the times are kept in the records)."""
    scratch = out / "timing"
    for _ in range(builds):
        for name, cache in caches.items():
            record = read_record(cache["record"])
            if len(record["builds"]) >= builds:
                continue
            shutil.rmtree(scratch, ignore_errors=True)
            log = out / "logs" / f"cache_{name}_timing.log"
            seconds, _ = timed_build(demo, cache["tr"], scratch / "store", scratch / "pointer.json", log)
            shutil.rmtree(scratch, ignore_errors=True)
            record["builds"].append(seconds)
            cache["record"].write_text(json.dumps(record))
            print(f"cache {name}: timing build {len(record['builds'])}/{builds}: {seconds:.1f} s", flush=True)


def source_commit() -> str:
    """The repository's commit, "-dirty" with uncommitted changes (what built a cache: a sampled
    cache's key does not say which version of the draw code drew it)."""
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=10"]
    return subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown"


def run_stage(argv: list[str], log: Path, what: str) -> None:
    """A kdsweep command as a rule runs it (KDSWEEP_THREADS, output to its log), from the
    repository root; a failure stops the benchmark with the log's tail."""
    env = {**os.environ, "KDSWEEP_THREADS": str(THREADS)}
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{what} failed (exit {rc}), log {log}:\n{tail}")
    print(f"{what}: {time.perf_counter() - start:.1f} s", flush=True)


def distill(demo: Demo, tr: dict, cache: Path, out: Path, name: str) -> Path:
    """One student at the point, as rule distill_lm trains it; skipped when its model exists."""
    from kdsweep.core.config import sweep_points

    run = out / "distill" / name
    model = run / "model"
    if model.is_dir():
        return model
    run.mkdir(parents=True, exist_ok=True)
    dist = tr["distill"]["distributed"]
    deepspeed = []
    if dist["deepspeed_config"]:
        deepspeed = ["--deepspeed", dist["deepspeed_config"]]
    elif dist["deepspeed"] != "none":
        deepspeed = ["--deepspeed", str(ROOT / "workflow" / "deepspeed" / f"{dist['deepspeed']}.json")]
    (point,) = sweep_points(tr["distill"]).values()  # the rule's TR_POINTS[point]
    spec = {
        "point": point,
        "distill": {k: v for k, v in tr["distill"].items() if k != "sweep"},
        "prompt": tr["prompt"],
        "max_length": tr["max_length"],
        "packing": tr["packing"],
        "eval_batch_size": tr["evaluate"]["batch_size"],
    }
    launch = [sys.executable, "-m", "kdsweep.cluster.launch", "--cpu-processes", str(dist["cpu_processes"]), "--"]
    argv = [
        *launch,
        "distill-lm",
        *deepspeed,
        *("--student", demo.student, "--teacher-tokenizer", demo.teacher_tokenizer, "--data-dir", demo.data),
        *("--cache", str(cache), "--model-out", str(model), "--log-out", str(run / "log.jsonl")),
        *("--checkpoints", str(run / "checkpoints"), "--spec", json.dumps(spec)),
    ]
    run_stage(argv, out / "logs" / f"distill_{name}.log", f"distill {name}")
    return model


def evaluate(demo: Demo, tr: dict, model: Path, out: Path, name: str) -> dict:
    """BLEU and chrF on the test split, as rule evaluate_translation scores a sweep point."""
    from kdsweep.core.config import sweep_points

    metrics = out / "eval" / f"{name}.json"
    if not metrics.is_file():
        metrics.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "prompt": tr["prompt"],
            "max_length": tr["max_length"],
            "evaluate": {k: v for k, v in tr["evaluate"].items() if k not in ("samples", "comet")},
            "params": next(iter(sweep_points(tr["distill"]).values())),
        }
        argv = [sys.executable, "-m", "kdsweep", "evaluate-translation", "--model", str(model)]
        argv += ["--data-dir", demo.data, "--out", str(metrics)]
        argv += ["--translations", str(out / "eval" / f"{name}.translations.jsonl"), "--name", name]
        argv += ["--spec", json.dumps(spec)]
        run_stage(argv, out / "logs" / f"evaluate_{name}.log", f"evaluate {name}")
    return json.loads(metrics.read_text())


def mean_sd(values: list[float]) -> str:
    """Mean ± sample sd (one value: no sd)."""
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{sd}"


def method_label(method: str, vocab: int, temperature: float = 1.0) -> str:
    cache = METHODS[method]
    if cache["method"] == "sampled":
        return f"sampled-{cache['draws']} (T {temperature:g})"
    return f"dense (top-{vocab})" if cache["top_k"] is None else f"top-{cache['top_k']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default /tmp/sampled_students at T 1, /tmp/sampled_students_T<T> otherwise)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--config", default="config/demo.yaml")
    parser.add_argument(
        "--timing-builds",
        type=int,
        default=3,
        help="timed builds of each cache, the first included; the table shows the fastest (default 3)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="distillation temperature; a sampled cache is drawn at it, top-k/dense caches are tempered by "
        "the loss (allow_tempered_topk at T != 1) (default 1)",
    )
    args = parser.parse_args()
    temperature = args.temperature
    if temperature <= 0:
        parser.error(f"--temperature {temperature:g}: must be positive")
    if args.out is None:
        args.out = Path("/tmp/sampled_students" if temperature == 1 else f"/tmp/sampled_students_T{temperature:g}")
    point = point_at(temperature)
    os.chdir(ROOT)  # the config's results_dir and the demo's paths are relative to the repository
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kdsweep").setLevel(logging.INFO)
    logging.getLogger("kdsweep").propagate = True

    from kdsweep.core.config import read_config_file
    from kdsweep.families import validate_config

    raw = read_config_file(args.config)
    demo = Demo(validate_config(copy.deepcopy(raw)))
    vocab = demo.vocab_size()
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # Console: this script's lines only; each cache build's kdsweep log goes to its file.
    for h in logging.getLogger().handlers:
        h.setLevel(logging.WARNING)

    results: dict[str, dict] = {}
    for method in args.methods:
        res = results[method] = {"caches": {}, "bleu": [], "chrf": [], "runaway": []}
        for seed in args.seeds:
            tr = method_config(raw, method, seed, vocab, temperature)["translation"]
            name = cache_name(method, seed, temperature)
            if name not in res["caches"]:
                res["caches"][name] = build_cache(demo, tr, out, name)
            cache = res["caches"][name]
            student = f"{run_name(method, temperature)}_seed{seed}"
            metrics = evaluate(demo, tr, distill(demo, tr, cache["pointer"], out, student), out, student)
            res["bleu"].append(metrics["bleu"])
            res["chrf"].append(metrics["chrf"])
            res["runaway"].append(metrics["stop_rates"]["max_new_tokens"])
            print(f"{student}: BLEU {metrics['bleu']:.2f} chrF {metrics['chrf']:.2f}", flush=True)

    retime(demo, {name: c for res in results.values() for name, c in res["caches"].items()}, out, args.timing_builds)

    print()
    records = [read_record(c["record"]) for res in results.values() for c in res["caches"].values()]
    commits = ", ".join(sorted({r.get("commit", "unknown") for r in records}))
    print(f"kdsweep {source_commit()}; caches built at {commits}.")
    seeds = ", ".join(map(str, args.seeds))
    print(
        f"Students distilled at lr {point['learning_rate']:g}, alpha {point['alpha']:g}, T {point['temperature']:g} "
        f"(the demo's training block), seeds {seeds}; test split, greedy, max_new_tokens 48. BLEU and chrF: "
        "mean ± sample sd over the seeds, [each seed's BLEU]. Cache build s: each cache's fastest of "
        f"{args.timing_builds} build(s) (2 threads; teacher load, shards, manifest), a sampled cache's averaged over "
        "the seeds (one cache each); a top-k cache is one for all seeds."
    )
    if temperature != 1:
        print(
            f"At T {temperature:g} the sampled caches are drawn at T {temperature:g}; the top-k and dense caches hold "
            "the teacher at T 1 and are tempered by the loss (allow_tempered_topk; exact for dense, k = V)."
        )
    print()
    print("| method | bytes/token | cache build s (mean) | BLEU mean ± sd [per seed] | chrF mean ± sd |")
    print("|---|--:|--:|--:|--:|")
    for method, res in results.items():
        caches = list(res["caches"].values())
        bpt = {c["manifest"]["bytes_per_token"] for c in caches}
        fastest = [min(read_record(c["record"])["builds"], default=float("nan")) for c in caches]
        build = f"{statistics.mean(fastest):.1f}"
        per_seed = ", ".join(f"{b:.2f}" for b in res["bleu"])
        print(
            f"| {method_label(method, vocab, temperature)} | {'/'.join(map(str, sorted(bpt)))} | {build} | "
            f"{mean_sd(res['bleu'])} [{per_seed}] | {mean_sd(res['chrf'])} |"
        )
    print()
    from kdsweep.core.config import point_id

    demo_student = "demo top-16 student, seed 42" + ("" if temperature == 1 else f", T {POINT['temperature']:g}")
    references = (("teacher", "teacher"), ("base student", "base"), (demo_student, point_id({**POINT, "seed": 42})))
    for label, name in references:
        metrics = demo.eval_json(name)
        if metrics:
            where = demo.paths.eval_json(demo.task, name)
            print(f"{label} ({where}): BLEU {metrics['bleu']:.2f}, chrF {metrics['chrf']:.2f}")
    print()
    for method, res in results.items():
        m = next(iter(res["caches"].values()))["manifest"]
        extra = {k: v for k, v in m.items() if k.startswith("mean_")}
        extras = ", ".join(f"{k[5:]} {v:.3f}" for k, v in extra.items())
        runaway = statistics.mean(res["runaway"]) * 100
        print(
            f"{method}: {m['response_tokens']} response tokens cached; per token: {extras}; "
            f"runaway (max_new_tokens) {runaway:.1f}% of test outputs"
        )
    print(f"\nOutputs under {out}")


if __name__ == "__main__":
    main()
