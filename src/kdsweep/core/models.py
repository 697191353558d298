"""Models and tokenizers: hub/local loading, models built from a config (random weights),
students made from teacher layers (DistilBERT's construction, for BERT and Llama), locally
trained tokenizers (WordPiece for BERT, byte-level BPE for Llama), fingerprints."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdsweep.core.hub import WEIGHT_PATTERNS, hub_path, is_repo_id
from kdsweep.core.integrity import check_model_folder
from kdsweep.core.spec import setting

log = logging.getLogger(__name__)

CONFIG_FAMILIES = {"bert": (BertConfig, BertForSequenceClassification), "llama": (LlamaConfig, LlamaForCausalLM)}
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
    return AutoTokenizer.from_pretrained(resolve(name_or_path, weights=False))


class ModelMismatch(ValueError):
    """A model or tokenizer that does not fit its use: a teacher without a trained head, or
    trained for other labels, or a tokenizer whose ids the model does not have."""


# Label names transformers gives a classifier that was never told its labels: they say nothing.
_GENERIC_LABEL = re.compile(r"^(?:LABEL_)?\d+$", re.IGNORECASE)


def _label_key(name: str) -> str:
    """A label name compared without case or separators: "NOT_DUPLICATE" == "not duplicate"."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def load_classifier(
    name_or_path: str,
    num_labels: int,
    *,
    trained_labels: tuple[str, ...] | None = None,
    key: str = "glue.teacher.model",
) -> PreTrainedModel:
    """A classifier from a local directory or the hub (resolve). A base model gets a fresh head of
    num_labels classes (a student).

    With trained_labels (a classifier used as it is, e.g. a teacher), it must be one trained for
    those labels, else ModelMismatch naming `key` and the folder: every weight of the model must
    be in the checkpoint (a head transformers would initialize afresh is refused), and its
    config's id2label must name the labels in this order (case and separators aside; generic
    names, LABEL_0 or 0, are accepted as unknown). Nothing is remapped."""
    path = resolve(name_or_path, weights=True)
    if trained_labels is None:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    assert len(trained_labels) == num_labels, (trained_labels, num_labels)
    # Loaded with its own number of labels: another number is reported below, not as a size mismatch.
    model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    if info["missing_keys"]:
        raise ModelMismatch(
            f"{key}: {name_or_path} is not a trained classifier: its checkpoint lacks "
            f"{', '.join(sorted(info['missing_keys']))}, which would be initialized at random (a base model, "
            "not fine-tuned on the task). Name a classifier fine-tuned on the task, or let kdsweep fine-tune it "
            f"({key.removesuffix('.model')}.finetune.enabled: true)"
        )
    names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    expected = list(trained_labels)
    if len(names) != len(expected):
        raise ModelMismatch(
            f"{key}: {name_or_path} is a classifier of {len(names)} labels {names} (config.json id2label), the "
            f"task has {len(expected)}: {expected}"
        )
    if any(
        not _GENERIC_LABEL.match(n) and _label_key(n) != _label_key(e) for n, e in zip(names, expected, strict=True)
    ):
        raise ModelMismatch(
            f"{key}: {name_or_path} names its labels, in order, {names} (config.json id2label); kdsweep's labels of "
            f"the task are, in order, {expected}. Its logits would be read column by column as kdsweep's labels, "
            "and nothing is remapped: use a classifier with kdsweep's label order, or let kdsweep fine-tune it "
            f"({key.removesuffix('.model')}.finetune.enabled: true); if its labels do mean kdsweep's in this order, "
            "write them as its id2label"
        )
    return model


def name_labels(model: PreTrainedModel, labels: tuple[str, ...]) -> None:
    """Record the task's labels, in kdsweep's order, as the model's id2label/label2id (what
    load_classifier with trained_labels checks when the model is used as a teacher)."""
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


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


def classifier_from_config(
    spec: dict, num_labels: int, tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """A model of `spec["family"]` with `spec["config"]`, random weights, sized to the tokenizer."""
    config_cls, model_cls = CONFIG_FAMILIES[spec["family"]]
    config = config_cls(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, **spec["config"]
    )
    torch.manual_seed(seed)
    return model_cls(config)


def load_causal_lm(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A decoder LM from the hub or a local directory; by default in precision.inference_dtype():
    bf16 on GPUs that have it natively, fp16 on other GPUs, fp32 on the CPU."""
    if dtype is None:
        from kdsweep.core.precision import inference_dtype

        dtype = inference_dtype()
    return AutoModelForCausalLM.from_pretrained(resolve(name_or_path, weights=True), dtype=dtype)


def causal_lm_from_config(spec: dict, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A decoder LM of `spec["family"]` (llama) with `spec["config"]`, random weights, sized to the tokenizer."""
    config_cls, model_cls = CONFIG_FAMILIES[spec["family"]]
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = config_cls(vocab_size=len(tokenizer), **special, **spec["config"])
    torch.manual_seed(seed)
    return model_cls(config)


def default_layer_map(num_teacher_layers: int) -> list[int]:
    """DistilBERT's choice: every other teacher layer, starting at the first."""
    return list(range(0, num_teacher_layers, 2))


def student_from_teacher(
    teacher: PreTrainedModel, layers: list[int] | None = None, copy_head: bool = False, seed: int = 0
) -> PreTrainedModel:
    """DistilBERT's construction: a student with len(layers) layers, layer i initialized from
    teacher layer layers[i], embeddings copied; the head (BERT's pooler and classifier, an LM's
    output layer) copied only with copy_head (otherwise freshly initialized)."""
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


def wordpiece_vocab(words, vocab_size: int, special: list[str]) -> list[str]:
    """A WordPiece vocabulary, the same for the same words on every run: the special tokens,
    every character seen (as a word start and as a ##continuation, so no word is unknown), then
    the most frequent words (ties alphabetical) up to vocab_size tokens. The tokenizers library's
    WordPiece trainer is not used: it orders symbols of equal count by hash-map iteration, so two
    trainings on the same text gave different vocabularies (and different demo tables)."""
    counts = Counter(words)
    chars = sorted({c for w in counts for c in w})
    vocab = [*special, *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    for word in sorted(counts, key=lambda w: (-counts[w], w)):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
            known.add(word)
    return vocab


def train_wordpiece_tokenizer(texts, out_dir: str | Path, vocab_size: int) -> PreTrainedTokenizerBase:
    """A BERT-style uncased WordPiece tokenizer for `texts` (vocabulary: wordpiece_vocab), saved
    with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = [w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    vocab = wordpiece_vocab(words, vocab_size, special)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
    )
    fast.save_pretrained(str(out_dir))
    return fast


LM_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|end_of_translation|>", "<|pad|>")


def train_bpe_tokenizer(texts, out_dir: str | Path, vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (Llama-3's kind) trained on `texts`, with Llama-3's special
    tokens the prompt uses and the translation end marker as single tokens; saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


@dataclass
class TokenizerSpec:
    """Stage train-tokenizer: a family's tokenizer_training block, plus the kind its rule sets."""

    vocab_size: int = setting("<family>.tokenizer_training.vocab_size")
    kind: str = setting("wordpiece (GLUE's rule) or bpe (translation's rule sends it)", default="wordpiece")

    def __post_init__(self):
        if self.kind not in ("wordpiece", "bpe"):
            raise ValueError(f"kind: {self.kind!r} is not wordpiece or bpe")


def train_tokenizer(texts, out_dir: str | Path, spec: TokenizerSpec) -> PreTrainedTokenizerBase:
    train = train_bpe_tokenizer if spec.kind == "bpe" else train_wordpiece_tokenizer
    return train(texts, out_dir, spec.vocab_size)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of a tokenizer: its full vocabulary/merges/normalizer and special tokens."""
    backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else repr(sorted(tokenizer.get_vocab().items()))
    h = hashlib.sha256(backend.encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names, shapes, dtypes, bytes) and config."""
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
