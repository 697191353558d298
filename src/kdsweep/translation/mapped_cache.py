"""The teacher cache (either method) read memory-mapped, for distillation at scale.

read_cache (translation/teacher.py) copies every shard into memory, in every process: at
full Europarl (~400 B per response token at k = 64) that is tens of GB per rank. Here instead:

- Verification streams each shard once per job from its file (CacheEntry.scan_shard: SHA-256 of
  every tensor and the value check, CacheScan, in chunks through one reused buffer: the
  bytes pass through the page cache, not the process's memory). With several processes, rank r
  verifies shards r, r + W, r + 2W, ... and the ranks gather their verdicts, so every rank
  refuses a damaged cache together, naming the first damaged shard and the command that
  rebuilds it, before any training.
- Training maps every shard file read-only (mmap) and keeps only a small index per example in
  memory: shard, offset of its token ids and of its first token row within the shard, length,
  response start (5 x int32 = 20 bytes per pair). `__getitem__` copies just that example's token
  ids and teacher rows out of the mapping (unpacking bit-packed ids: cache_format.py), so a rank touches only the pages of the examples of its
  own batches (the Trainer's distributed sampler gives each rank its own), and the pages are the
  kernel's page cache, shared by every rank of the node that maps the same file: no rank holds an
  anonymous copy of the cache.

The cache is never written in place (the cache rule writes shards by atomic rename); a shard
replaced between a job's verification and its mapping (a rebuild while the job starts) would be
mapped unverified: do not rebuild a cache that running jobs read.
"""

from __future__ import annotations

import logging
import mmap
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from kdsweep.core.cache import CacheDamaged, CacheEntry, TensorSpan, shard_layout
from kdsweep.translation.teacher import cache_shard_check, entry_format

log = logging.getLogger(__name__)


def gather_objects(obj, processes: int) -> list:
    """obj of every process (torch.distributed's process group), in rank order."""
    if processes == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * processes
    dist.all_gather_object(out, obj)
    return out


def verify_cache(
    entry: CacheEntry, rank: int = 0, processes: int = 1, gather: Callable[[object, int], list] = gather_objects
) -> None:
    """Every shard's checksums and values, each shard streamed once by one process (rank r: shards
    r, r + W, ...); every process raises the same CacheDamaged (the first damaged shard) when any
    shard is damaged. Every process must call it (a collective when processes > 1)."""
    manifest = entry.manifest()
    check = cache_shard_check(entry_format(entry))
    mine = []
    for index in range(rank, manifest["num_shards"], processes):
        try:
            problem = entry.scan_shard(index, check.scan())
        except Exception as e:  # never leave the other processes waiting in the gather
            problem = str(entry.damaged(index, f"unreadable ({type(e).__name__}: {e})"))
        if problem:
            mine.append((index, problem))
    problems = sorted(p for part in gather(mine, processes) for p in part)
    if problems:
        for _, problem in problems:
            log.warning("%s", problem)
        raise CacheDamaged(problems[0][1])


def _view(mapped: mmap.mmap, span: TensorSpan) -> torch.Tensor:
    """A zero-copy tensor over a span of a read-only mapping (never written: items are copies)."""
    if span.start == span.end:
        return torch.zeros(span.shape, dtype=span.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        flat = torch.frombuffer(mapped, dtype=span.dtype, count=(span.end - span.start) // span.dtype.itemsize,
                                offset=span.start)  # fmt: skip
    return flat.reshape(span.shape)


class MappedCacheExamples(Dataset):
    """The cache's examples as TranslationExamples gives them (input_ids, response_start and the
    teacher's rows, decoded), sliced on demand from memory-mapped shards. Holds 20 bytes per
    example (the index) plus the mappings; reads nothing it is not asked for. Verify the cache
    first (verify_cache, or open_cache_examples)."""

    def __init__(self, entry: CacheEntry):
        self.fmt = entry_format(entry)
        self.mapped = ("input_ids", *self.fmt.dtypes())  # what an item is sliced from
        self.paths = [entry.shard_path(i) for i in range(entry.manifest()["num_shards"])]
        self._maps: list[mmap.mmap] | None = None
        self._tensors: list[dict[str, torch.Tensor]] | None = None
        shard, id_offset, row_offset, length, start = [], [], [], [], []
        for index, tensors in enumerate(self._mapped()):
            lengths = tensors["lengths"].numpy().astype(np.int64)
            starts = tensors["response_start"].numpy().astype(np.int64)
            ids_end, rows_end = np.cumsum(lengths), np.cumsum(lengths - starts)
            if len(lengths) and max(ids_end[-1], rows_end[-1]) >= 2**31:
                raise ValueError(f"{self.paths[index]}: a shard of over 2**31 tokens")
            shard.append(np.full(len(lengths), index, dtype=np.int32))
            id_offset.append((ids_end - lengths).astype(np.int32))
            row_offset.append((rows_end - (lengths - starts)).astype(np.int32))
            length.append(lengths.astype(np.int32))
            start.append(starts.astype(np.int32))
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)  # noqa: E731
        self.shard, self.id_offset, self.row_offset = cat(shard), cat(id_offset), cat(row_offset)
        self.length, self.start = cat(length), cat(start)

    def _mapped(self) -> list[dict[str, torch.Tensor]]:
        """Per shard, its tensors as views of the file's mapping (mapped on first use in a process)."""
        if self._tensors is None:
            maps, tensors = [], []
            for path in self.paths:
                with open(path, "rb") as f:
                    spans, _ = shard_layout(f)
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                maps.append(mapped)
                tensors.append(
                    {name: _view(mapped, spans[name]) for name in (*self.mapped, "lengths", "response_start")}
                )
            self._maps, self._tensors = maps, tensors
        return self._tensors

    def __getstate__(self) -> dict:  # pickled (a DataLoader worker): the mappings are made again there
        return {**self.__dict__, "_maps": None, "_tensors": None}

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, i: int) -> dict:
        t = self._mapped()[int(self.shard[i])]
        at, length, start, row = (
            int(self.id_offset[i]),
            int(self.length[i]),
            int(self.start[i]),
            int(self.row_offset[i]),
        )
        end = row + length - start
        rows = {name: t[name][row:end] for name in self.fmt.dtypes()}
        return {
            "input_ids": t["input_ids"][at : at + length].tolist(),
            "response_start": start,
            **self.fmt.decode(rows),
        }


def open_cache_examples(entry: CacheEntry, rank: int = 0, processes: int = 1) -> MappedCacheExamples:
    """The verified cache (verify_cache: split over the processes, CacheDamaged on every
    process when a shard is damaged), memory-mapped."""
    verify_cache(entry, rank, processes)
    return MappedCacheExamples(entry)
