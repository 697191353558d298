"""The translation family's tokenizer for models built from a config: byte-level BPE (Llama-3's
kind) with Llama-3's special tokens and the translation end marker as single tokens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
