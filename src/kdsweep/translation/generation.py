"""Batched greedy/beam generation of translations, shared by evaluation and the teacher's
pseudo-labels: prompts left-padded, KV cache on, stop at the end marker or the end tokens,
marker stripped. Each output records why it stopped (STOP_REASONS): at the end marker, at an
end token (eos, Llama-3's <|eot_id|>: how an Instruct model that never saw the marker ends), or
at max_new_tokens (the study's runaway generations)."""

from __future__ import annotations

import torch

from kdsweep.core.progress import progress
from kdsweep.translation.prompt import Prompt, encode_prefix, marker_id, stop_token_ids


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_lm_tokenizer(name_or_path: str):
    """A tokenizer for generation and LM training; Llama-3 has no pad token: use its
    <|finetune_right_pad_id|> (or eos). Padding never reaches a loss or an output."""
    from kdsweep.core.models import load_tokenizer

    tokenizer = load_tokenizer(name_or_path)
    if tokenizer.pad_token is None:
        pad = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = pad if pad in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.as_tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


STOP_REASONS = ("marker", "eos", "max_new_tokens")
PROMPT_TOO_LONG = "prompt_too_long"  # not generated at all: the prompt is over max_prompt_tokens


def prompt_token_limit(model, max_length: int, max_new_tokens: int) -> int:
    """The longest prompt (in tokens) evaluation generates from: the pipeline's max_length (the
    pairs trained on and cached hold at most that many tokens, prompt and response), and no more than
    leaves room for max_new_tokens within the model's context (config.max_position_embeddings,
    where the model states it)."""
    limit = max_length
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        limit = min(limit, context - max_new_tokens)
    if limit < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context of {context} tokens"
        )
    return limit


def cut_at_stop(tokens: list[int], stop_ids: list[int], marker: int) -> tuple[list[int], str]:
    """The tokens before the first stop token, and why the output stopped (STOP_REASONS): the
    end marker, another stop token (eos/eot), or none (it ran to max_new_tokens: generate()
    only stops a sequence early at a stop token)."""
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[:i], "marker" if tok == marker else "eos"
    return tokens, "max_new_tokens"


@torch.no_grad()
def generate_translations(
    model,
    tokenizer,
    prompt: Prompt,
    sources: list[str],
    batch_size: int = 32,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    desc: str = "generate",
    max_prompt_tokens: int | None = None,
) -> list[dict]:
    """[{"hypothesis": str, "stop": one of STOP_REASONS, "new_tokens": int}] in the order of `sources`.
    With `max_prompt_tokens`, a source whose prompt is longer is never given to the model (a hostile
    row of 100k tokens would otherwise run attention over all of them): its entry is
    {"hypothesis": None, "stop": PROMPT_TOO_LONG, "new_tokens": 0, "prompt_tokens": int}.
    Progress (in sentences) is shown under `desc` (progress.py)."""
    dev = device()
    model.eval().to(dev)
    stops, marker = stop_token_ids(tokenizer, prompt), marker_id(tokenizer, prompt)
    prefixes = [encode_prefix(tokenizer, prompt, s) for s in sources]
    results: list[dict | None] = [None] * len(sources)
    for i, prefix in enumerate(prefixes):
        if max_prompt_tokens is not None and len(prefix) > max_prompt_tokens:
            results[i] = {"hypothesis": None, "stop": PROMPT_TOO_LONG, "new_tokens": 0, "prompt_tokens": len(prefix)}
    # Longest first: batches of similar length waste less padding; results go back in order.
    order = sorted((i for i in range(len(sources)) if results[i] is None), key=lambda i: -len(prefixes[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for idx in progress(batches, total=len(order), desc=desc, unit="sentences", weight=len):
        ids, mask = left_pad([prefixes[i] for i in idx], tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        for row, i in enumerate(idx):
            new = out[row, ids.shape[1] :].tolist()
            kept, stop = cut_at_stop(new, stops, marker)
            results[i] = {
                "hypothesis": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                "stop": stop,
                "new_tokens": len(kept),
            }
    return results
