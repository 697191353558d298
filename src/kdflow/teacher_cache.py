"""Content-addressed store for teacher outputs, shared by the GLUE and translation paths.

An entry lives in <store>/<key>/, where the key hashes everything the outputs depend on
(teacher weights, tokenizer, data, settings). Shards are written atomically one by one, so a
killed job resumes at the first missing shard; `manifest.json` is written last and marks the
entry complete. The Snakemake rule's output is only a small pointer file naming the entry:
Snakemake deletes a rerun job's outputs, but never the store, so an unchanged input is never
recomputed and a changed one gets a new key (a rebuild).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .fileio import atomic_path, read_json, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)


def cache_key(key_parts: dict) -> str:
    return sha256_json(key_parts)[:20]


class CacheEntry:
    def __init__(self, store: str | Path, key_parts: dict):
        self.key_parts = key_parts
        self.key = cache_key(key_parts)
        self.dir = Path(store) / self.key
        self.manifest_path = self.dir / "manifest.json"

    def is_complete(self) -> bool:
        return self.manifest_path.is_file()

    def shard_path(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.safetensors"

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def write_shard(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        with atomic_path(self.shard_path(index)) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))

    def read_shard(self, index: int, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """A shard's tensors; with `names`, only those are read from the file."""
        if names is None:
            return load_file(str(self.shard_path(index)))
        with safe_open(str(self.shard_path(index)), framework="pt") as f:
            return {name: f.get_tensor(name) for name in names if name in f.keys()}

    def finish(self, num_shards: int, info: dict) -> dict:
        missing = [i for i in range(num_shards) if not self.has_shard(i)]
        if missing:
            raise RuntimeError(f"{self.dir}: shards {missing} missing, cannot mark complete")
        manifest = {"key": self.key, "key_parts": self.key_parts, "num_shards": num_shards, **info}
        write_json(self.manifest_path, manifest)
        return manifest

    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    def read_all(self) -> dict[str, torch.Tensor]:
        """Concatenate every shard along dim 0."""
        shards = [self.read_shard(i) for i in range(self.manifest()["num_shards"])]
        return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def write_pointer(pointer_path: str | Path, entry: CacheEntry, reused: bool) -> None:
    """The rule's output: which store entry holds this task's teacher outputs."""
    write_json(pointer_path, {"key": entry.key, "dir": str(entry.dir), "reused": reused, "key_parts": entry.key_parts})


def open_pointer(pointer_path: str | Path, data_file: str | Path | None = None) -> CacheEntry:
    """The complete entry a pointer names; with data_file, also check it was built from that file."""
    pointer = read_json(pointer_path)
    entry = CacheEntry(Path(pointer["dir"]).parent, pointer["key_parts"])
    if entry.key != pointer["key"] or not entry.is_complete():
        raise RuntimeError(
            f"{pointer_path}: cache entry {pointer['dir']} is missing or incomplete; rerun the teacher cache rule"
        )
    if data_file is not None and entry.key_parts["data"] != sha256_file(data_file):
        raise RuntimeError(
            f"{pointer_path}: teacher cache was built from other training data than {data_file}; rerun the cache rule"
        )
    return entry
