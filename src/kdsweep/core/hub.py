"""Hub assets for offline compute nodes: list what a config downloads, prefetch it, resolve it.

Compute nodes have no internet. On a node that has it (a login node), `prefetch_from_config`
downloads every model, tokenizer, dataset and COMET checkpoint the config names into the
Hugging Face cache (HF_HOME, shared with the compute nodes) and writes a manifest with the
revision (commit hash) of each. Jobs then run with HF_HUB_OFFLINE=1: the loaders resolve hub
names through `hub_path` to the cached snapshot folder, and an asset that is not there fails
the stage with `MissingAsset`, whose message gives the exact prefetch command to run.

Datasets are prefetched as their parquet files, one folder per config (nyu-mll/glue's
`mnli/...parquet`, Helsinki-NLP/europarl's `en-fr/...parquet`) plus the README whose `configs:`
tell `datasets.load_dataset(<snapshot folder>, config)` which files make which split.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id

from kdsweep.core.io import write_json

log = logging.getLogger(__name__)

PREFETCH_COMMAND_ENV = "KDSWEEP_PREFETCH_COMMAND"
DEFAULT_PREFETCH_COMMAND = "snakemake prefetch_assets --cores 1 --configfile <your config>"

# Files fetched per kind. Weights as safetensors only (pytorch_model*.bin is fetched instead
# when a repo has no safetensors); no TF/Flax/ONNX weights, no Llama `original/*.pth`.
TOKENIZER_PATTERNS = ("*.json", "*.model", "*.txt", "*.tiktoken")
MODEL_PATTERNS = ("*.safetensors", *TOKENIZER_PATTERNS)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
BIN_WEIGHT_PATTERNS = ("pytorch_model*.bin",)
COMET_PATTERNS = ("*.yaml", "checkpoints/*", "*.md")
# A COMET checkpoint holds its encoder's weights; the encoder's config and tokenizer come from the hub.
COMET_ENCODER_PATTERNS = ("*.json", "*.model", "*.txt")


class MissingAsset(RuntimeError):
    """A hub asset a stage needs is not in the local Hugging Face cache, and the hub is off."""


@dataclass
class Asset:
    """One hub repository to prefetch and what in the config needs it."""

    repo_id: str
    repo_type: str  # "model" | "dataset"
    kind: str  # "model" | "tokenizer" | "dataset" | "comet" | "comet-encoder"
    allow_patterns: list[str] = field(default_factory=list)
    used_by: str = ""


def prefetch_command() -> str:
    """The command that prefetches the config's assets (set by the workflow in KDSWEEP_PREFETCH_COMMAND)."""
    return os.environ.get(PREFETCH_COMMAND_ENV) or DEFAULT_PREFETCH_COMMAND


def missing_message(what: str, cache_dir: str | None = None, detail: str = "") -> str:
    """Why `what` cannot be loaded here, and the command that fixes it."""
    cache_dir = cache_dir or constants.HF_HUB_CACHE
    return (
        f"Not in the Hugging Face cache {cache_dir}: {what}{detail}. Nothing can be downloaded here "
        "(HF_HUB_OFFLINE=1, as on compute nodes, or no connection): on a node with internet access and "
        f"the same HF_HOME, prefetch the config's assets:\n    {prefetch_command()}"
    )


def is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _is_hub_name(name: str) -> bool:
    """A string that names a hub repo rather than a local path (an existing path is local)."""
    return not Path(name).exists() and is_repo_id(name)


def _has_match(folder: str | Path, patterns) -> bool:
    """Whether some file under `folder` (relative posix path) matches one of `patterns`."""
    folder = Path(folder)
    return any(
        any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pat) for pat in patterns)
        for p in folder.rglob("*")
        if p.is_file()
    )


def hub_path(
    name_or_path: str, repo_type: str = "model", *, needs: tuple[str, ...] = (), cache_dir: str | None = None
) -> str:
    """Where a loader should read `name_or_path` from.

    An existing local path (or a string that cannot be a repo id) is returned unchanged. A hub
    name whose snapshot is in the cache (and has a file matching one of `needs`, if given) gives
    the snapshot folder. Not cached: MissingAsset when the hub is off, else the name unchanged
    (the library downloads it)."""
    if not _is_hub_name(name_or_path):
        return name_or_path
    cache_dir = str(cache_dir or constants.HF_HUB_CACHE)
    detail = ""
    try:
        folder = snapshot_download(name_or_path, repo_type=repo_type, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        folder = None
    if folder is not None and needs and not _has_match(folder, needs):
        detail = f" (its snapshot {folder} has no {' or '.join(needs)})"
        folder = None
    if folder is not None:
        return folder
    if constants.HF_HUB_OFFLINE:
        raise MissingAsset(missing_message(f"{repo_type} {name_or_path!r}", cache_dir, detail))
    return name_or_path


def _add(assets: dict, asset: Asset) -> None:
    """Add `asset`, merging patterns and users with an earlier entry for the same repo."""
    key = (asset.repo_id, asset.repo_type)
    if key not in assets:
        assets[key] = asset
        return
    known = assets[key]
    known.allow_patterns += [p for p in asset.allow_patterns if p not in known.allow_patterns]
    if asset.used_by not in known.used_by.split("; "):
        known.used_by += f"; {asset.used_by}"
    if known.kind == "tokenizer" and asset.kind == "model":
        known.kind = "model"


def _role_assets(assets: dict, block: dict, role: str, task: str, label: str) -> None:
    """The model and tokenizer a teacher/student block names, "{task}" replaced."""
    spec = block[role]
    model = spec["model"].replace("{task}", task) if isinstance(spec["model"], str) else None
    if model and _is_hub_name(model):
        _add(assets, Asset(model, "model", "model", list(MODEL_PATTERNS), f"{role} ({label})"))
    tokenizer = spec.get("tokenizer")
    tokenizer = tokenizer.replace("{task}", task) if tokenizer else None
    if tokenizer and tokenizer != model and _is_hub_name(tokenizer):
        _add(assets, Asset(tokenizer, "model", "tokenizer", list(TOKENIZER_PATTERNS), f"{role} tokenizer ({label})"))


def config_assets(config: dict) -> list[Asset]:
    """Every hub asset a validated config downloads, once each (local paths, models built from a
    config and non-hub data sources need none). The COMET encoder is found at prefetch time."""
    # Here, not at the top: COMET's environment imports this module (hub_path) and has no jsonschema.
    from kdsweep.core.config import translation_task

    assets: dict[tuple[str, str], Asset] = {}
    if "glue" in config:
        glue = config["glue"]
        if glue["source"] == "hub":
            patterns = ["README.md", *(f"{task}/*" for task in glue["tasks"])]
            used_by = f"prepare (glue {', '.join(glue['tasks'])})"
            _add(assets, Asset(glue["hub_dataset"], "dataset", "dataset", patterns, used_by))
        for task in glue["tasks"]:
            for role in ("teacher", "student"):
                _role_assets(assets, glue, role, task, f"glue {task}")
    if "translation" in config:
        tr = config["translation"]
        label = f"translation {tr['source_lang']}-{tr['target_lang']}"
        if tr["source"] == "hub":
            patterns = ["README.md", f"{tr['hub_config']}/*"]
            _add(assets, Asset(tr["hub_dataset"], "dataset", "dataset", patterns, f"prepare ({label})"))
        for role in ("teacher", "student"):
            _role_assets(assets, tr, role, translation_task(config), label)
        comet = tr["evaluate"]["comet"]
        if comet["enabled"] and not comet["model"].endswith(".ckpt") and _is_hub_name(comet["model"]):
            _add(assets, Asset(comet["model"], "model", "comet", list(COMET_PATTERNS), f"evaluate ({label}, COMET)"))
    return list(assets.values())


def comet_encoder(checkpoint_dir: str | Path) -> str | None:
    """The encoder a downloaded COMET model names (`pretrained_model` in its hparams.yaml)."""
    hparams = Path(checkpoint_dir) / "hparams.yaml"
    if not hparams.is_file():
        return None
    return (yaml.safe_load(hparams.read_text()) or {}).get("pretrained_model")


def _download(asset: Asset, cache_dir: str) -> str:
    """Snapshot folder of `asset` (downloaded, or from the cache when the hub is off), checked."""

    def fetch(patterns) -> str:
        try:
            return snapshot_download(
                asset.repo_id, repo_type=asset.repo_type, allow_patterns=list(patterns), cache_dir=cache_dir
            )
        except LocalEntryNotFoundError as e:
            raise MissingAsset(missing_message(f"{asset.repo_type} {asset.repo_id!r}", cache_dir)) from e

    folder = fetch(asset.allow_patterns)
    if asset.kind == "model" and not _has_match(folder, WEIGHT_PATTERNS):
        folder = fetch([*asset.allow_patterns, *BIN_WEIGHT_PATTERNS])  # an older repo: .bin weights only
    if asset.kind == "model":
        needed = [WEIGHT_PATTERNS]
    elif asset.kind == "dataset":  # every config folder asked for must have files
        needed = [(p,) for p in asset.allow_patterns if p != "README.md"]
    elif asset.kind == "comet":
        needed = [("checkpoints/model.ckpt",), ("hparams.yaml",)]
    else:
        needed = [("*",)]
    for patterns in needed:
        if not _has_match(folder, patterns):
            detail = f" (its snapshot {folder} has no {' or '.join(patterns)})"
            if constants.HF_HUB_OFFLINE:
                raise MissingAsset(missing_message(f"{asset.repo_type} {asset.repo_id!r}", cache_dir, detail))
            raise RuntimeError(
                f"{asset.repo_type} {asset.repo_id!r}{detail}: kdsweep fetches {asset.allow_patterns} for a "
                f"{asset.kind}; does the repo have that layout?"
            )
    return folder


def prefetch(assets: list[Asset], manifest_out: str | Path, cache_dir: str | None = None) -> dict:
    """Download every asset into the Hugging Face cache (a COMET model's encoder config and
    tokenizer too) and write the manifest atomically: {"hf_hub_cache", "assets": [{"repo_id",
    "repo_type", "kind", "revision", "path", "used_by"}]}. Assets that cannot be had are all named
    in one MissingAsset, after the others are fetched."""
    cache_dir = str(cache_dir or constants.HF_HUB_CACHE)
    queue, entries, missing = list(assets), [], []
    while queue:
        asset = queue.pop(0)
        try:
            folder = _download(asset, cache_dir)
        except MissingAsset as e:
            missing.append(f"{asset.repo_id} ({asset.kind}, {asset.used_by})")
            log.error("%s", e)
            continue
        revision = Path(folder).name
        log.info("%s %s @ %s: %s", asset.kind, asset.repo_id, revision, folder)
        entries.append(
            {
                "repo_id": asset.repo_id,
                "repo_type": asset.repo_type,
                "kind": asset.kind,
                "revision": revision,
                "path": folder,
                "used_by": asset.used_by,
            }
        )
        encoder = comet_encoder(folder) if asset.kind == "comet" else None
        if encoder and _is_hub_name(encoder) and all(a.repo_id != encoder for a in queue):
            queue.insert(
                0,
                Asset(encoder, "model", "comet-encoder", list(COMET_ENCODER_PATTERNS), f"{asset.repo_id} encoder"),
            )
    if missing:
        raise MissingAsset(missing_message("; ".join(missing), cache_dir))
    manifest = {"hf_hub_cache": cache_dir, "assets": entries}
    write_json(manifest_out, manifest)
    return manifest


def hub_environment(config: dict, assets: list[Asset], configfiles) -> bool:
    """Set up the environment the workflow's jobs inherit (called by the Snakefile): HF_HOME from
    `assets.hf_home`, the prefetch command for MissingAsset messages, and with `assets.offline`
    the hub's offline modes when the config names hub assets. Returns whether prefetch_assets may
    go online: not when Snakemake itself was started with HF_HUB_OFFLINE=1."""
    online = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on")
    if config["assets"]["hf_home"]:
        os.environ["HF_HOME"] = config["assets"]["hf_home"]
    files = " ".join(shlex.quote(str(f)) for f in configfiles)
    os.environ[PREFETCH_COMMAND_ENV] = (
        f"snakemake prefetch_assets --forcerun prefetch_assets --cores 1 --configfile {files}"
    )
    if assets and config["assets"]["offline"]:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = "1"
    return online


def prefetch_from_config(config: dict, manifest_out: str | Path, cache_dir: str | None = None) -> dict:
    """Prefetch everything a validated config needs from the hub (see `prefetch`); the manifest."""
    assets = config_assets(config)
    if not assets:
        log.info("the config names no hub assets")
    return prefetch(assets, manifest_out, cache_dir)
