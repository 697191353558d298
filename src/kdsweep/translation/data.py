"""Stage `prepare` for the translation family (Europarl English->French): read the hub, a local
Europarl folder or kdsweep's synthetic files (the same layout), filter the sentence pairs, split them
into train/dev/test JSONL rows {id, source, target} and write a manifest.

Europarl is distributed as two line-aligned plain-text files, <stem>.<lang> (europarl-v7.fr-en.en
and europarl-v7.fr-en.fr). Files whose line counts differ are not aligned: that fails. Pairs that
cannot be used are dropped and counted per reason, with the first few file:line locations, never
silently: invalid UTF-8 (a UTF-8 byte-order mark opening a file is stripped, not read as text), an
empty side, a character-length ratio outlier, a source longer than max_source_words words (a cut
source would no longer match its whole target, so overlong pairs are dropped, not truncated), and
repeats: Europarl repeats many sentences ("The debate is closed."),
so pairs are deduplicated on the source sentence (whitespace-normalized) before splitting, keeping
the first (`duplicate_pair`: the same pair again; `duplicate_source`: the same source with another
target). Train, dev and test therefore share no source sentence.

The three splits are carved from one filtered pool (a seeded shuffle: test first, then dev, then
train), so every split entry of the manifest repeats the pool's rows_read and dropped_by_reason
(what report.py prints) next to its own rows_written.
"""

from __future__ import annotations

import codecs
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from kdsweep import __version__
from kdsweep.core.data import PrepareError, SplitStats, check_encoding
from kdsweep.core.io import sha256_file, write_json, write_jsonl
from kdsweep.core.spec import setting

log = logging.getLogger(__name__)
SOURCES = ("hub", "local", "synthetic")
OVERLONG = ("drop",)
SPLITS = ("train", "dev", "test")


def _pair_or_drop(stats: SplitStats, where: str, row_id: int, source: str, target: str) -> dict | None:
    """A row {id, source, target} with both sides stripped, or None (counted) if a side is empty."""
    source, target = source.strip(), target.strip()
    if not source or not target:
        stats.drop(where, "empty_source" if not source else "empty_target")
        return None
    return {"id": row_id, "source": source, "target": target}


def _split_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # UTF-16 ASCII lines split on b"\n" would decode as "valid" UTF-8 full of NULs: refuse the file.
        raise PrepareError(f"{path}:1: starts with a UTF-16 byte-order mark; Europarl files are UTF-8")
    # A UTF-8 byte-order mark (editors on Windows write one) is not part of the first sentence.
    lines = data.removeprefix(codecs.BOM_UTF8).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the trailing newline ends the last row, it does not start one
    return [line.rstrip(b"\r") for line in lines]


def _decode(stats: SplitStats, path: Path, lineno: int, raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.drop(f"{path}:{lineno}", "invalid_utf8", str(e))
        return None


def read_europarl(source_path: str | Path, target_path: str | Path) -> tuple[list[dict], SplitStats]:
    """Parse two line-aligned Europarl files; row id = the 1-based line number."""
    source_path, target_path = Path(source_path), Path(target_path)
    source_lines, target_lines = _split_lines(source_path), _split_lines(target_path)
    if len(source_lines) != len(target_lines):
        raise PrepareError(
            f"{source_path} has {len(source_lines)} lines but {target_path} has {len(target_lines)}: "
            "Europarl files must be line-aligned"
        )
    stats = SplitStats(source=str(source_path))
    pairs = []
    for lineno, (raw_source, raw_target) in enumerate(zip(source_lines, target_lines, strict=True), start=1):
        stats.rows_read += 1
        source = _decode(stats, source_path, lineno, raw_source)
        target = _decode(stats, target_path, lineno, raw_target) if source is not None else None
        if source is None or target is None:
            continue
        empty_side = source_path if not source.strip() else target_path  # named if a side is empty
        pair = _pair_or_drop(stats, f"{empty_side}:{lineno}", lineno, source, target)
        if pair:
            pairs.append(pair)
    for path, lines in ((source_path, source_lines), (target_path, target_lines)):
        check_encoding(path, sum(not _is_utf8(line) for line in lines), sum(not line.isascii() for line in lines))
    stats.rows_kept = len(pairs)
    return pairs, stats


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_hub_pairs(
    hub_dataset: str, hub_config: str, source_lang: str, target_lang: str
) -> tuple[list[dict], SplitStats]:
    """The train split from the hub through `datasets`: rows {"translation": {lang: text}}; offline,
    from the dataset's snapshot in the local Hugging Face cache (assets.hub_path)."""
    import datasets

    from kdsweep.core.hub import hub_path

    local = hub_path(hub_dataset, "dataset", needs=(f"{hub_config}/*",))
    ds = datasets.load_dataset(local, hub_config, split="train")
    stats = SplitStats(source=f"hub:{hub_dataset}/{hub_config}[train]")
    pairs = []
    for row_id, example in enumerate(ds, start=1):
        stats.rows_read += 1
        translation = example["translation"]
        source, target = translation.get(source_lang) or "", translation.get(target_lang) or ""
        pair = _pair_or_drop(stats, f"{stats.source}:{row_id}", row_id, source, target)
        if pair:
            pairs.append(pair)
    stats.rows_kept = len(pairs)
    return pairs, stats


def filter_pairs(
    pairs: list[dict], stats: SplitStats, *, max_source_words: int, overlong: str, max_length_ratio: float
) -> list[dict]:
    """Drop length-ratio outliers, overlong sources and repeated sources (the first is kept)."""
    if overlong not in OVERLONG:
        raise PrepareError(
            f"overlong must be one of {OVERLONG}, not {overlong!r}: a truncated source no longer matches its "
            "whole target, so pairs longer than max_source_words are dropped (and counted)"
        )
    kept, seen = [], {}
    for pair in pairs:
        where = f"{stats.source}:{pair['id']}"
        ratio = len(pair["target"]) / len(pair["source"])
        if not 1 / max_length_ratio <= ratio <= max_length_ratio:
            stats.drop(where, "length_ratio", f"target/source characters {ratio:.2f}")
            continue
        words = pair["source"].split()
        if len(words) > max_source_words:
            stats.drop(where, "source_too_long", f"{len(words)} words")
            continue
        key = " ".join(words)
        if key in seen:
            first = seen[key]
            same = " ".join(first["target"].split()) == " ".join(pair["target"].split())
            stats.drop(where, "duplicate_pair" if same else "duplicate_source", f"first at {first['id']}")
            continue
        seen[key] = pair
        kept.append(pair)
    stats.rows_kept = len(kept)
    return kept


def split_pairs(
    pairs: list[dict], *, train_size: int | None, dev_size: int, test_size: int, seed: int
) -> dict[str, list[dict]]:
    """Seeded shuffle, then test = the first test_size, dev = the next dev_size, train = the next
    train_size (None: all the rest). Each split keeps the input order."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    train_end = None if train_size is None else test_size + dev_size + train_size
    chosen = {
        "train": order[test_size + dev_size : train_end],
        "dev": order[test_size : test_size + dev_size],
        "test": order[:test_size],
    }
    return {split: [pairs[i] for i in sorted(indices)] for split, indices in chosen.items()}


def _read_source(
    source: str, local_dir: str | Path | None, stem: str, hub_dataset: str, hub_config: str, langs: tuple[str, str]
) -> tuple[list[dict], SplitStats, dict[str, str]]:
    """(pairs, stats, {input file: sha256}) from the hub or a folder in Europarl layout."""
    if source not in SOURCES:
        raise PrepareError(f"unknown translation source {source!r}; known: {list(SOURCES)}")
    if source == "hub":
        return *load_hub_pairs(hub_dataset, hub_config, *langs), {}
    if local_dir is None:
        raise PrepareError(f"source {source!r} needs a folder with {stem}.{langs[0]} and {stem}.{langs[1]}")
    paths = [Path(local_dir) / f"{stem}.{lang}" for lang in langs]
    for path in paths:
        if not path.is_file():
            raise PrepareError(f"{path}: missing; a Europarl folder has {stem}.{langs[0]} and {stem}.{langs[1]}")
    return *read_europarl(*paths), {str(path): sha256_file(path) for path in paths}


@dataclass
class PrepareTranslationSpec:
    """Stage prepare-translation: the translation block's data settings."""

    source: str = setting("translation.source: hub, local or synthetic (the files of --local-dir)")
    file_stem: str = setting("translation.file_stem: files <file_stem>.<lang>", default="europarl-v7.fr-en")
    hub_dataset: str = setting("translation.hub_dataset", default="Helsinki-NLP/europarl")
    hub_config: str = setting("translation.hub_config", default="en-fr")
    source_lang: str = setting("translation.source_lang", default="en")
    target_lang: str = setting("translation.target_lang", default="fr")
    train_size: int | None = setting("translation.train_size: training pairs (None: all the rest)", default=None)
    dev_size: int = setting("translation.dev_size", default=500)
    test_size: int = setting("translation.test_size", default=500)
    subset_seed: int = setting("translation.subset_seed: the split's shuffle seed", default=0)
    max_source_words: int = setting("translation.max_source_words: longer sources are dropped", default=128)
    overlong: str = setting("translation.overlong: drop (the only choice)", default="drop")
    max_length_ratio: float = setting("translation.max_length_ratio: character-length ratio limit", default=3.0)

    def __post_init__(self):
        if self.source_lang == self.target_lang:
            raise PrepareError(f"translation.target_lang: {self.target_lang!r} is also the source language")
        if self.overlong not in OVERLONG:
            raise PrepareError(
                f"translation.overlong: must be one of {OVERLONG}, not {self.overlong!r}: a truncated source no "
                "longer matches its whole target, so pairs longer than max_source_words are dropped (and counted)"
            )


def prepare_translation(
    out_dir: str | Path, spec: PrepareTranslationSpec, *, local_dir: str | Path | None = None
) -> dict:
    """Write <out_dir>/{train,dev,test}.jsonl and, last, <out_dir>/manifest.json; return the manifest."""
    source, stem, hub_dataset, hub_config = spec.source, spec.file_stem, spec.hub_dataset, spec.hub_config
    source_lang, target_lang, train_size, seed = spec.source_lang, spec.target_lang, spec.train_size, spec.subset_seed
    dev_size, test_size, max_source_words = spec.dev_size, spec.test_size, spec.max_source_words
    overlong, max_length_ratio = spec.overlong, spec.max_length_ratio
    settings = {  # the manifest's names
        "stem": stem,
        "hub_dataset": hub_dataset,
        "hub_config": hub_config,
        "source_lang": source_lang,
        "target_lang": target_lang,
        "train_size": train_size,
        "dev_size": dev_size,
        "test_size": test_size,
        "seed": seed,
        "max_source_words": max_source_words,
        "overlong": overlong,
        "max_length_ratio": max_length_ratio,
    }
    pairs, stats, input_files = _read_source(
        source, local_dir, stem, hub_dataset, hub_config, (source_lang, target_lang)
    )
    pairs = filter_pairs(
        pairs, stats, max_source_words=max_source_words, overlong=overlong, max_length_ratio=max_length_ratio
    )
    if len(pairs) < dev_size + test_size + 1:
        raise PrepareError(
            f"{stats.source}: {len(pairs)} usable pairs after filtering ({stats.rows_read} read, "
            f"dropped: {dict(stats.dropped) or 'none'}), need at least dev_size + test_size + 1 = "
            f"{dev_size} + {test_size} + 1"
        )
    splits = split_pairs(pairs, train_size=train_size, dev_size=dev_size, test_size=test_size, seed=seed)
    manifest = {
        "family": "translation",
        "source": source,
        "kdsweep_version": __version__,
        "settings": settings,
        "input_files": input_files,
        "pool": stats.as_dict(),
        "splits": {},
    }
    out_dir = Path(out_dir)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # an old manifest must not vouch for new splits
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        write_jsonl(path, splits[split])
        manifest["splits"][split] = {
            "rows_read": stats.rows_read,
            "dropped_by_reason": dict(sorted(stats.dropped.items())),
            "rows_written": len(splits[split]),
            "file": path.name,
            "sha256": sha256_file(path),
        }
        log.info("%s: %d pairs written", split, len(splits[split]))
    write_json(out_dir / "manifest.json", manifest)
    return manifest
