"""GLUE's models: a classifier loaded from the hub or a local folder, checked to be a trained
classifier of the task's labels in kdsweep's order; a classifier built from a config (random
weights); label names written into a model's config."""

from __future__ import annotations

import re

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdsweep.core.models import ModelMismatch, resolve

CONFIG_CLASSES = {"bert": (BertConfig, BertForSequenceClassification)}  # model.family -> classes

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


def classifier_from_config(
    spec: dict, num_labels: int, tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """A model of `spec["family"]` with `spec["config"]`, random weights, sized to the tokenizer."""
    config_cls, model_cls = CONFIG_CLASSES[spec["family"]]
    config = config_cls(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, **spec["config"]
    )
    torch.manual_seed(seed)
    return model_cls(config)
