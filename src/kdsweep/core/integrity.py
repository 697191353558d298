"""Is a local model or tokenizer folder whole? Cheap checks, run when the config is validated
(for the folders it names) and again by the loaders (for folders kdsweep wrote in an earlier job),
so a missing folder, an empty one left by a failed job, a truncated model.safetensors or a missing
tokenizer file fails with its path and what is wrong, not deep inside transformers.

No torch or transformers here: the Snakefile imports this module before planning any job.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


class ModelFolderError(ValueError):
    pass


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a .safetensors file (its 8-byte header length, JSON header, and the data
    size the header declares against the file's size), or None. Catches truncation and garbled
    headers without reading the tensors."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        header_len = struct.unpack("<Q", head)[0]
        if header_len > size - 8:
            return f"header of {header_len} bytes in a {size}-byte file (truncated, or not a safetensors file)"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"unreadable header ({e})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{size} bytes where its header declares {8 + header_len + end} (truncated or appended to)"
    return None


def model_folder_problem(path: str | Path, *, weights: bool = True, tokenizer: bool = False) -> str | None:
    """What is wrong with a local model folder, or None: config.json, the weight files (every
    shard an index names; safetensors checked by safetensors_problem) and, with tokenizer=True,
    the tokenizer's files."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory" if path.exists() else "does not exist"
    if not any(path.iterdir()):
        return "empty (left by a job that failed?)"
    if weights:
        config = path / "config.json"
        if not config.is_file():
            return "no config.json"
        try:
            json.loads(config.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"config.json is not valid JSON ({e})"
        files = sorted(path.glob("*.safetensors"))
        for index in path.glob("*.safetensors.index.json"):
            names = set(json.loads(index.read_text())["weight_map"].values())
            missing = sorted(n for n in names if not (path / n).is_file())
            if missing:
                return f"{index.name} names missing weight files {missing}"
        if not files and not list(path.glob("*.bin")):
            return "no weights (*.safetensors or *.bin)"
        for file in files:
            problem = safetensors_problem(file)
            if problem:
                return f"{file.name}: {problem}"
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return f"no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
    if tokenizer and (path / "tokenizer.json").is_file():
        try:
            json.loads((path / "tokenizer.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"tokenizer.json is not valid JSON ({e})"
    return None


def check_model_folder(path: str | Path, what: str, *, weights: bool = True, tokenizer: bool = False) -> None:
    """Raise ModelFolderError naming `what` (a config key or a role) and the path."""
    problem = model_folder_problem(path, weights=weights, tokenizer=tokenizer)
    if problem:
        raise ModelFolderError(f"{what}: local folder {path}: {problem}")
