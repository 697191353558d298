"""The translation family's models: a decoder LM loaded from the hub or a local folder (in the
inference precision of the device), or built from a config (random weights)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from kdsweep.core.models import resolve

CONFIG_CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM)}  # model.family -> classes


def load_causal_lm(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A decoder LM from the hub or a local directory; by default in precision.inference_dtype():
    bf16 on GPUs that have it natively, fp16 on other GPUs, fp32 on the CPU."""
    if dtype is None:
        from kdsweep.core.precision import inference_dtype

        dtype = inference_dtype()
    return AutoModelForCausalLM.from_pretrained(resolve(name_or_path, weights=True), dtype=dtype)


def causal_lm_from_config(spec: dict, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A decoder LM of `spec["family"]` (llama) with `spec["config"]`, random weights, sized to the tokenizer."""
    config_cls, model_cls = CONFIG_CLASSES[spec["family"]]
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = config_cls(vocab_size=len(tokenizer), **special, **spec["config"])
    torch.manual_seed(seed)
    return model_cls(config)
