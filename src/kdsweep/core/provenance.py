"""Provenance: every model kdsweep saves carries `kdsweep.json`, the record of the job that made it.

The record (`model_record`) holds:

- `model.fingerprint`: the model's content hash (`model_fingerprint`: SHA-256 over config.json
  and the weight files, never over kdsweep.json, so identical weights give the same fingerprint
  whatever the job's time or host), and the files it covers;
- `job`: the job record the stage passed to train_and_save (stage, task, sweep point, full spec,
  cache key): the same dict that decides whether checkpoints are resumed (job.json);
- `settings`: what trained the model, read from the TrainingArguments and the job: learning rate,
  seed, alpha, temperature, loss, tail;
- `kept`: which step's weights the model holds (training.keep): {policy: last or best, step,
  metric, value}; null for a model that did not train (kept_step reads it);
- `run`: the processes (trainer.run_record: world size, ZeRO stage, precision, DeepSpeed config hash);
- `cache`: the teacher cache entry trained from (key, method, key parts), or null (fine-tuning);
- `teacher`, `tokenizer`, `data`: the teacher's and its tokenizer's content fingerprints and the
  training data's SHA-256, taken from the cache key parts (kdsweep.core.cache.teacher_key_parts)
  where there is a cache, else from the job (a teacher's fine-tuning records its data's hash);
- `versions` (python and packages, importlib.metadata), `git` (the commit of the checkout that
  holds kdsweep's source, and whether its tracked files differ from it), `host`, `created` (UTC),
  `slurm_job_id`, `log_file` (the Snakemake job's log: the file the process's stderr goes to).

Evaluation JSONs name the evaluated model's fingerprint (`model_fingerprint`) and the record they
took it from (`model_provenance`, null for a model without one: its fingerprint is then computed).
`describe(model_dir)` turns a model folder back into its job (stage, task, point, log file, ...),
which is how a report's table cell is traced to the job that trained its model; `trace(eval_json)`
does it from the cell's evaluation JSON.

No torch or transformers here: the report and the evaluation read records without training code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import os
import platform
import socket
import stat
import subprocess
import time
from pathlib import Path

from kdsweep.core.io import read_json, sha256_file, write_json

RECORD_NAME = "kdsweep.json"
FORMAT = 1
# The files a model's fingerprint covers: its config and weights (safetensors or torch's .bin,
# single or sharded with an index). Not kdsweep.json, the tokenizer, nor save_model's
# training_args.bin (a pickle of the TrainingArguments, paths included).
FINGERPRINT_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
)
PACKAGES = ("torch", "transformers", "accelerate", "deepspeed", "sacrebleu", "kdsweep")
GIT_TIMEOUT_S = 20


def fingerprint_files(model_dir: str | Path) -> list[str]:
    """The names (sorted) of the files of `model_dir` that its fingerprint covers."""
    model_dir = Path(model_dir)
    names = [p.name for p in model_dir.iterdir() if p.is_file()]
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in FINGERPRINT_PATTERNS))


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the config and weight files of a saved model (fingerprint_files): each file's
    name and the SHA-256 of its bytes, as kdsweep.core.io.sha256_tree hashes a tree. Deterministic:
    the same weights and config give the same fingerprint. Raises when there are no weights."""
    model_dir = Path(model_dir)
    names = fingerprint_files(model_dir)
    if not any(n != "config.json" for n in names):
        raise FileNotFoundError(f"{model_dir}: no weight files to fingerprint")
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + sha256_file(model_dir / name).encode())
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Python's version and each of PACKAGES' installed version (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
    )
    return done.stdout.strip()


def git_state(folder: str | Path | None = None) -> dict:
    """The git checkout holding `folder` (default: kdsweep's source, i.e. the workflow's
    repository): its HEAD commit and whether its tracked files differ from it (`dirty`; untracked
    files do not count). Not a git checkout (an installed package), or git missing or too slow:
    commit null and the reason."""
    if folder is None:
        import kdsweep

        folder = Path(kdsweep.__file__).resolve().parent
    folder = Path(folder)
    try:
        _git(folder, "ls-files", "--error-unmatch", "__init__.py")  # tracked: not a package in a venv inside a repo
        commit = _git(folder, "rev-parse", "HEAD")
        root = _git(folder, "rev-parse", "--show-toplevel")
        dirty = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        reason = "git is not installed"
    except subprocess.TimeoutExpired:
        reason = f"git took over {GIT_TIMEOUT_S} s"
    except subprocess.CalledProcessError as error:
        reason = f"no git checkout tracks {folder} ({' '.join((error.stderr or '').split())[:200]})"
    else:
        return {"commit": commit, "dirty": dirty, "root": root, "reason": None}
    return {"commit": None, "dirty": None, "root": None, "reason": reason}


def job_log_file() -> str | None:
    """The Snakemake job's log: the regular file this process's stderr goes to (the rules run
    `... > {log} 2>&1`), or None (a terminal, a pipe, or not Linux)."""
    try:
        target = os.readlink("/proc/self/fd/2")
        return target if stat.S_ISREG(os.stat(target).st_mode) else None
    except OSError:
        return None


def cache_record(entry) -> dict:
    """What the record says of a teacher cache entry (kdsweep.core.cache.CacheEntry): its key, its
    method (translation: topk or sampled; GLUE's class logits: None), kind and key parts."""
    parts = entry.key_parts
    return {"key": entry.key, "method": parts.get("method"), "kind": parts.get("kind"), "key_parts": parts}


def job_settings(job: dict, args=None) -> dict:
    """The settings that made the model: learning rate and seed from the TrainingArguments that
    trained it (`args`; they are what ran, whatever key of the job set them), alpha, temperature,
    loss and tail from the job (fine-tuning: alpha 0, no temperature)."""
    point = job.get("point") or {}
    distill = (job.get("spec") or {}).get("distill") or {}
    settings = {
        "learning_rate": point.get("learning_rate"),
        "alpha": point.get("alpha", 0.0),
        "temperature": point.get("temperature"),
        "loss": point.get("loss", distill.get("loss")),  # an experiment's run may set its own
        "tail": point.get("tail", distill.get("tail")),
        "seed": point.get("seed", (job.get("spec") or {}).get("seed")),
    }
    if args is not None:
        settings["learning_rate"], settings["seed"] = args.learning_rate, args.seed
    return settings


def model_record(
    model_dir: str | Path, job: dict, *, run: dict | None = None, args=None, cache=None, kept: dict | None = None
) -> dict:
    """The provenance record of the model saved in `model_dir` by `job` (see the module's doc).
    `cache`: the CacheEntry trained from, if any; `args`: the TrainingArguments, if it trained;
    `kept`: the step it holds (kdsweep.core.trainer.kept_record)."""
    cache_info = cache_record(cache) if cache is not None else None
    parts = cache_info["key_parts"] if cache_info else {}
    return {
        "format": FORMAT,
        "model": {"fingerprint": model_fingerprint(model_dir), "files": fingerprint_files(model_dir)},
        "job": job,
        "settings": job_settings(job, args),
        "kept": kept,
        "run": run,
        "cache": cache_info,
        "teacher": parts.get("teacher"),
        "tokenizer": parts.get("tokenizer"),
        "data": parts.get("data", job.get("data")),
        "versions": package_versions(),
        "git": git_state(),
        "host": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "log_file": job_log_file(),
    }


def write_record(model_dir: str | Path, job: dict, **kwargs) -> dict:
    """Write kdsweep.json into `model_dir` (after its weights and config: it names their
    fingerprint) and return the record. Call it on the folder before it is renamed into place."""
    record = model_record(model_dir, job, **kwargs)
    write_json(Path(model_dir) / RECORD_NAME, record)
    return record


def read_record(model_dir: str | Path) -> dict | None:
    """The kdsweep.json of a model folder, or None (a hub model, or one from before provenance)."""
    path = Path(model_dir) / RECORD_NAME
    return read_json(path) if path.is_file() else None


def kept(model_dir: str | Path) -> dict | None:
    """The `kept` entry of a model folder's record: {policy: "last" | "best", step, metric,
    value}; None for a model without a record or one that did not train."""
    record = read_record(model_dir)
    return None if record is None else record.get("kept")


def kept_step(model_dir: str | Path) -> int | None:
    """The training step whose weights a model folder holds (the best evaluation's with
    training.keep: best, else the last step), or None (no record, or not trained)."""
    entry = kept(model_dir)
    return None if entry is None else entry["step"]


def fingerprint_of(model_dir: str | Path) -> tuple[str, str | None]:
    """(the model's fingerprint, the path of the kdsweep.json it was read from). A folder without
    kdsweep.json (a hub snapshot, an older model) has its fingerprint computed, and None."""
    record = read_record(model_dir)
    if record is not None:
        return record["model"]["fingerprint"], str(Path(model_dir) / RECORD_NAME)
    return model_fingerprint(model_dir), None


def evaluation_fields(model_dir: str | Path) -> dict:
    """The fields an evaluation JSON adds about its model: `model_fingerprint` and
    `model_provenance` (the kdsweep.json it came from, or null when computed)."""
    fingerprint, source = fingerprint_of(model_dir)
    return {"model_fingerprint": fingerprint, "model_provenance": source}


def describe(model_dir: str | Path) -> dict | None:
    """Trace a saved model back to its job: stage, task, sweep point, settings, cache key and
    method, log file, Slurm job, host, creation time, git commit and fingerprint; None for a model
    without kdsweep.json. The report follows a table cell's evaluation JSON (`model_path`, or
    `model_provenance`) to the model folder and calls this."""
    record = read_record(model_dir)
    if record is None:
        return None
    job, cache = record["job"], record.get("cache") or {}
    return {
        "fingerprint": record["model"]["fingerprint"],
        "stage": job.get("stage"),
        "task": job.get("task"),
        "point": job.get("point"),
        "settings": record.get("settings"),
        "kept": record.get("kept"),
        "cache_key": cache.get("key"),
        "cache_method": cache.get("method"),
        "log_file": record.get("log_file"),
        "slurm_job_id": record.get("slurm_job_id"),
        "host": record.get("host"),
        "created": record.get("created"),
        "git_commit": (record.get("git") or {}).get("commit"),
    }


def trace(eval_json: str | Path) -> dict:
    """A report's table cell back to its job, from the evaluation JSON the cell came from: the
    evaluated model's fingerprint and record path, and `job`: describe() of that record (None for
    a model without one, e.g. a hub model). `current` says whether the record found there now
    still names the evaluated fingerprint (False: the model folder was rewritten since)."""
    result = read_json(eval_json)
    source = result.get("model_provenance")
    job = describe(Path(source).parent) if source and Path(source).is_file() else None
    return {
        "model": result.get("model"),
        "model_fingerprint": result.get("model_fingerprint"),
        "model_provenance": source,
        "job": job,
        "current": job is not None and job["fingerprint"] == result.get("model_fingerprint"),
    }
