"""Content-addressed store for teacher outputs, shared by the GLUE and translation paths.

An entry lives in <store>/<key>/, where the key hashes everything the outputs depend on
(teacher weights, tokenizer, data, settings). Shards are written atomically one by one, so a
killed job resumes at the first missing shard; `manifest.json` is written last and marks the
entry complete. The Snakemake rule's output is only a small pointer file naming the entry:
Snakemake deletes a rerun job's outputs, but never the store, so an unchanged input is never
recomputed and a changed one gets a new key (a rebuild).

Every tensor of a shard carries its SHA-256 in the shard's own metadata, written with it and
checked whenever it is read: a truncated, garbled or edited shard raises CacheDamaged, naming the
file and the command that rebuilds it. A complete entry is verified before it is reused, so
forcing the cache rule (`snakemake --forcerun cache_teacher_lm`) rebuilds a damaged entry's shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from kdsweep.core.io import atomic_path, read_json, sha256_file, sha256_json, write_json

if TYPE_CHECKING:  # torch and safetensors are imported where used: the report reads entries without them
    import torch

log = logging.getLogger(__name__)


def cache_key(key_parts: dict) -> str:
    return sha256_json(key_parts)[:20]


def teacher_key_parts(kind: str, model, tokenizer, data_file: str | Path, **settings) -> dict:
    """What a teacher cache entry depends on, the same way for every family: its kind, the
    teacher's weights and tokenizer (content fingerprints, not paths), the data file's hash, and
    the settings that change the cached values (max_length, top_k, ...)."""
    from kdsweep.core.models import model_fingerprint, tokenizer_fingerprint

    return {
        "kind": kind,
        "teacher": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": sha256_file(data_file),
        **settings,
    }


# The rule that writes an entry of each kind: what a damaged entry's message tells the user to force.
REBUILD_RULE = {"class_logits": "cache_teacher", "lm_topk": "cache_teacher_lm", "lm_sampled": "cache_teacher_lm"}
# The shard's metadata key holding {tensor name: SHA-256 of its bytes}, as one sorted JSON
# string: safetensors writes metadata keys in no fixed order, and a rebuilt shard must be the
# same file byte for byte.
CHECKSUMS_KEY = "sha256"
# A family's check of a shard's values (NaN, ranges, consistency): what is wrong, or None.
ShardCheck = Callable[[dict[str, "torch.Tensor"]], str | None]
# A family's computation of one shard: (first row, row after the last, "shard i/n") -> its tensors.
ShardCompute = Callable[[int, int, str], dict[str, "torch.Tensor"]]


# A streaming scan reads a shard in chunks of about this many bytes (whole rows of a tensor).
SCAN_CHUNK_BYTES = 2**20
SAFETENSORS_DTYPES = {  # safetensors' dtype name -> torch's
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
}


class ShardScan(Protocol):
    """A family's value check of one shard fed chunk by chunk (whole rows of each tensor, in the
    file's order), so a shard of any size is checked in bounded memory: `begin` gets every
    tensor's shape, `feed` a chunk (valid only during the call) and the index of its first row,
    `problem` the verdict once every tensor was fed."""

    def begin(self, shapes: dict[str, tuple[int, ...]]) -> None: ...

    def feed(self, name: str, chunk: torch.Tensor, first_row: int) -> None: ...

    def problem(self) -> str | None: ...


@dataclass(frozen=True)
class TensorSpan:
    """Where a tensor lies in a safetensors file: bytes [start, end), from its header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def shard_layout(f: BinaryIO) -> tuple[dict[str, TensorSpan], dict[str, str]]:
    """The tensors' spans (in the file's order) and the metadata of an open safetensors file,
    from its header alone; ValueError when the header does not describe the file (e.g. truncated)."""
    import torch

    f.seek(0)
    head = f.read(8)
    if len(head) != 8:
        raise ValueError("shorter than a safetensors header")
    size = os.fstat(f.fileno()).st_size
    n = int.from_bytes(head, "little")
    if 8 + n > size:
        raise ValueError(f"header of {n} bytes in a file of {size}")
    header = json.loads(f.read(n))
    metadata = header.pop("__metadata__", None) or {}
    base, spans, end = 8 + n, {}, 8 + n
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]]), tuple(info["shape"])
        start, stop = info["data_offsets"]
        if stop - start != math.prod(shape) * dtype.itemsize or base + start != end:
            raise ValueError(f"tensor {name!r}: its offsets do not match its shape")
        spans[name] = TensorSpan(dtype, shape, base + start, base + stop)
        end = base + stop
    if end != size:
        raise ValueError(f"the tensors end at byte {end}, the file at {size}")
    return spans, metadata


class CacheDamaged(RuntimeError):
    """A cache shard that cannot be trusted: missing, unreadable, failing its checksum or holding
    values out of their range."""


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (its dtype and shape are checked by safetensors itself)."""
    import torch

    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


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

    def rebuild_command(self) -> str:
        """The command that rebuilds this entry: the cache rule of its kind, forced."""
        rule = REBUILD_RULE.get(self.key_parts.get("kind"), "the teacher cache rule")
        return f"snakemake --forcerun {rule} <your usual options>"

    def damaged(self, index: int, what: str) -> CacheDamaged:
        return CacheDamaged(
            f"{self.shard_path(index)}: {what}. The teacher cache entry {self.dir} cannot be trusted; rebuild it "
            f"(only its damaged shards are recomputed) with: {self.rebuild_command()}"
        )

    def write_shard(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in tensors.items()}
        checksums = json.dumps({k: tensor_sha256(v) for k, v in tensors.items()}, sort_keys=True)
        with atomic_path(self.shard_path(index)) as tmp:
            save_file(tensors, str(tmp), metadata={CHECKSUMS_KEY: checksums})

    def read_shard(self, index: int, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """A shard's tensors, each checked against the checksum written with it; with `names`,
        only those are read from the file. Raises CacheDamaged."""
        from safetensors import safe_open

        path = self.shard_path(index)
        if not path.is_file():
            raise self.damaged(index, "missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                checksums = json.loads((f.metadata() or {}).get(CHECKSUMS_KEY, "{}"))
                keys = list(f.keys()) if names is None else [n for n in names if n in f.keys()]
                tensors = {name: f.get_tensor(name) for name in keys}
        except Exception as e:  # safetensors' errors for a truncated file or a garbled header vary
            raise self.damaged(index, f"unreadable ({type(e).__name__}: {e})") from e
        for name, t in tensors.items():
            expected = checksums.get(name)
            if expected is None:
                raise self.damaged(index, f"tensor {name!r} has no checksum (written by an older kdsweep)")
            if tensor_sha256(t) != expected:
                raise self.damaged(
                    index, f"tensor {name!r} fails its checksum (the file was changed after it was written)"
                )
        return tensors

    def scan_shard(self, index: int, scan: ShardScan | None = None, chunk_bytes: int = SCAN_CHUNK_BYTES) -> str | None:
        """What is wrong with a shard, reading it once from its file in chunks (page cache and
        one reused buffer: the memory it takes does not grow with the shard): every tensor's
        SHA-256 against its checksum, and `scan`'s verdict on the values; None when it is sound.
        The same verdicts (and messages) as shard_problem, without holding the shard in memory."""
        import torch
        from safetensors import safe_open

        path = self.shard_path(index)
        if not path.is_file():
            return str(self.damaged(index, "missing"))
        try:
            with open(path, "rb") as f:
                with safe_open(str(path), framework="pt"):  # safetensors' own check of the header
                    pass
                spans, metadata = shard_layout(f)
                checksums = json.loads(metadata.get(CHECKSUMS_KEY, "{}"))
                if scan is not None:
                    scan.begin({name: span.shape for name, span in spans.items()})
                buffer = bytearray(chunk_bytes)
                view = memoryview(buffer)
                for name, span in spans.items():
                    if name not in checksums:
                        return str(
                            self.damaged(index, f"tensor {name!r} has no checksum (written by an older kdsweep)")
                        )
                    digest = hashlib.sha256()
                    row_bytes = max(span.row_bytes, 1)
                    step = max(1, chunk_bytes // row_bytes) * row_bytes
                    if step > len(buffer):  # one row larger than the buffer
                        buffer = bytearray(step)
                        view = memoryview(buffer)
                    f.seek(span.start)
                    for at in range(span.start, span.end, step):
                        n = min(step, span.end - at)
                        if f.readinto(view[:n]) != n:
                            raise ValueError(f"tensor {name!r}: the file ends inside it")
                        digest.update(view[:n])
                        if scan is not None:
                            chunk = torch.frombuffer(buffer, dtype=span.dtype, count=n // span.dtype.itemsize)
                            scan.feed(name, chunk.reshape(-1, *span.shape[1:]), (at - span.start) // row_bytes)
                    if span.start == span.end and scan is not None:
                        scan.feed(name, torch.zeros(span.shape, dtype=span.dtype), 0)
                    if digest.hexdigest() != checksums[name]:
                        what = f"tensor {name!r} fails its checksum (the file was changed after it was written)"
                        return str(self.damaged(index, what))
        except Exception as e:  # safetensors' errors for a truncated file or a garbled header vary
            return str(self.damaged(index, f"unreadable ({type(e).__name__}: {e})"))
        problem = scan.problem() if scan is not None else None
        return str(self.damaged(index, problem)) if problem else None

    def shard_problem(self, index: int, check: ShardCheck | None = None) -> str | None:
        """What is wrong with a shard (missing, unreadable, checksum, or `check`'s verdict on its
        values), or None when it is sound."""
        try:
            shard = self.read_shard(index)
        except CacheDamaged as e:
            return str(e)
        problem = check(shard) if check else None
        return str(self.damaged(index, problem)) if problem else None

    def verify(self, check: ShardCheck | None = None) -> list[int]:
        """Indices of the complete entry's damaged shards; [] when every shard is sound."""
        damaged = []
        for index in range(self.manifest()["num_shards"]):
            problem = self.shard_problem(index, check)
            if problem:
                log.warning("%s", problem)
                damaged.append(index)
        return damaged

    def discard(self, shards: list[int]) -> None:
        """Forget the given shards and the manifest: the entry is rebuilt from its first missing shard."""
        self.manifest_path.unlink(missing_ok=True)
        for index in shards:
            self.shard_path(index).unlink(missing_ok=True)

    def fill(self, num_rows: int, shard_size: int, compute: ShardCompute, check: ShardCheck | None = None) -> int:
        """The one shard/resume loop of every teacher cache: shard i holds rows [i * shard_size,
        (i + 1) * shard_size), computed by compute(start, stop, label) and written atomically. A
        shard already there and sound is kept, so a killed job resumes at its first missing shard;
        a damaged one is recomputed. Returns the number of shards (then call finish)."""
        if shard_size < 1:
            raise ValueError(f"{self.dir}: shard_size {shard_size} (examples per shard) must be at least 1")
        num_shards = max(1, math.ceil(num_rows / shard_size))
        for index in range(num_shards):
            if self.has_shard(index):
                problem = self.shard_problem(index, check)
                if not problem:
                    log.info("shard %d/%d already cached", index + 1, num_shards)
                    continue
                log.warning("%s", problem)  # recomputed below, replacing the file
            start, stop = index * shard_size, min((index + 1) * shard_size, num_rows)
            self.write_shard(index, compute(start, stop, f"shard {index + 1}/{num_shards}"))
            log.info("cached shard %d/%d", index + 1, num_shards)
        return num_shards

    def finish(self, num_shards: int, info: dict) -> dict:
        missing = [i for i in range(num_shards) if not self.has_shard(i)]
        if missing:
            raise RuntimeError(f"{self.dir}: shards {missing} missing, cannot mark complete")
        manifest = {"key": self.key, "key_parts": self.key_parts, "num_shards": num_shards, **info}
        write_json(self.manifest_path, manifest)
        return manifest

    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    def read_checked(self, index: int, check: ShardCheck) -> dict[str, torch.Tensor]:
        """A shard whose checksums and values (`check`) are sound; else CacheDamaged."""
        shard = self.read_shard(index)
        problem = check(shard)
        if problem:
            raise self.damaged(index, problem)
        return shard

    def read_all(self, check: ShardCheck) -> dict[str, torch.Tensor]:
        """Every shard, checked, concatenated along dim 0."""
        import torch

        shards = [self.read_checked(i, check) for i in range(self.manifest()["num_shards"])]
        return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}

    def reuse(self, check: ShardCheck | None = None) -> bool:
        """Whether the entry is complete and sound, so the cache rule can reuse it. A complete
        entry with damaged shards loses them and its manifest (so the rule recomputes them)."""
        if not self.is_complete():
            return False
        damaged = self.verify(check)
        if not damaged:
            return True
        log.warning("teacher cache %s: rebuilding damaged shards %s", self.dir, damaged)
        self.discard(damaged)
        return False


def write_pointer(pointer_path: str | Path, entry: CacheEntry, reused: bool) -> None:
    """The rule's output: which store entry holds this task's teacher outputs."""
    write_json(pointer_path, {"key": entry.key, "dir": str(entry.dir), "reused": reused, "key_parts": entry.key_parts})


def open_pointer(pointer_path: str | Path, data_file: str | Path | None = None) -> CacheEntry:
    """The complete entry a pointer names; with data_file, also check it was built from that file."""
    pointer = read_json(pointer_path)
    entry = CacheEntry(Path(pointer["dir"]).parent, pointer["key_parts"])
    if entry.key != pointer["key"] or not entry.is_complete():
        # E.g. a scratch purge of the store: the pointer (the rule's output) is still up to date,
        # so a plain rerun would not rebuild the entry; forcing the rule does.
        raise RuntimeError(
            f"{pointer_path}: cache entry {pointer['dir']} is missing or incomplete (deleted, or the pointer was "
            f"edited); a plain rerun does not rebuild it, as the pointer is up to date. Rebuild it with: "
            f"{entry.rebuild_command()}"
        )
    if data_file is not None and entry.key_parts["data"] != sha256_file(data_file):
        raise RuntimeError(
            f"{pointer_path}: teacher cache was built from other training data than {data_file}; rebuild it with: "
            f"{entry.rebuild_command()}"
        )
    return entry
