"""The teacher cache at scale: memory per rank and training speed of the real distillation job
(kdsweep.translation.distill.distill_student_lm under torchrun, DeepSpeed ZeRO-2 on gloo, the HF
Trainer and its distributed sampler) reading its top-k cache in memory (before: read_cache,
every shard read and verified by every rank, its token ids as Python lists, its teacher rows
decoded: packed ids unpacked to int64) or memory-mapped (after: mapped_cache.open_cache_examples,
the shards' verification split over the ranks and each rank reading only its own batches'
examples from the page cache), for 1 and 2 ranks.

    HF_HUB_OFFLINE=1 python benchmarks/cache_memory.py [--pairs 16000] [--steps 60] [--repeats 2]

First builds (once, under --work) synthetic Europarl pairs, a BPE tokenizer, a tiny random Llama
teacher and its top-64 cache with kdsweep's own cache writer (cache_teacher_lm: the real shard
format, translation.cache_format.TopkFormat, ids bit-packed), of at least 200k response tokens at
the default 16000 pairs; then runs the job for in memory / mapped x 1 / 2 ranks, the two modes
alternating, `--repeats` times. Each rank samples its /proc/self/status every 10 ms and reports:
VmHWM (peak resident set), the peaks of RssAnon (anonymous memory: the process's own) and RssFile
(file pages mapped: page cache, shared by every process mapping the same file, reclaimable), PSS
at the end of training (/proc/self/smaps_rollup: each shared page counted 1/n in each of the n
processes mapping it), what opening the cache added to RssAnon / RssFile, how long opening took,
and optimizer steps/s (after 5 warm-up steps; the median over the repeats, the memory figures are
the first run's). Absolute figures are this machine's; the ratios after / before are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = {
    "template": "<|begin_of_text|>English: {source}\nFrench: {target}{marker}<|eot_id|>",
    "end_marker": "<|end_of_translation|>",
    "marker_token": None,
}
MAX_LENGTH = 128
TOP_K = 64
WARM_UP_STEPS = 5
MODES = ("in_memory", "mapped")
FIELDS = ("VmHWM", "RssAnon", "RssFile")


def llama(hidden: int, layers: int) -> dict:
    return {
        "family": "llama",
        "config": {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": MAX_LENGTH,
            "tie_word_embeddings": True,
        },
    }


def build(root: Path, pairs: int) -> dict:
    """Data, tokenizer, teacher, student and the top-64 cache under root (reused when there)."""
    from kdsweep.core.io import read_jsonl
    from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
    from kdsweep.translation.models import causal_lm_from_config
    from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
    from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_lm
    from kdsweep.translation.tokenizer import train_bpe_tokenizer

    if not (root / "data" / "manifest.json").is_file():
        write_synthetic_europarl(root / "raw", SynthesizeEuroparlSpec(size=pairs + 100, seed=7))
        spec = PrepareTranslationSpec(source="synthetic", dev_size=50, test_size=50)
        prepare_translation(root / "data", spec, local_dir=root / "raw")
    if not (root / "student" / "config.json").is_file():
        rows = read_jsonl(root / "data" / "train.jsonl")
        tok = train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], root / "tok", 2000)
        for name, spec in (("teacher", llama(64, 2)), ("student", llama(64, 1))):
            model = causal_lm_from_config(spec, tok, seed=len(name))
            model.save_pretrained(root / name)
            tok.save_pretrained(root / name)
    cache = {"method": "topk", "top_k": TOP_K, "batch_size": 64, "shard_size": 2048, "value_dtype": "float16",
             "targets": "reference", "max_new_tokens": 8, "chunk_size": 1024}  # fmt: skip
    spec = CacheTeacherLMSpec(prompt=PROMPT, cache=cache, max_length=MAX_LENGTH)
    return cache_teacher_lm(
        str(root / "teacher"), str(root / "teacher"), root / "data", root / "store", root / "cache.json", spec
    )


def spec(steps: int, batch_size: int) -> dict:
    from kdsweep.core.config import training_block

    quiet = {"logging_steps": 10**6, "eval_steps": 10**6, "save_steps": 10**6, "lr_scheduler": "constant"}
    training = training_block(**quiet, max_steps=steps, batch_size=batch_size, warmup_ratio=0.0)
    return {
        "point": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0},
        "distill": {"loss": "forward_kl", "tail": "ignore", "chunk_size": 1024, "ce_only_tokens": [],
                    "training": training},
        "prompt": PROMPT, "max_length": MAX_LENGTH, "packing": True, "eval_batch_size": 8,
    }  # fmt: skip


def status() -> dict[str, int]:
    """This process's VmHWM, RssAnon and RssFile in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) * 1024
    return out


def pss() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Pss", "Pss_Anon", "Pss_File"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker(args) -> None:
    """One rank of the job (under torchrun): the real distill_student_lm, its cache opened the
    `--worker` way, measured."""
    from transformers import TrainerCallback

    from kdsweep.core import trainer as core_trainer
    from kdsweep.translation import distill as distill_translation
    from kdsweep.translation.batching import TranslationExamples
    from kdsweep.translation.teacher import read_cache

    root, rank = Path(args.work), int(os.environ.get("RANK", "0"))
    peaks = dict.fromkeys(FIELDS, 0)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for key, value in status().items():
                peaks[key] = max(peaks[key], value)
            stop.wait(0.01)

    threading.Thread(target=sample, daemon=True).start()
    result: dict = {"rank": rank, "mode": args.worker}

    def open_examples(entry, rank: int, processes: int):
        before, start = status(), time.perf_counter()
        if args.worker == "in_memory":  # the job before: every shard read (and verified) into memory
            ids, starts, teacher, _ = read_cache(entry)
            data = TranslationExamples(ids, starts, teacher)
        else:
            data = open_cache_examples(entry, rank, processes)
        after = status()
        result["open_s"] = time.perf_counter() - start
        result["open_added"] = {k: after[k] - before[k] for k in ("RssAnon", "RssFile")}
        return data

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, a, state, control, **kwargs):
            self.times.append(time.perf_counter())
            return control

    timer = StepTimer()

    def train_and_save(trainer, *a, **kw):
        trainer.add_callback(timer)
        out = train_and_save_real(trainer, *a, **kw)
        result["pss_end"] = pss()  # the dataset (and its mappings) still alive
        return out

    open_cache_examples = distill_translation.open_cache_examples
    train_and_save_real = core_trainer.train_and_save  # distill_student_lm imports it when called
    distill_translation.open_cache_examples = open_examples
    core_trainer.train_and_save = train_and_save
    s = spec(args.steps, args.batch_size)
    out = Path(args.out)
    distill_translation.distill_student_lm(
        str(root / "student"), str(root / "teacher"), root / "data", root / "cache.json",
        out / "model", out / "log.jsonl", out / "ckpt", distill_translation.DistillLMSpec(**s),
        str(REPO / "workflow" / "deepspeed" / "zero2.json"),
    )  # fmt: skip
    stop.set()
    for key, value in status().items():
        peaks[key] = max(peaks[key], value)
    times = timer.times[WARM_UP_STEPS:]
    result["steps_per_s"] = (len(times) - 1) / (times[-1] - times[0])
    result["peak"] = peaks
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def run(root: Path, mode: str, ranks: int, steps: int, batch_size: int) -> list[dict]:
    from kdsweep.cluster.launch import launch_env

    out = root / "runs" / f"{mode}-{ranks}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    env = launch_env(0, ranks)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    cmd = ["torchrun", "--standalone", f"--nproc-per-node={ranks}", __file__, "--worker", mode, "--work", str(root)]
    cmd += ["--out", str(out), "--steps", str(steps), "--batch-size", str(batch_size)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16000, help="training pairs of the synthetic data")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode and rank count (alternating)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (pairs)")
    parser.add_argument(
        "--work", help="where the data, models and cache are built once (/tmp/kdsweep-cache-memory-<pairs>)"
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    root = Path(args.work or f"/tmp/kdsweep-cache-memory-{args.pairs}")
    start = time.perf_counter()
    manifest = build(root, args.pairs)
    size = sum(p.stat().st_size for p in (Path(json.loads((root / "cache.json").read_text())["dir"])).glob("shard-*"))
    print(
        f"cache: {manifest['examples']:,} pairs, {manifest['response_tokens']:,} response tokens, top-{TOP_K}, "
        f"{manifest['num_shards']} shards, {mib(size)} MiB on disk ({time.perf_counter() - start:.0f} s to build or "
        f"check); {os.cpu_count()} CPUs; job: {args.steps} steps of {args.batch_size} pairs (global), DeepSpeed ZeRO-2"
    )
    results, rates = {}, {}
    for ranks in (1, 2):
        for _ in range(args.repeats):
            for mode in MODES:
                ranks_results = run(root, mode, ranks, args.steps, args.batch_size)
                results.setdefault((mode, ranks), ranks_results)
                rates.setdefault((mode, ranks), []).append(min(r["steps_per_s"] for r in ranks_results))
    for key, ranks_results in results.items():
        for r in ranks_results:
            r["steps_per_s"] = statistics.median(rates[key])
    print(f"cache: {mib(size)} MiB; steps/s per run (the slowest rank): " + "; ".join(
        f"{mode} x{ranks}: " + ", ".join(f"{x:.2f}" for x in rates[(mode, ranks)]) for mode, ranks in rates))  # fmt: skip
    print(
        "\nMiB per rank: VmHWM = peak RSS; RssAnon / RssFile peaks; PSS at the end (anon + file); "
        "open: what opening the cache added (anon / file) and its seconds"
    )
    print(f"{'mode':10s} {'ranks':>5s} {'rank':>4s} {'VmHWM':>7s} {'RssAnon':>8s} {'RssFile':>8s} "
          f"{'PSS':>6s} {'PSS anon/file':>14s} {'open +anon/+file':>17s} {'open s':>7s} {'steps/s':>8s}")  # fmt: skip
    for (mode, ranks), ranks_results in results.items():
        for r in ranks_results:
            p, o, end = r["peak"], r["open_added"], r["pss_end"]
            print(
                f"{mode:10s} {ranks:5d} {r['rank']:4d} {mib(p['VmHWM']):>7s} {mib(p['RssAnon']):>8s} "
                f"{mib(p['RssFile']):>8s} {mib(end['Pss']):>6s} {mib(end['Pss_Anon']) + ' / ' + mib(end['Pss_File']):>14s} "
                f"{mib(o['RssAnon']) + ' / ' + mib(o['RssFile']):>17s} {r['open_s']:7.2f} {r['steps_per_s']:8.2f}"
            )
    print("\nafter (mapped) / before (in memory), mean over ranks:")
    for ranks in (1, 2):
        mean = {
            mode: {
                key: sum(f(r) for r in results[(mode, ranks)]) / ranks
                for key, f in (
                    ("VmHWM", lambda r: r["peak"]["VmHWM"]),
                    ("RssAnon", lambda r: r["peak"]["RssAnon"]),
                    ("RssFile", lambda r: r["peak"]["RssFile"]),
                    ("open +anon", lambda r: r["open_added"]["RssAnon"]),
                    ("open +file", lambda r: r["open_added"]["RssFile"]),
                    ("steps/s", lambda r: r["steps_per_s"]),
                )
            }
            for mode in MODES
        }
        ratios = ", ".join(f"{k} {mean['mapped'][k] / mean['in_memory'][k]:.2f}x" for k in mean["mapped"]
                           if mean["in_memory"][k] > 0)  # fmt: skip
        print(f"  {ranks} rank(s): {ratios}")


if __name__ == "__main__":
    main()
