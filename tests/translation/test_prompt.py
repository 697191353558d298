"""The translation prompt: the study's exact string, response-only loss, the end marker."""

import pytest
import torch
from tiny import DEMO_PROMPT, DEMO_TEMPLATE

from kdsweep.translation.batching import TranslationCollator
from kdsweep.translation.prompt import (
    IGNORE_INDEX,
    Prompt,
    PromptError,
    check_same_vocabulary,
    encode_pair,
    make_prompt,
    resolve_marker,
)
from kdsweep.translation.synthetic import synthetic_pairs
from kdsweep.translation.tokenizer import train_bpe_tokenizer

# Copied from the study (shared/DESIGN.md), not built from kdsweep's constants.
STUDY_STRING = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 31 Mar 2025\n\nYou are a professional translator. Translate the provided text from English to "
    "French, remaining true to the source text. Do not add any additional commentary or conversational elements "
    "to your response.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{source}<|eot_id|><|start_header_id|>"
    "assistant<|end_header_id|>\n\n{target}<|end_of_translation|><|eot_id|>"
)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    pairs = synthetic_pairs(300, seed=1)
    return train_bpe_tokenizer([s for p in pairs for s in p], tmp_path_factory.mktemp("bpe"), vocab_size=400)


def test_study_prompt_renders_the_exact_string():
    source, target = "The Commission adopts the report.", "La Commission adopte le rapport."
    expected = STUDY_STRING.replace("{source}", source).replace("{target}", target)
    assert Prompt().render(source, target) == expected
    assert Prompt().prefix(source) + Prompt().response(target) == expected
    assert Prompt().prefix(source).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert Prompt().response(target) == target + "<|end_of_translation|><|eot_id|>"


def test_braces_in_sentences_are_kept():
    assert Prompt().render("a {b} c", "x {y}").count("{b}") == 1


@pytest.mark.parametrize(
    "source, target",
    [
        ("Replace {target} with the value.", "Remplacez {source} par {marker}."),
        ("{marker}{source}{target}", "{target}{target}"),
        (r"a \1 b \g<0> c \\ d", r"\\ \n \1"),
        ("{source", "target}"),
    ],
)
def test_sentences_holding_field_names_or_backslashes_render_verbatim(source, target):
    # The expected string is the template's own pieces around the sentences, joined by hand.
    marker = "<|end_of_translation|>"
    prompt = Prompt(template=DEMO_TEMPLATE, marker=marker)
    assert prompt.prefix(source) == "<|begin_of_text|>English: " + source + "\nFrench: "
    assert prompt.response(target) == target + marker + "<|eot_id|>"
    assert prompt.render(source, target) == (
        "<|begin_of_text|>English: " + source + "\nFrench: " + target + marker + "<|eot_id|>"
    )
    study = Prompt()
    head, tail = STUDY_STRING.split("{source}")
    middle, end = tail.split("{target}")
    assert study.render(source, target) == head + source + middle + target + end


def test_template_must_hold_source_then_target():
    with pytest.raises(PromptError, match=r"\{target\} exactly once"):
        Prompt(template="{source} only")
    with pytest.raises(PromptError, match="must come before"):
        Prompt(template="{target} {source}")


def test_loss_only_on_response_tokens(bpe):
    prompt = make_prompt(bpe, DEMO_PROMPT)
    ids, start = encode_pair(bpe, prompt, "The council adopts the budget.", "Le conseil adopte le budget.")
    other, start2 = encode_pair(bpe, prompt, "We support the report.", "Nous soutenons le rapport.")
    batch = TranslationCollator(bpe.pad_token_id)(
        [{"input_ids": ids, "response_start": start}, {"input_ids": other, "response_start": start2}]
    )
    labels = batch["labels"][0]
    assert (labels[:start] == IGNORE_INDEX).all()
    response = labels[start : len(ids)]
    assert (response != IGNORE_INDEX).all() and (labels[len(ids) :] == IGNORE_INDEX).all()
    assert bpe.decode(response.tolist()) == "Le conseil adopte le budget.<|end_of_translation|><|eot_id|>"
    assert bpe.decode(ids[:start]) == "<|begin_of_text|>English: The council adopts the budget.\nFrench: "
    assert batch["attention_mask"].sum(1).tolist() == [len(ids), len(other)]
    # the marker and <|eot_id|> are single tokens, the last two response labels
    assert response[-2:].tolist() == bpe.convert_tokens_to_ids(["<|end_of_translation|>", "<|eot_id|>"])


def test_marker_maps_to_a_reserved_token_or_fails_naming_both(bpe):
    assert resolve_marker(bpe, "<|end_of_translation|>", None) == "<|end_of_translation|>"
    assert resolve_marker(bpe, "<|not_a_token|>", "<|pad|>") == "<|pad|>"
    with pytest.raises(PromptError, match=r"<\|not_a_token\|>.*<\|also_not\|>"):
        resolve_marker(bpe, "<|not_a_token|>", "<|also_not|>")
    prompt = Prompt(template=DEMO_PROMPT["template"], marker=resolve_marker(bpe, "<|x|>", "<|end_of_text|>"))
    assert prompt.response("Oui.") == "Oui.<|end_of_text|><|eot_id|>"


def test_vocabulary_mismatch_fails_with_both_sizes(bpe):
    check_same_vocabulary(bpe, bpe, 400, 400)
    with pytest.raises(ValueError, match="teacher vocab_size 128256, student vocab_size 128000"):
        check_same_vocabulary(bpe, bpe, 128256, 128000)


def test_same_size_vocabularies_with_other_ids_are_refused(bpe, tmp_path):
    """Two tokenizers of the same size whose tokens have other ids: the models' sizes agree, so
    only the token-to-id check can catch it (KD would compare unrelated tokens)."""
    pairs = synthetic_pairs(300, seed=2)
    other = train_bpe_tokenizer([t for _, t in pairs] + [s for s, _ in pairs], tmp_path, vocab_size=400)
    assert len(other) == len(bpe) == 400 and other.get_vocab() != bpe.get_vocab()
    with pytest.raises(
        ValueError, match=r"map tokens to different ids \(\d+ differ, e.g. '.+': teacher id \d+, student id"
    ):
        check_same_vocabulary(bpe, other, 400, 400)


def test_collator_concatenates_teacher_rows_in_batch_order():
    items = [
        {
            "input_ids": [5, 6, 7, 8],
            "response_start": 2,
            "topk_logprobs": torch.ones(2, 3),
            "topk_indices": torch.zeros(2, 3),
        },
        {
            "input_ids": [5, 9, 10],
            "response_start": 1,
            "topk_logprobs": 2 * torch.ones(2, 3),
            "topk_indices": torch.ones(2, 3),
        },
    ]
    batch = TranslationCollator(0)(items)
    assert batch["topk_logprobs"][:, 0].tolist() == [1, 1, 2, 2]
    # rows are predicted from the previous position: label mask shifted by one has 4 entries, in order
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    assert batch["labels"][:, 1:][mask].tolist() == [7, 8, 9, 10]
