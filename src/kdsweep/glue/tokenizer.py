"""GLUE's tokenizer for models built from a config: BERT-style uncased WordPiece, its vocabulary
built from the training pairs (the same on every run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def wordpiece_vocab(words, vocab_size: int, special: list[str]) -> list[str]:
    """A WordPiece vocabulary, the same for the same words on every run: the special tokens,
    every character seen (as a word start and as a ##continuation, so a word made of training
    characters is never [UNK]; these come first even when they alone exceed vocab_size), then the
    most frequent words (ties alphabetical) up to vocab_size tokens. Words outside it are spelled
    from characters (no subword merges). The tokenizers library's
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
