"""Pieces shared by the benchmarks: Llama shapes (tiny for the CPU with the 3B/1B parameter
ratio, the real Llama-3.2-3B/1B for a GPU), example lengths, synthetic examples, peak memory and
the FLOPs of a training step (for MFU)."""

from __future__ import annotations

import resource
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "tiny": {
        "teacher": dict(
            hidden_size=384,
            intermediate_size=1024,
            num_hidden_layers=7,
            num_attention_heads=6,
            num_key_value_heads=2,
            vocab_size=8192,
        ),
        "student": dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=8192,
        ),
    },
    "real": {  # Llama-3.2-3B and Llama-3.2-1B
        "teacher": dict(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            vocab_size=128256,
            rope_theta=500000.0,
        ),
        "student": dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            rope_theta=500000.0,
        ),
    },
}
H100_BF16_TFLOPS = 989.4  # dense bf16 peak of an H100 SXM


def training_config(**over) -> dict:
    """The schema's `training` defaults with `over` set; evaluation and checkpoints beyond the run."""
    from kdsweep.core.config import training_block

    quiet = {"logging_steps": 10**6, "eval_steps": 10**6, "save_steps": 10**6, "lr_scheduler": "constant"}
    return training_block(**{**quiet, **over})


def build(shape: dict, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """A Llama of `shape` with random weights (sdpa attention, tied embeddings like Llama-3.2)."""
    config = LlamaConfig(tie_word_embeddings=True, max_position_embeddings=4096, **shape)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def example_lengths(spec: str, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(length, response start) of n examples. spec: "fixed:L/R" (all L tokens, the last R the
    response), "demo" (the demo's translation cache: `make demo` first) or "cache:<pointer.json>"
    (any kdsweep teacher cache, either method: the real tokenized pairs of a run, drawn at random)."""
    if spec.startswith("fixed:"):
        length, response = (int(x) for x in spec[len("fixed:") :].split("/"))
        return [(length, length - response)] * n
    from kdsweep.core.cache import open_pointer

    pointer = "results/demo/cache/europarl_en_fr.json" if spec == "demo" else spec[len("cache:") :]
    if not Path(pointer).is_file():
        raise SystemExit(f"{pointer}: no such cache pointer (for --lengths demo, run `make demo` first)")
    entry = open_pointer(pointer)
    pairs = []
    for index in range(entry.manifest()["num_shards"]):
        shard = entry.read_shard(index)
        pairs += list(zip(shard["lengths"].tolist(), shard["response_start"].tolist(), strict=True))
    g = torch.Generator().manual_seed(seed)
    return [pairs[i] for i in torch.randint(len(pairs), (n,), generator=g).tolist()]


def examples(lengths: list[tuple[int, int]], vocab: int, top_k: int | None = None, seed: int = 0) -> list[dict]:
    """Random token ids of the given lengths; with top_k, random teacher rows for each response
    token as a top-k cache's rows decode for training (translation.cache_format.TopkFormat.decode:
    fp16 log-probabilities, int64 indices, fp32 tail log-mass)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for length, start in lengths:
        item = {"input_ids": torch.randint(1, vocab, (length,), generator=g).tolist(), "response_start": start}
        if top_k:
            n = length - start
            logits = (torch.randn(n, top_k + 1, generator=g) * 3).sort(-1, descending=True).values
            logprobs = logits.log_softmax(-1)  # the last column stands for the tail
            item["topk_logprobs"] = logprobs[:, :top_k].half()
            item["topk_indices"] = torch.randint(0, vocab, (n, top_k), generator=g, dtype=torch.int64)
            item["topk_tail"] = logprobs[:, top_k]
        out.append(item)
    return out


def computed_per_real_token(lengths: list[tuple[int, int]], batch_size: int, pack_length: int | None) -> float:
    """Token positions the model computes (padding included) per real token, batches in order."""
    from kdsweep.translation.batching import pack_rows

    computed = 0
    for b in range(0, len(lengths), batch_size):
        batch = [n for n, _ in lengths[b : b + batch_size]]
        rows = pack_rows(batch, pack_length) if pack_length else [[i] for i in range(len(batch))]
        computed += len(rows) * max(sum(batch[i] for i in row) for row in rows)
    return computed / sum(n for n, _ in lengths)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> str:
    """GPU: the allocator's peak since the last reset. CPU: the process's peak RSS so far (it
    cannot be reset, so only the first mode's figure is its own)."""
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU (peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def training_flops(config, lengths: list[tuple[int, int]]) -> float:
    """Model FLOPs of one training step (forward + backward) on these examples, as counted for
    MFU: 6 x non-embedding parameters x tokens, the LM head (6 x d x V) on the response tokens
    only (the only rows kdsweep computes logits for), and attention 12 x layers x d x n per token
    of a length-n sequence (PaLM's convention). Recomputation is not counted."""
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * config.intermediate_size  # qkv, o, gate/up/down
    tokens = sum(n for n, _ in lengths)
    response = sum(n - r for n, r in lengths)
    attention = sum(12 * layers * d * n * n for n, _ in lengths)
    return 6 * layers * per_layer * tokens + 6 * d * vocab * response + attention
