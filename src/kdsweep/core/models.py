"""What both families do with models: resolve a hub name or local folder, load a tokenizer,
check that a tokenizer's ids fit a model, build a student from teacher layers (DistilBERT's
construction, for BERT and Llama), and fingerprint models and tokenizers by content. Each
family's loaders, models built from a config and tokenizer training are in its package
(glue/models.py, glue/tokenizer.py, translation/models.py, translation/tokenizer.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdsweep.core.hub import WEIGHT_PATTERNS, hub_path, is_repo_id
from kdsweep.core.integrity import check_model_folder
from kdsweep.core.spec import setting

if TYPE_CHECKING:  # torch and transformers are imported where used: train-tokenizer reads TokenizerSpec
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Per-layer weights: BERT's encoder.layer.<i>.*, Llama's model.layers.<i>.*
_LAYER_KEY = re.compile(r"^(.*?\b(?:encoder\.layer|transformer\.layer|model\.layers))\.(\d+)\.(.*)$")


def model_name(spec: str, task: str) -> str:
    """A hub name or local path from the config; "{task}" is replaced by the task name."""
    return spec.replace("{task}", task)


def resolve(name_or_path: str, *, weights: bool) -> str:
    """Where to load a model (weights=True) or a tokenizer from: a local folder, checked whole
    first (kdsweep.core.integrity: missing, empty, truncated weights, no tokenizer files), or a hub
    name from the local cache when offline (assets.hub_path)."""
    what = "model" if weights else "tokenizer"
    if Path(name_or_path).exists() or not is_repo_id(name_or_path):
        check_model_folder(name_or_path, what, weights=weights, tokenizer=not weights)
        return name_or_path
    return hub_path(name_or_path, needs=WEIGHT_PATTERNS if weights else ())


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory or the hub (resolve)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name_or_path, weights=False))


class ModelMismatch(ValueError):
    """A model or tokenizer that does not fit its use: a teacher without a trained head, or
    trained for other labels, or a tokenizer whose ids the model does not have."""


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, key: str, model_name: str) -> None:
    """The tokenizer's ids must be rows of the model's embedding: a tokenizer of another model
    would fail deep in torch (index out of range) or, as large, embed the wrong tokens."""
    vocab_size = model.config.vocab_size
    top = max(tokenizer.get_vocab().values(), default=-1)
    if len(tokenizer) > vocab_size or top >= vocab_size:
        raise ModelMismatch(
            f"{key}: the tokenizer {tokenizer.name_or_path} has {len(tokenizer)} tokens (ids up to {top}), the "
            f"model {model_name} a vocabulary of {vocab_size} (config.json vocab_size): its ids do not fit that "
            "model; name the model's own tokenizer"
        )


def default_layer_map(num_teacher_layers: int) -> list[int]:
    """DistilBERT's choice: every other teacher layer, starting at the first."""
    return list(range(0, num_teacher_layers, 2))


def student_from_teacher(
    teacher: PreTrainedModel, layers: list[int] | None = None, copy_head: bool = False, seed: int = 0
) -> PreTrainedModel:
    """DistilBERT's construction: a student with len(layers) layers, layer i initialized from
    teacher layer layers[i], embeddings copied; the head (BERT's pooler and classifier, an LM's
    output layer) copied only with copy_head (otherwise freshly initialized)."""
    import torch

    n_teacher = teacher.config.num_hidden_layers
    layers = layers if layers is not None else default_layer_map(n_teacher)
    bad = [i for i in layers if i >= n_teacher]
    if bad:
        raise ValueError(
            f"<family>.student.model.from_teacher.layers: {bad} out of range, the teacher has {n_teacher} layers"
        )
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    torch.manual_seed(seed)
    student = teacher.__class__(config)
    teacher_state = teacher.state_dict()
    base = teacher.base_model_prefix  # "bert", "model" (Llama)
    new_state = {}
    for key in student.state_dict():
        m = _LAYER_KEY.match(key)
        is_head = not key.startswith(base + ".") or ".pooler." in key
        if m:
            source = f"{m.group(1)}.{layers[int(m.group(2))]}.{m.group(3)}"
        elif is_head and not copy_head:
            continue
        else:
            source = key
        new_state[key] = teacher_state[source].clone()
    missing, unexpected = student.load_state_dict(new_state, strict=False)
    assert not unexpected, unexpected
    log.info("student from teacher layers %s; kept fresh: %s", layers, missing)
    return student


@dataclass
class TokenizerSpec:
    """Stage train-tokenizer: a family's tokenizer_training block, plus the kind its rule sets."""

    vocab_size: int = setting("<family>.tokenizer_training.vocab_size")
    kind: str = setting("wordpiece (GLUE's rule) or bpe (translation's rule sends it)", default="wordpiece")

    def __post_init__(self):
        if self.kind not in ("wordpiece", "bpe"):
            raise ValueError(f"kind: {self.kind!r} is not wordpiece or bpe")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of a tokenizer: its full vocabulary/merges/normalizer and special tokens."""
    backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else repr(sorted(tokenizer.get_vocab().items()))
    h = hashlib.sha256(backend.encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names, shapes, dtypes, bytes) and config."""
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:  # architecture only: not where it was loaded from, nor by which version
        arch = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
        h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
