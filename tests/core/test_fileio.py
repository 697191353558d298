"""Atomic writes: results readable as the user's umask says (not mkstemp's 0600), and a write the
kernel fails part-way (a file-size limit: EFBIG) leaves no output and no temporary sibling, and
the error names the path."""

import errno
import os
import resource
import stat

import pytest

from kdsweep.core.io import atomic_path, current_umask, write_json, write_jsonl

# What open() and mkdir() give under each umask (0666 and 0777 less the umask's bits).
MODES = {0o022: (0o644, 0o755), 0o027: (0o640, 0o750), 0o077: (0o600, 0o700)}


@pytest.fixture
def umask():
    """Set the umask for one test and restore the caller's after it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    for mask in (0o022, 0o027, 0o002):
        umask(mask)
        assert current_umask() == mask
        assert os.umask(mask) == mask  # still set


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_files_and_folders_get_the_umask_modes(tmp_path, umask, mask):
    umask(mask)
    file_mode, dir_mode = MODES[mask]
    write_json(tmp_path / "out" / "metrics.json", {"bleu": 1.0})
    write_jsonl(tmp_path / "out" / "rows.jsonl", [{"id": 1}])
    with atomic_path(tmp_path / "out" / "model", is_dir=True) as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
        (tmp / "sub").mkdir()
    (tmp_path / "plain.json").write_text("{}")  # what the OS gives a plain open() and mkdir()
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "plain.json") == file_mode and mode(tmp_path / "plain") == dir_mode
    assert mode(tmp_path / "out" / "metrics.json") == file_mode
    assert mode(tmp_path / "out" / "rows.jsonl") == file_mode
    assert mode(tmp_path / "out" / "model") == dir_mode
    assert mode(tmp_path / "out" / "model" / "weights.bin") == file_mode
    assert mode(tmp_path / "out" / "model" / "sub") == dir_mode


def test_a_model_saved_into_an_atomic_folder_keeps_the_umask_modes(tmp_path, umask):
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    umask(0o027)
    file_mode, dir_mode = MODES[0o027]
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
    with atomic_path(tmp_path / "model", is_dir=True) as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)  # safetensors writes its weights 0600
    files = [p for p in (tmp_path / "model").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "model.safetensors"}
    assert {p.name: mode(p) for p in files} == {p.name: file_mode for p in files}
    assert mode(tmp_path / "model") == dir_mode
    with atomic_path(tmp_path / "shard-00000.safetensors") as tmp:  # a teacher-cache shard
        save_file({"lse": torch.zeros(3)}, str(tmp))
    assert mode(tmp_path / "shard-00000.safetensors") == file_mode


@pytest.fixture
def file_size_limit():
    """Cap the size of files this process writes (RLIMIT_FSIZE): a write past it fails in the kernel
    with EFBIG (Python ignores SIGXFSZ), part of the data written, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


LIMIT = 64 * 1024
ROWS = [{"id": i, "source": "x" * 100} for i in range(2000)]  # about 240 KB of JSON lines


def assert_failed_cleanly(error, folder, target):
    assert error.value.errno == errno.EFBIG
    assert str(target) in str(error.value)
    assert list(folder.iterdir()) == []  # neither the target nor a temporary sibling


def test_a_write_failing_part_way_leaves_nothing_and_names_the_path(tmp_path, file_size_limit):
    folder = tmp_path / "eval"
    folder.mkdir()
    target = folder / "base.translations.jsonl"
    file_size_limit(LIMIT)
    with pytest.raises(OSError) as error:
        write_jsonl(target, ROWS)
    file_size_limit(resource.RLIM_INFINITY)
    assert_failed_cleanly(error, folder, target)
    target = folder / "base.json"
    file_size_limit(LIMIT)
    with pytest.raises(OSError) as error:
        write_json(target, {"rows": ROWS})
    file_size_limit(resource.RLIM_INFINITY)
    assert_failed_cleanly(error, folder, target)


def test_a_folder_whose_file_fails_part_way_leaves_nothing(tmp_path, file_size_limit):
    folder = tmp_path / "distill"
    folder.mkdir()
    target = folder / "model"
    file_size_limit(LIMIT)
    with pytest.raises(OSError) as error, atomic_path(target, is_dir=True) as tmp:
        (tmp / "config.json").write_text("{}")
        with open(tmp / "model.safetensors", "wb") as f:
            for _ in range(16):
                f.write(b"\0" * 16384)  # the fifth block crosses the limit
    file_size_limit(resource.RLIM_INFINITY)
    assert_failed_cleanly(error, folder, target)
