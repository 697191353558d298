"""The memory-mapped top-k cache (mapped_cache.py): its items equal the in-memory read's for every
example; it holds no copy of the cache (a process's anonymous memory stays far below the cache's
size while it reads every example); the streaming check names the same damage as the in-memory
one; and with two processes the damaged shard that rank 1 verifies makes both ranks refuse."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_translation import DAMAGE, MAX_LENGTH, lm, run_cache  # noqa: F401 (lm: the fixture)

from kdsweep.core.cache import CacheDamaged, CacheEntry, open_pointer
from kdsweep.translation.mapped_cache import open_topk_examples, verify_topk_cache
from kdsweep.translation.teacher import read_topk_cache, topk_shard_problem

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(lm, tmp_path_factory):  # noqa: F811
    """The translation tests' cache, in shards of 30 pairs, some pairs dropped (too long)."""
    root = tmp_path_factory.mktemp("mapped")
    run_cache(lm, lm / "data", root / "store", root / "ptr.json", max_length=80)
    entry = open_pointer(root / "ptr.json")
    assert entry.manifest()["dropped_too_long"] > 0 and entry.manifest()["num_shards"] == 4
    return root, entry


def test_mapped_items_equal_the_in_memory_read_for_every_example(cache):
    _, entry = cache
    ids, starts, topk, _ = read_topk_cache(entry)
    mapped = open_topk_examples(entry)
    assert len(mapped) == len(ids) == entry.manifest()["examples"]
    for i in range(len(ids)):
        item = mapped[i]
        assert item["input_ids"] == ids[i] and item["response_start"] == starts[i]
        for key, expected in zip(("topk_logprobs", "topk_indices", "topk_tail"), topk[i], strict=True):
            assert item[key].dtype == expected.dtype and torch.equal(item[key], expected), (i, key)


def test_the_streaming_check_names_the_damage_the_in_memory_check_names(cache, tmp_path):
    """Each DAMAGE case, scanned in chunks of 4 top-k rows (so the bad row lies in a later chunk):
    the message of CacheEntry.shard_problem (the whole shard in memory), word for word."""
    root, entry = cache
    check = topk_shard_problem(entry.manifest()["teacher_vocab_size"])
    for name, (damage, _) in DAMAGE.items():
        copy = CacheEntry(tmp_path / name, entry.key_parts)
        copy.dir.mkdir(parents=True)
        (copy.dir / "manifest.json").write_bytes(entry.manifest_path.read_bytes())
        copy.shard_path(1).write_bytes(entry.shard_path(1).read_bytes())
        assert copy.scan_shard(1, check.scan(), chunk_bytes=64) is None
        damage(copy.shard_path(1), copy, 1)
        expected = copy.shard_problem(1, check)
        assert expected is not None and copy.scan_shard(1, check.scan(), chunk_bytes=64) == expected, name


def _fake_shard(examples: int, length: int, start: int, k: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rows = examples * (length - start)
    return {
        "example_index": torch.arange(examples),
        "lengths": torch.full((examples,), length),
        "response_start": torch.full((examples,), start),
        "input_ids": torch.randint(0, vocab, (examples * length,), generator=g, dtype=torch.int32),
        "prompt_digest": torch.zeros(examples, 16, dtype=torch.uint8),
        "response_digest": torch.zeros(examples, 16, dtype=torch.uint8),
        "topk_logprobs": -torch.rand(rows, k, generator=g).half(),
        "topk_indices": torch.randint(0, vocab, (rows, k), generator=g, dtype=torch.int32),
        "tail_logmass": -torch.rand(rows, generator=g),
        "lse": torch.randn(rows, generator=g),
        "dropped_too_long": torch.zeros(1, dtype=torch.int64),
    }


MEASURE = """
import json, sys
from kdsweep.translation.mapped_cache import open_topk_examples
from kdsweep.core.cache import CacheEntry
from kdsweep.translation.teacher import read_topk_cache

def rss():  # bytes: anonymous memory, and the file pages (page cache) mapped into the process
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

def growth(before):
    return {k: v - before[k] for k, v in rss().items()}

entry, warm_up = (CacheEntry(root, json.loads(sys.argv[2])) for root in (sys.argv[1], sys.argv[4]))
data = open_topk_examples(warm_up) if sys.argv[3] == "mapped" else read_topk_cache(warm_up)  # code pages, buffers
data = None
before = rss()
out = {}
if sys.argv[3] == "mapped":
    data = open_topk_examples(entry)  # every shard verified (checksums and values), then mapped
    out["opened"] = growth(before)
    total = sum(len(data[i]["topk_indices"]) for i in range(len(data)))  # every example read once
    out["read_all"] = growth(before)
else:
    data = read_topk_cache(entry)
    out["opened"] = growth(before)
print(json.dumps(out))
"""


def test_the_mapped_cache_is_not_loaded_into_the_process(tmp_path):
    """A 109 MiB cache (3 shards, k = 64). Verifying it and mapping it adds less than 10 % of the
    cache's size to the process's resident memory (anonymous + mapped file pages: verification
    reads the files through the page cache, unmapped, in 1 MiB chunks); reading every example once adds
    less than 10 % anonymous memory (the rows read are the page cache's, mapped). The control, the
    in-memory read, adds more than the cache (safetensors 0.8 maps the file privately: mostly
    file pages, held for the job; the token ids as Python lists: anonymous)."""
    key = {"kind": "lm_topk"}
    entry = CacheEntry(tmp_path, key)
    for index in range(3):
        entry.write_shard(index, _fake_shard(2000, 64, 16, 64, 128256))
    entry.finish(3, {"teacher_vocab_size": 128256})
    size = sum(entry.shard_path(i).stat().st_size for i in range(3))
    assert size > 100 * 2**20
    warm_up = CacheEntry(tmp_path / "warm_up", key)
    warm_up.dir.mkdir(parents=True)
    warm_up.write_shard(0, _fake_shard(10, 64, 16, 64, 128256))
    warm_up.finish(1, {"teacher_vocab_size": 128256})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    growth = {}
    for mode in ("mapped", "in_memory"):
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(tmp_path), json.dumps(key), mode, str(tmp_path / "warm_up")],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        growth[mode] = json.loads(out.stdout.splitlines()[-1])
    opened, read_all, control = growth["mapped"]["opened"], growth["mapped"]["read_all"], growth["in_memory"]["opened"]
    assert control["RssAnon"] + control["RssFile"] > size, (growth, size)
    assert opened["RssAnon"] + opened["RssFile"] < 0.1 * size, (growth, size)
    assert read_all["RssAnon"] < 0.1 * size, (growth, size)


def test_the_mapped_dataset_holds_an_index_and_views_of_the_files(cache):
    """What MappedTopkExamples keeps: 5 int32 arrays (20 bytes per pair) and, per shard, tensors
    whose memory lies inside the file's mapping (views, not copies)."""
    _, entry = cache
    data = open_topk_examples(entry)
    data[0]
    arrays = {k: v for k, v in vars(data).items() if isinstance(v, np.ndarray)}
    assert sorted(arrays) == ["id_offset", "length", "row_offset", "shard", "start"]
    assert all(a.dtype == np.int32 and len(a) == len(data) for a in arrays.values())
    assert not [k for k, v in vars(data).items() if isinstance(v, torch.Tensor)]
    for mapped, tensors in zip(data._maps, data._tensors, strict=True):
        base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
        for name, t in tensors.items():
            if t.numel():
                assert base <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= base + len(mapped), name


WORKER = """
import json, os, sys
import torch.distributed as dist
from kdsweep.translation.mapped_cache import verify_topk_cache
from kdsweep.core.cache import CacheDamaged, CacheEntry

dist.init_process_group("gloo")
entry = CacheEntry(sys.argv[1], json.loads(sys.argv[2]))
try:
    verify_topk_cache(entry, dist.get_rank(), dist.get_world_size())
    print(json.dumps({"refused": None}))
except CacheDamaged as e:
    print(json.dumps({"refused": str(e)}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("damage", ["flipped byte", "NaN"])
def test_two_processes_refuse_together_when_rank_1_finds_the_damage(cache, tmp_path, damage):
    """Two gloo processes split the shards (rank 0: 0 and 2, rank 1: 1 and 3); shard 1 is damaged:
    rank 0 alone finds nothing, yet both ranks refuse, naming shard 1 and the rebuild command."""
    root, entry = cache
    copy = CacheEntry(tmp_path / "store", entry.key_parts)
    copy.dir.mkdir(parents=True)
    for path in entry.dir.iterdir():
        (copy.dir / path.name).write_bytes(path.read_bytes())
    DAMAGE[damage][0](copy.shard_path(1), copy, 1)
    verify_topk_cache(copy, 0, 2, gather=lambda obj, n: [obj])  # rank 0's own shards are sound
    with pytest.raises(CacheDamaged):
        verify_topk_cache(copy)  # one process verifies every shard
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "store"), json.dumps(entry.key_parts)],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO / "src"),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    refused = [json.loads(out.splitlines()[-1])["refused"] for out, _ in outs]
    assert refused[0] == refused[1] and refused[0] is not None
    assert refused[0].startswith(f"{copy.shard_path(1)}: ") and "snakemake --forcerun cache_teacher_lm" in refused[0]
