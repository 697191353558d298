"""The memory-mapped teacher cache (mapped_cache.py), top-k and sampled: its items equal the
in-memory read's for every example; it holds no copy of the cache (a process's anonymous memory stays far below the cache's
size while it reads every example); the streaming check names the same damage as the in-memory
one; and with two processes the damaged shard that rank 1 verifies makes both ranks refuse."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_translation import DAMAGE, MAX_LENGTH, lm, run_cache  # noqa: F401 (lm: the fixture)

from kdsweep.core.bitpack import pack_rows, unpack_rows
from kdsweep.core.cache import CacheDamaged, CacheEntry, open_pointer
from kdsweep.translation.mapped_cache import open_cache_examples, verify_cache
from kdsweep.translation.teacher import cache_shard_check, entry_format, read_cache

REPO = Path(__file__).resolve().parents[2]


def _cache(lm, root, **settings):  # noqa: F811
    run_cache(lm, lm / "data", root / "store", root / "ptr.json", max_length=80, **settings)
    entry = open_pointer(root / "ptr.json")
    assert entry.manifest()["dropped_too_long"] > 0 and entry.manifest()["num_shards"] == 4
    return root, entry


@pytest.fixture(scope="module")
def cache(lm, tmp_path_factory):  # noqa: F811
    """The translation tests' top-k cache, in shards of 30 pairs, some pairs dropped (too long)."""
    return _cache(lm, tmp_path_factory.mktemp("mapped"))


@pytest.fixture(scope="module")
def sampled(lm, tmp_path_factory):  # noqa: F811
    """The same pairs as a sampled cache (12 draws at T = 2)."""
    return _cache(lm, tmp_path_factory.mktemp("sampled"), method="sampled", draws=12, temperature=2.0, seed=0)


@pytest.mark.parametrize("which", ["cache", "sampled"])
def test_mapped_items_equal_the_in_memory_read_for_every_example(which, request):
    _, entry = request.getfixturevalue(which)
    ids, starts, teacher, _ = read_cache(entry)
    mapped = open_cache_examples(entry)
    assert len(mapped) == len(ids) == entry.manifest()["examples"]
    keys = {
        "cache": {"topk_logprobs", "topk_indices", "topk_tail"},
        "sampled": {"sample_ids", "sample_counts", "teacher_entropy"},
    }
    for i in range(len(ids)):
        item = mapped[i]
        assert item["input_ids"] == ids[i] and item["response_start"] == starts[i]
        assert set(teacher[i]) == keys[which] and set(item) == keys[which] | {"input_ids", "response_start"}
        for key, expected in teacher[i].items():
            assert item[key].dtype == expected.dtype and torch.equal(item[key], expected), (i, key)


def test_the_streaming_check_names_the_damage_the_in_memory_check_names(cache, tmp_path):
    """Each DAMAGE case, scanned in chunks of 4 top-k rows (so the bad row lies in a later chunk):
    the message of CacheEntry.shard_problem (the whole shard in memory), word for word."""
    root, entry = cache
    check = cache_shard_check(entry_format(entry))
    for name, (damage, _) in DAMAGE.items():
        copy = CacheEntry(tmp_path / name, entry.key_parts)
        copy.dir.mkdir(parents=True)
        (copy.dir / "manifest.json").write_bytes(entry.manifest_path.read_bytes())
        copy.shard_path(1).write_bytes(entry.shard_path(1).read_bytes())
        assert copy.scan_shard(1, check.scan(), chunk_bytes=64) is None
        damage(copy.shard_path(1), copy, 1)
        expected = copy.shard_problem(1, check)
        assert expected is not None and copy.scan_shard(1, check.scan(), chunk_bytes=64) == expected, name


def _sampled_rows(shard, entry):
    fmt = entry_format(entry)
    ids = unpack_rows(shard["sample_ids"].numpy(), fmt.index_bits, fmt.draws)
    counts = unpack_rows(shard["sample_counts"].numpy(), fmt.count_bits, fmt.draws)
    return fmt, ids, counts


def _count_lost(path, entry, index):  # a draw count off by one in row 4: its counts sum to 11
    shard = entry.read_shard(index)
    fmt, _, counts = _sampled_rows(shard, entry)
    counts[4, 0] -= 1
    shard["sample_counts"] = torch.from_numpy(pack_rows(counts, fmt.count_bits))
    entry.write_shard(index, shard)


def _sampled_id_outside(path, entry, index):
    shard = entry.read_shard(index)
    fmt, ids, _ = _sampled_rows(shard, entry)
    ids[6, 0] = fmt.vocab_size + 3
    shard["sample_ids"] = torch.from_numpy(pack_rows(ids, fmt.index_bits))
    entry.write_shard(index, shard)


def _nan_entropy(path, entry, index):
    shard = entry.read_shard(index)
    shard["entropy"][2] = float("nan")
    entry.write_shard(index, shard)


def _infinite_entropy(path, entry, index):  # above log V: no distribution over V tokens has it
    shard = entry.read_shard(index)
    shard["entropy"][7] = float("inf")
    entry.write_shard(index, shard)


SAMPLED_DAMAGE = {
    "count lost": (
        _count_lost,
        r"draw counts that do not sum to the draws in 1 of \d+ token rows \(the first: row 4\)",
    ),
    "id outside": (
        _sampled_id_outside,
        r"sampled ids outside the teacher's vocabulary in 1 of \d+ token rows \(the first: row 6\)",
    ),
    "NaN entropy": (
        _nan_entropy,
        r"a teacher entropy outside \[0, log V\] in 1 of \d+ token rows \(the first: row 2\)",
    ),
    "inf entropy": (
        _infinite_entropy,
        r"a teacher entropy outside \[0, log V\] in 1 of \d+ token rows \(the first: row 7\)",
    ),
}


@pytest.mark.parametrize("damage", sorted(SAMPLED_DAMAGE))
def test_a_damaged_sampled_shard_is_named_alike_streamed_or_in_memory(sampled, tmp_path, damage):
    """Each damage of a sampled shard (checksums re-written to match: a writer's bug) is refused,
    with the same message streamed in chunks of 64 bytes and read whole, before any training."""
    root, entry = sampled
    check = cache_shard_check(entry_format(entry))
    copy = CacheEntry(tmp_path, entry.key_parts)
    copy.dir.mkdir(parents=True)
    for path in entry.dir.iterdir():
        (copy.dir / path.name).write_bytes(path.read_bytes())
    assert copy.scan_shard(1, check.scan(), chunk_bytes=64) is None
    damage_shard, message = SAMPLED_DAMAGE[damage]
    damage_shard(copy.shard_path(1), copy, 1)
    expected = copy.shard_problem(1, check)
    assert expected is not None and re.search(message, expected), expected
    assert copy.scan_shard(1, check.scan(), chunk_bytes=64) == expected
    with pytest.raises(CacheDamaged, match=message):
        open_cache_examples(copy)


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
        "topk_ids": torch.from_numpy(pack_rows(torch.randint(0, vocab, (rows, k), generator=g).numpy(), 17)),
        "tail_logmass": -torch.rand(rows, generator=g),
        "lse": torch.randn(rows, generator=g),
        "dropped_too_long": torch.zeros(1, dtype=torch.int64),
    }


MEASURE = """
import json, sys
from kdsweep.translation.mapped_cache import open_cache_examples
from kdsweep.core.cache import CacheEntry
from kdsweep.translation.teacher import read_cache

def rss():  # bytes: anonymous memory, and the file pages (page cache) mapped into the process
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

def growth(before):
    return {k: v - before[k] for k, v in rss().items()}

entry, warm_up = (CacheEntry(root, json.loads(sys.argv[2])) for root in (sys.argv[1], sys.argv[4]))
data = open_cache_examples(warm_up) if sys.argv[3] == "mapped" else read_cache(warm_up)  # code pages, buffers
data = None
before = rss()
out = {}
if sys.argv[3] == "mapped":
    data = open_cache_examples(entry)  # every shard verified (checksums and values), then mapped
    out["opened"] = growth(before)
    total = sum(len(data[i]["topk_indices"]) for i in range(len(data)))  # every example read once
    out["read_all"] = growth(before)
else:
    data = read_cache(entry)
    out["opened"] = growth(before)
print(json.dumps(out))
"""


def test_the_mapped_cache_is_not_loaded_into_the_process(tmp_path):
    """A 115 MiB cache (3 shards, k = 64, ids packed in 17 bits). Verifying it and mapping it adds less than 10 % of the
    cache's size to the process's resident memory (anonymous + mapped file pages: verification
    reads the files through the page cache, unmapped, in 1 MiB chunks); reading every example once adds
    less than 10 % anonymous memory (the rows read are the page cache's, mapped). The control, the
    in-memory read, adds more than the cache (safetensors 0.8 maps the file privately: mostly
    file pages, held for the job; the token ids as Python lists: anonymous)."""
    key = {"kind": "lm_topk", "method": "topk", "top_k": 64, "value_dtype": "float16"}
    entry = CacheEntry(tmp_path, key)
    for index in range(3):
        entry.write_shard(index, _fake_shard(3000, 64, 16, 64, 128256))
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
    """What MappedCacheExamples keeps: 5 int32 arrays (20 bytes per pair) and, per shard, tensors
    whose memory lies inside the file's mapping (views, not copies)."""
    _, entry = cache
    data = open_cache_examples(entry)
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
from kdsweep.translation.mapped_cache import verify_cache
from kdsweep.core.cache import CacheDamaged, CacheEntry

dist.init_process_group("gloo")
entry = CacheEntry(sys.argv[1], json.loads(sys.argv[2]))
try:
    verify_cache(entry, dist.get_rank(), dist.get_world_size())
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
    verify_cache(copy, 0, 2, gather=lambda obj, n: [obj])  # rank 0's own shards are sound
    with pytest.raises(CacheDamaged):
        verify_cache(copy)  # one process verifies every shard
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
