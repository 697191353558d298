"""Typed stage settings: each stage reads one dataclass of its settings, built from the JSON the
rule sends (--spec). A field per JSON key, with a default where the stage has one and help text
in its metadata; a stage's own checks go in its __post_init__ and name the config key. Defaults
serve direct callers (tests, benchmarks); the rules send every key. dataclasses.asdict gives the
rule's JSON back only when every field was sent: the specs whose asdict is recorded for resume
(GlueDistillSpec, DistillLMSpec) therefore have no defaults; a defaulted field added there would
change the record and discard existing checkpoints."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def from_json(cls: type[T], data: dict, where: str) -> T:
    """cls(**data), refusing keys that are not fields and naming missing required ones; `where`
    prefixes each message (the stage whose --spec it is)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ValueError(f"{where}.{key}: not a setting of this stage (known: {', '.join(sorted(fields))})")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise ValueError(f"{where}.{name}: missing ({f.metadata.get('help', 'a required setting')})")
    return cls(**data)


def setting(help: str, **kwargs):
    """A dataclass field with help text: setting("glue.max_length: ...", default=128)."""
    return dataclasses.field(metadata={"help": help}, **kwargs)
