"""The translation prompt: rendering, the end-of-translation marker, and tokenization with the
loss restricted to the response.

By default the prompt is the study's Llama-3 chat string (STUDY_TEMPLATE). Tokenizers without
Llama-3's special tokens (the demo's, other families) use a template from the config; a template
holds "{source}" once and then "{target}" once. Everything from "{target}" on is the response:
the target text, the end marker and whatever the template closes with (Llama-3's <|eot_id|>);
only those tokens carry a loss.

The marker (<|end_of_translation|>, added by the study because the model kept generating) must
have the same id in teacher and student. `resolve_marker` makes it one token without resizing:
the marker text if the tokenizer already has it as a token, else one of the tokenizer's own
spare tokens named by `prompt.marker_token` (Llama-3's <|reserved_special_token_0|>), which the
rendering writes in the marker's place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: the config checks and the report read this module
    from transformers import PreTrainedTokenizerBase

STUDY_SYSTEM = (
    "Cutting Knowledge Date: December 2023\nToday Date: 31 Mar 2025\n\n"
    "You are a professional translator. Translate the provided text from English to French, "
    "remaining true to the source text. Do not add any additional commentary or conversational "
    "elements to your response."
)
STUDY_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    + STUDY_SYSTEM
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{source}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{target}{marker}<|eot_id|>"
)
STUDY_MARKER = "<|end_of_translation|>"
IGNORE_INDEX = -100  # label of tokens without a loss (the prompt, padding)
_FIELD = re.compile(r"\{(marker|source|target)\}")  # the template's own fields


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    """A template with "{source}", "{target}" and optionally "{marker}" (the end marker)."""

    template: str = STUDY_TEMPLATE
    marker: str = STUDY_MARKER  # the marker as it is written into the text

    def __post_init__(self):
        for field in ("{source}", "{target}"):
            if self.template.count(field) != 1:
                raise PromptError(f"prompt.template must contain {field} exactly once: {self.template!r}")
        if self.template.index("{source}") > self.template.index("{target}"):
            raise PromptError("prompt.template: {source} must come before {target}")

    def _fill(self, text: str, source: str = "", target: str = "") -> str:
        # One pass over the template's text: a sentence holding "{target}", "{marker}" or other
        # braces is inserted as it is, never filled in turn (str.format would read its braces),
        # and the replacement is a function so its backslashes are not read as group references.
        values = {"marker": self.marker, "source": source, "target": target}
        return _FIELD.sub(lambda m: values[m.group(1)], text)

    def prefix(self, source: str) -> str:
        """Everything the model is given before it translates (generation starts here)."""
        return self._fill(self.template[: self.template.index("{target}")], source=source)

    def response(self, target: str) -> str:
        """What the model must produce: the target, the marker and the template's closing text."""
        return self._fill(self.template[self.template.index("{target}") :], target=target)

    def render(self, source: str, target: str) -> str:
        return self.prefix(source) + self.response(target)


def resolve_marker(tokenizer: PreTrainedTokenizerBase, marker: str, marker_token: str | None) -> str:
    """The text to write for the end marker so that it is one token of `tokenizer`'s own
    vocabulary (no new embedding): the marker if it is a token, else `marker_token`."""
    vocab = tokenizer.get_vocab()
    if marker in vocab:
        return marker
    if marker_token and marker_token in vocab:
        return marker_token
    raise PromptError(
        f"the end marker {marker!r} is not a token of the tokenizer {tokenizer.name_or_path!r} and "
        f"prompt.marker_token ({marker_token!r}) is not one either: name one of its reserved tokens "
        "(Llama-3: <|reserved_special_token_0|>) so teacher and student keep the same vocabulary"
    )


def make_prompt(tokenizer: PreTrainedTokenizerBase, prompt_cfg: dict) -> Prompt:
    """The config's `prompt` block for this tokenizer: {template: null | str, end_marker, marker_token}."""
    template = prompt_cfg.get("template") or STUDY_TEMPLATE
    marker = resolve_marker(tokenizer, prompt_cfg.get("end_marker", STUDY_MARKER), prompt_cfg.get("marker_token"))
    return Prompt(template=template, marker=marker)


def marker_id(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> int:
    return tokenizer.convert_tokens_to_ids(prompt.marker)


def ce_only_token_ids(tokenizer: PreTrainedTokenizerBase, prompt_cfg: dict, tokens: list[str]) -> list[int]:
    """Ids of `translation.distill.ce_only_tokens`: response positions whose target is one of these
    tokens get CE only, no KD (a teacher never trained on them, e.g. an Instruct teacher and the
    end marker, would pull the student away from them). The config's end_marker stands for the
    token written in its place (prompt.marker_token); every entry must be one token."""
    prompt = make_prompt(tokenizer, prompt_cfg)
    end_marker = prompt_cfg.get("end_marker", STUDY_MARKER)
    vocab = tokenizer.get_vocab()
    ids = []
    for token in tokens:
        text = prompt.marker if token == end_marker else token
        if text not in vocab:
            raise PromptError(
                f"translation.distill.ce_only_tokens: {token!r} is not a token of the tokenizer "
                f"{tokenizer.name_or_path!r} (name single tokens, e.g. the end marker or <|eot_id|>)"
            )
        ids.append(vocab[text])
    return ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Generation stops at the marker, or at the tokenizer's end tokens (eos, Llama-3's <|eot_id|>)."""
    ids = [marker_id(tokenizer, prompt)]
    for token in (tokenizer.eos_token, "<|eot_id|>"):
        if token and token in tokenizer.get_vocab():
            ids.append(tokenizer.convert_tokens_to_ids(token))
    return list(dict.fromkeys(ids))


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, source: str, target: str) -> tuple[list[int], int]:
    """Token ids of the rendered pair and where the response starts: tokens before it are the
    prompt (no loss), tokens from it on are the response (loss). The two parts are tokenized
    separately so the boundary is exact."""
    prefix = tokenizer(prompt.prefix(source), add_special_tokens=False)["input_ids"]
    response = tokenizer(prompt.response(target), add_special_tokens=False)["input_ids"]
    return prefix + response, len(prefix)


def encode_prefix(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, source: str) -> list[int]:
    return tokenizer(prompt.prefix(source), add_special_tokens=False)["input_ids"]


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher_vocab: int, student_vocab: int) -> None:
    """Token-level KD compares distributions over the same ids: the tokenizers and the models'
    output layers must agree. Fails naming both sizes."""
    if teacher_vocab != student_vocab:
        raise ValueError(
            f"teacher and student vocabularies differ: teacher vocab_size {teacher_vocab}, student vocab_size "
            f"{student_vocab}; token-level KD needs identical vocabularies"
        )
    teacher_vocab_map, student_vocab_map = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab_map != student_vocab_map:
        differ = sorted(
            (
                t
                for t in set(teacher_vocab_map) | set(student_vocab_map)
                if teacher_vocab_map.get(t) != student_vocab_map.get(t)
            ),
            key=lambda t: min(teacher_vocab_map.get(t, 1 << 62), student_vocab_map.get(t, 1 << 62)),
        )
        token = differ[0]
        raise ValueError(
            f"teacher tokenizer ({len(teacher_tokenizer)} tokens) and student tokenizer ({len(student_tokenizer)} "
            f"tokens) map tokens to different ids ({len(differ)} differ, e.g. {token!r}: teacher id "
            f"{teacher_vocab_map.get(token)}, student id {student_vocab_map.get(token)}); token-level KD needs "
            "identical vocabularies"
        )
