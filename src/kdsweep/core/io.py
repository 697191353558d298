"""Atomic writes and content hashes. Nothing a rerun trusts is ever half-written:
every file goes to a temporary name in the same directory and is renamed into place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status; elsewhere os.umask must set it to
    read it (it is process-wide): set to 0o077 for that instant, so a file another thread creates
    meanwhile is only more private, and set back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, umask: int | None = None) -> None:
    """Give `path` (and, for a folder, everything under it) the modes a plain open() and mkdir()
    give under the umask: files 0666 and folders 0777 less its bits (a file's execute bits are kept,
    less the umask's). Writers that go through a temporary file of their own (tempfile's mkstemp
    and mkdtemp; safetensors' save_file, hence save_pretrained's weights) leave 0600/0700, which
    a lab group sharing the results folder could not read."""
    umask = current_umask() if umask is None else umask

    def chmod_file(name: str) -> None:
        os.chmod(name, (0o666 | (stat.S_IMODE(os.stat(name).st_mode) & 0o111)) & ~umask)

    if not os.path.isdir(path):
        chmod_file(path)
        return
    os.chmod(path, 0o777 & ~umask)
    for root, dirs, files in os.walk(path):  # symbolic links are not followed, nor changed
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                chmod_file(os.path.join(root, name))


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it to `path` only if the block succeeds.

    What is renamed into place has the modes a plain open()/mkdir() gives under the current umask
    (apply_umask), not mkstemp's 0600 or mkdtemp's 0700. If the block fails, the sibling is removed
    and `path` is left as it was; a full disk (ENOSPC, EDQUOT, or EFBIG past a file-size limit),
    which the kernel reports without a file name, is re-raised naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        apply_umask(tmp)
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise OSError(
                error.errno, f"{error.strerror} while writing {path}; no partial output was left", str(path)
            ) from error
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> str:
    """Hash of every file under `root` (relative names and contents), optionally only some suffixes."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if suffixes and not p.name.endswith(suffixes):
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
