"""Stage `prepare` for GLUE MNLI/QQP: read the hub, a local GLUE TSV folder or kdsweep's synthetic
TSVs, normalize every split to JSONL rows {id, text_a, text_b, label} and write a manifest.

GLUE's TSVs are read with quoting off (MNLI text contains bare quotes): a line is split on tabs
only. Rows that cannot be used are dropped and counted per reason in the manifest, with the
first few file:line locations, never silently: wrong field count, MNLI gold_label "-", unknown
label, empty text, invalid UTF-8. A split left empty fails with the counts.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kdsweep import __version__
from kdsweep.core.data import PrepareError, SplitStats, check_encoding
from kdsweep.core.io import sha256_file, write_json, write_jsonl
from kdsweep.core.spec import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    labels: tuple[str, ...]
    label_column: str
    label_values: dict[str, int]  # raw TSV label -> class index
    text_columns: tuple[str, str]
    id_column: str
    splits: tuple[str, ...]  # kdsweep split names; the TSV file is <split>.tsv
    hub_splits: dict[str, str]  # kdsweep split -> hub split
    hub_text_columns: tuple[str, str]

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.splits if s != "train")


GLUE_TASKS = {
    # Label order follows the hub's glue/mnli and glue/qqp so both sources agree.
    "mnli": GlueTask(
        labels=("entailment", "neutral", "contradiction"),
        label_column="gold_label",
        label_values={"entailment": 0, "neutral": 1, "contradiction": 2},
        text_columns=("sentence1", "sentence2"),
        id_column="pairID",
        splits=("train", "dev_matched", "dev_mismatched"),
        hub_splits={"train": "train", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"},
        hub_text_columns=("premise", "hypothesis"),
    ),
    "qqp": GlueTask(
        labels=("not_duplicate", "duplicate"),
        label_column="is_duplicate",
        label_values={"0": 0, "1": 1},
        text_columns=("question1", "question2"),
        id_column="id",
        splits=("train", "dev"),
        hub_splits={"train": "train", "dev": "validation"},
        hub_text_columns=("question1", "question2"),
    ),
}


def parse_glue_tsv(path: str | Path, task: GlueTask) -> tuple[list[dict], SplitStats]:
    """Parse one GLUE TSV file (header first, tab-separated, quoting off)."""
    path = Path(path)
    stats = SplitStats(source=str(path))
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    if not raw_lines or not raw_lines[0].strip():
        raise PrepareError(f"{path}: empty file, expected a GLUE TSV header")
    try:  # utf-8-sig: a byte-order mark opening the file is not part of the first column's name
        header = raw_lines[0].decode("utf-8-sig").rstrip("\r").split("\t")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}:1: the header is not UTF-8 ({e}); GLUE TSVs are UTF-8") from None
    needed = [task.label_column, *task.text_columns]
    missing = [c for c in needed if c not in header]
    if missing:
        raise PrepareError(f"{path}:1: header lacks column(s) {missing}; header is {header}")
    col = {name: i for i, name in enumerate(header)}
    rows = []
    non_ascii = invalid = 0
    for lineno, raw in enumerate(raw_lines[1:], start=2):
        if not raw.strip():
            continue  # blank lines (the trailing newline) are not rows
        stats.rows_read += 1
        non_ascii += not raw.isascii()
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            invalid += 1
            stats.drop(where, "invalid UTF-8")
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            kind = "short row" if len(fields) < len(header) else "long row"
            stats.drop(where, kind, f"{len(fields)} fields, header has {len(header)}")
            continue
        label_raw = fields[col[task.label_column]].strip()
        if label_raw == "-":
            stats.drop(where, "no gold label ('-')")
            continue
        if label_raw not in task.label_values:
            stats.drop(where, "unknown label", repr(label_raw))
            continue
        text_a, text_b = (fields[col[c]].strip() for c in task.text_columns)
        if not text_a or not text_b:
            stats.drop(where, "empty text")
            continue
        row_id = fields[col[task.id_column]] if task.id_column in col else str(lineno)
        rows.append({"id": row_id, "text_a": text_a, "text_b": text_b, "label": task.label_values[label_raw]})
    check_encoding(path, invalid, non_ascii)
    stats.rows_kept = len(rows)
    return rows, stats


def load_hub_split(dataset: str, task_name: str, split: str) -> tuple[list[dict], SplitStats]:
    """One split from the hub through `datasets` (labels -1 mark unlabeled rows: dropped); offline,
    from the dataset's snapshot in the local Hugging Face cache (assets.hub_path)."""
    import datasets

    from kdsweep.core.hub import hub_path

    task = GLUE_TASKS[task_name]
    hub_split = task.hub_splits[split]
    local = hub_path(dataset, "dataset", needs=(f"{task_name}/*",))
    ds = datasets.load_dataset(local, task_name, split=hub_split)
    stats = SplitStats(source=f"hub:{dataset}/{task_name}[{hub_split}]")
    rows = []
    a_col, b_col = task.hub_text_columns
    for i, ex in enumerate(ds):
        stats.rows_read += 1
        where = f"{stats.source} row {i}"
        if ex["label"] not in range(len(task.labels)):
            stats.drop(where, "unlabeled (label -1)")
            continue
        if not ex[a_col].strip() or not ex[b_col].strip():
            stats.drop(where, "empty text")
            continue
        rows.append(
            {
                "id": str(ex.get("idx", i)),
                "text_a": ex[a_col].strip(),
                "text_b": ex[b_col].strip(),
                "label": ex["label"],
            }
        )
    stats.rows_kept = len(rows)
    return rows, stats


def subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """Deterministic subset: the first n rows after a seeded shuffle (all rows if n is None)."""
    if n is None or n >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:n])]


@dataclass
class PrepareGlueSpec:
    """Stage prepare-glue: the glue block's source, hub_dataset, max_train_examples, subset_seed."""

    source: str = setting("glue.source: hub, local or synthetic (the TSVs of --tsv-dir)")
    hub_dataset: str = setting("glue.hub_dataset: the `datasets` name read when source is hub", default="nyu-mll/glue")
    max_train_examples: int | None = setting(
        "glue.max_train_examples: a seeded subset of the training split (None: all)", default=None
    )
    subset_seed: int = setting("glue.subset_seed: the subset's shuffle seed", default=0)

    def __post_init__(self):
        if self.source not in ("hub", "local", "synthetic"):
            raise PrepareError(f"glue.source: {self.source!r} is not hub, local or synthetic")


def prepare_glue(
    task_name: str, out_dir: str | Path, spec: PrepareGlueSpec, *, tsv_dir: str | Path | None = None
) -> dict:
    """Write <out_dir>/<split>.jsonl for every split of the task and <out_dir>/manifest.json."""
    source, max_train_examples, subset_seed = spec.source, spec.max_train_examples, spec.subset_seed
    if task_name not in GLUE_TASKS:
        raise PrepareError(f"unknown GLUE task {task_name!r}; known: {sorted(GLUE_TASKS)}")
    task = GLUE_TASKS[task_name]
    out_dir = Path(out_dir)
    manifest = {
        "task": task_name,
        "source": source,
        "labels": list(task.labels),
        "kdsweep_version": __version__,
        "max_train_examples": max_train_examples,
        "subset_seed": subset_seed,
        "splits": {},
    }
    outputs = {}
    for split in task.splits:
        if source == "hub":
            rows, stats = load_hub_split(spec.hub_dataset, task_name, split)
        else:
            if tsv_dir is None:
                raise PrepareError(f"source {source!r} needs a TSV folder")
            path = Path(tsv_dir) / f"{split}.tsv"
            if not path.is_file():
                raise PrepareError(
                    f"{path}: missing; a GLUE {task_name.upper()} folder has {[s + '.tsv' for s in task.splits]}"
                )
            rows, stats = parse_glue_tsv(path, task)
        if not rows:
            raise PrepareError(
                f"{stats.source}: no usable rows after filtering ({stats.rows_read} read, "
                f"dropped: {dict(stats.dropped) or 'none'}); check the file and glue.source"
            )
        if split == "train":
            rows = subset(rows, max_train_examples, subset_seed)
        outputs[split] = rows
        entry = stats.as_dict()
        entry["rows_written"] = len(rows)
        entry["label_counts"] = {task.labels[k]: v for k, v in sorted(Counter(r["label"] for r in rows).items())}
        manifest["splits"][split] = entry
        log.info(
            "%s %s: %d rows kept of %d read, %d dropped",
            task_name,
            split,
            stats.rows_kept,
            stats.rows_read,
            entry["rows_dropped"],
        )
    for split, rows in outputs.items():  # write only once every split parsed cleanly
        path = out_dir / f"{split}.jsonl"
        write_jsonl(path, rows)
        manifest["splits"][split]["file"] = path.name
        manifest["splits"][split]["sha256"] = sha256_file(path)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def tsv_dir(glue: dict, task: str, paths) -> str | None:
    """Where prepare reads GLUE TSVs (`glue`: the config's glue block; `paths`: RunPaths):
    kdsweep's synthetic output, a local GLUE folder (<local_dir>/MNLI, <local_dir>/QQP, as GLUE
    distributes them), or None for the hub."""
    if glue["source"] == "synthetic":
        return paths.raw_glue_dir(task)
    if glue["source"] == "local":
        return str(Path(glue["local_dir"]) / task.upper())
    return None
