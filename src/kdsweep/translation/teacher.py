"""Stage `teacher` for translation: train the teacher LM (the demo's, built from a config; the
study's Llama-3.2-3B-Instruct is used as it is), then cache what the student needs from it.

The cache (an entry of the shared content-addressed store, kdsweep/core/cache.py) holds, per shard
of `shard_size` training examples: the token ids of every example (prompt + response, so the
student trains on exactly the tokens the teacher saw), a digest of each example's prompt and
response ids (the distill stage checks its own tokenization against them), and, for every
response token, the rows of the cache's method (cache_format.py): the teacher's top-k
log-probabilities, bit-packed ids, tail log-mass and log-sum-exp (`method: topk`), or `draws`
tokens drawn from the teacher at the sampling temperature as distinct bit-packed ids with their
counts, the teacher's entropy and the log-sum-exp (`method: sampled`). Rows are computed from the
full-vocabulary logits, one chunk of rows at a time, with the LM head in fp32 whatever the model's
dtype. A shard is written atomically once it is complete; a killed job restarts at the first
missing shard, and a sampled shard's draws come from a generator seeded by the cache's seed and
the shard, so a resumed or rebuilt cache is the same bytes. The key covers the teacher's weights,
the tokenizer, the data, the prompt, the method and its settings (k and value dtype; draws,
sampling temperature and seed), max_length and the target kind.

With targets "teacher" (sequence-level KD, the "pseudo-labels") the teacher first translates
each training source, and its own translation replaces the reference as the response.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kdsweep.core.cache import CacheEntry, teacher_key_parts, write_pointer
from kdsweep.core.io import read_jsonl, sha256_file
from kdsweep.core.progress import progress
from kdsweep.core.spec import setting
from kdsweep.translation.batching import (
    TranslationCollator,
    TranslationExamples,
    response_hidden_states,
    restore_item_order,
)
from kdsweep.translation.cache_format import (
    CacheFormat,
    bytes_per_token,
    cache_format,
    empty_rows,
    format_from_settings,
)
from kdsweep.translation.generation import device, generate_translations, load_lm_tokenizer
from kdsweep.translation.loss import TokenKD
from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
from kdsweep.translation.prompt import Prompt, encode_pair, make_prompt

if TYPE_CHECKING:  # the stages that do not train skip transformers' Trainer
    from kdsweep.core.tracking import Tracking

log = logging.getLogger(__name__)
# The kind of a store entry, by method (cache.py's REBUILD_RULE names the rule that builds it).
CACHE_KINDS = {"topk": "lm_topk", "sampled": "lm_sampled"}
# The sampled cache's draw procedure (cache_format.py, losses.inverse_cdf), part of its key: change
# it whenever the same seed would draw other tokens.
SAMPLER = "inverse-cdf-float64, uniforms per row in example order, per-shard generator"


def encode_rows(rows: list[dict], tokenizer, prompt: Prompt, max_length: int) -> tuple[list, list, list, int]:
    """(input_ids, response_starts, kept row indices, number dropped): pairs longer than
    max_length tokens are dropped, not truncated (a cut response would lose its end marker)."""
    ids, starts, kept = [], [], []
    for i, row in enumerate(rows):
        seq, start = encode_pair(tokenizer, prompt, row["source"], row["target"])
        if len(seq) > max_length:
            continue
        ids.append(seq)
        starts.append(start)
        kept.append(i)
    dropped = len(rows) - len(kept)
    if dropped:
        log.warning("%d of %d pairs longer than max_length %d tokens: dropped", dropped, len(rows), max_length)
    return ids, starts, kept, dropped


def check_a_pair_fits(
    rows: list[dict], tokenizer, prompt: Prompt, max_length: int, data_file: str | Path, responses: bool = True
) -> None:
    """At least one pair of data_file must fit in max_length tokens (rendered with the prompt;
    responses False: with an empty response, for a cache of the teacher's own translations), else
    a ValueError naming translation.max_length, the file and the pairs' lengths, before any work
    (training on no pair fails deep in torch: num_samples=0). Stops at the first pair that fits."""
    lengths = []
    for row in rows:
        ids, _ = encode_pair(tokenizer, prompt, row["source"], row["target"] if responses else "")
        if len(ids) <= max_length:
            return
        lengths.append(len(ids))
    if not lengths:
        raise ValueError(f"{data_file} holds no pairs")
    what = "pairs" if responses else "prompts (with an empty translation)"
    raise ValueError(
        f"translation.max_length: {max_length} tokens leaves no pair of {data_file}: all its {len(lengths)} "
        f"{what} are longer, rendered with the prompt (the shortest {min(lengths)} tokens, the longest "
        f"{max(lengths)}); raise translation.max_length"
    )


def translation_examples(data_file: str | Path, tokenizer, prompt: Prompt, max_length: int) -> TranslationExamples:
    """The file's pairs that fit in max_length tokens; none fitting fails (check_a_pair_fits)."""
    rows = read_jsonl(data_file)
    ids, starts, _, _ = encode_rows(rows, tokenizer, prompt, max_length)
    if not ids:
        check_a_pair_fits(rows, tokenizer, prompt, max_length, data_file)
    return TranslationExamples(ids, starts)


def load_lm(model_spec: str | dict, tokenizer, seed: int):
    """A causal LM named by the config (hub name, local dir) or built from {family, config}."""
    if isinstance(model_spec, dict):
        return causal_lm_from_config(model_spec, tokenizer, seed)
    return load_causal_lm(model_spec, torch.float32)  # trained: fp32 master weights, mixed precision (precision.py)


@dataclass
class TeacherLMSpec:
    """Stage train-teacher-lm."""

    model: str | dict = setting("translation.teacher.model: a hub name or local dir, or a model built from a config")
    finetune: dict = setting("translation.teacher.finetune: learning_rate and the training block")
    prompt: dict = setting("translation.prompt: template, end_marker, marker_token")
    max_length: int = setting("translation.max_length: tokens, prompt + response")
    packing: bool = setting("translation.packing: pack pairs into rows of max_length tokens", default=True)
    eval_batch_size: int = setting("translation.evaluate.batch_size", default=64)
    chunk_size: int = setting("translation.distill.chunk_size: tokens per chunk of the loss", default=1024)


@dataclass
class CacheTeacherLMSpec:
    """Stage cache-teacher-lm."""

    prompt: dict = setting("translation.prompt")
    cache: dict = setting(
        "translation.teacher.cache: method, top_k, value_dtype, draws, temperature, seed, batch_size, shard_size, "
        "targets, max_new_tokens, chunk_size"
    )
    max_length: int = setting("translation.max_length: tokens, prompt + response")
    packing: bool = setting("translation.packing: the batches' layout, not part of the cache key", default=True)


def train_teacher_lm(
    tokenizer_path: str,
    data_dir: str | Path,
    model_out: str | Path,
    log_out: str | Path,
    checkpoint_dir: str | Path,
    spec: TeacherLMSpec,
    tracking: Tracking | None = None,
) -> dict:
    """Train the teacher on the train split (CE on the response tokens); eval loss on dev."""
    # Here, not at the top: the cache stage, which does not train, skips transformers' Trainer.
    from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments

    model_spec, prompt_cfg, finetune_cfg = spec.model, spec.prompt, spec.finetune
    max_length, packing = spec.max_length, spec.packing
    tokenizer = load_lm_tokenizer(tokenizer_path)
    prompt = make_prompt(tokenizer, prompt_cfg)
    seed = finetune_cfg["training"]["seed"]
    data_dir = Path(data_dir)
    # Before the model is loaded: a max_length that leaves no pair fails here (check_a_pair_fits).
    train = translation_examples(data_dir / "train.jsonl", tokenizer, prompt, max_length)
    dev = translation_examples(data_dir / "dev.jsonl", tokenizer, prompt, max_length)
    model = load_lm(model_spec, tokenizer, seed)
    args = training_arguments(
        finetune_cfg["training"], finetune_cfg["learning_rate"], checkpoint_dir, spec.eval_batch_size
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        tracking=tracking,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=TranslationCollator(tokenizer.pad_token_id, max_length if packing else None),
        loss=TokenKD(
            chunk_size=spec.chunk_size,
        ),
    )
    job = {
        "stage": "teacher_lm",
        "model": model_spec,
        "finetune": finetune_cfg,
        "prompt": prompt_cfg,
        "data": sha256_file(data_dir / "train.jsonl"),
        "max_length": max_length,
        "packing": packing,
    }
    return train_and_save(trainer, job, model_out, log_out, tokenizer=tokenizer)


def fp32_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight (and bias) in fp32: logits are computed from them, never in bf16/fp16."""
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.detach().float(), None if bias is None else bias.detach().float()


class NonFiniteTeacher(RuntimeError):
    """The teacher's logits hold NaN or infinity (damaged weights, fp16 overflow)."""


@torch.no_grad()
def teacher_rows(
    model,
    batch: dict,
    fmt: CacheFormat,
    chunk_size: int = 1024,
    head: tuple | None = None,
    uniforms: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The cache rows of `fmt` (cache_format.py) for every response token of the collated batch,
    in its row order (`uniforms`: a sampled format's, one row per response token in that order).
    The full-vocabulary logits exist one chunk at a time, computed in fp32 (`head`:
    fp32_head(model), made once by the caller); NonFiniteTeacher when any is not finite."""
    dev = next(model.parameters()).device
    batch = {key: v.to(dev) for key, v in batch.items()}
    hidden, _ = response_hidden_states(model, model, batch)
    weight, bias = head if head is not None else fp32_head(model)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in fmt.dtypes()}
    for start in range(0, hidden.shape[0], chunk_size):
        logits = F.linear(hidden[start : start + chunk_size].float(), weight, bias)
        if not torch.isfinite(logits).all():
            raise NonFiniteTeacher("non-finite logits")
        chunk_uniforms = None if uniforms is None else uniforms[start : start + chunk_size]
        for name, t in fmt.encode(logits, chunk_uniforms).items():
            parts[name].append(t.cpu())
    if not parts or not next(iter(parts.values())):
        return empty_rows(fmt)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def shard_generator(seed: int, first_index: int) -> torch.Generator:
    """The generator of a shard's uniforms: from the cache's seed and the shard's first example,
    so a shard recomputed alone (resume, repair) draws what it drew in the first build."""
    digest = hashlib.sha256(f"{seed}:{first_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def cache_rows(
    model,
    ids: list[list[int]],
    starts: list[int],
    settings: dict,
    fmt: CacheFormat,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    desc: str = "cache",
) -> dict[str, torch.Tensor]:
    """The rows of `fmt` for every response token of the examples, in their order, on the CPU:
    `batch_size` examples at a time, padded or packed (`packing`) into rows of `max_length` tokens.
    A sampled format's uniforms are drawn from `generator` for every row in the examples' order,
    before any batch, and handed to each batch in its row order: the draws do not depend on the
    batching."""
    collate = TranslationCollator(pad_token_id, settings["max_length"] if settings["packing"] else None)
    head = fp32_head(model)
    size = settings["batch_size"]
    tokens = [len(s) - r for s, r in zip(ids, starts, strict=True)]
    first_row = [0, *itertools.accumulate(tokens)][:-1]  # each example's first row
    uniforms = fmt.uniforms(sum(tokens), generator) if generator is not None else None
    out: dict[str, list[torch.Tensor]] = {name: [] for name in fmt.dtypes()}
    for b in progress(range(0, len(ids), size), desc=f"{desc} {fmt.method}", unit="batches"):
        items = [
            {"input_ids": s, "response_start": r} for s, r in zip(ids[b : b + size], starts[b : b + size], strict=True)
        ]
        batch = collate(items)
        batch_uniforms = None
        if uniforms is not None:  # the items' uniforms in the batch's row order (packed: batch["order"])
            order = batch["order"].tolist() if "order" in batch else range(len(items))
            batch_uniforms = torch.cat([uniforms[first_row[b + i] : first_row[b + i] + tokens[b + i]] for i in order])
        rows = teacher_rows(model, batch, fmt, settings["chunk_size"], head, batch_uniforms)
        for name, tensor in zip(rows, restore_item_order(batch, items, *rows.values()), strict=True):
            out[name].append(tensor.to(fmt.dtypes()[name]))
    empty = empty_rows(fmt)
    return {name: torch.cat(parts) if parts else empty[name] for name, parts in out.items()}


def token_digest(ids: list[int]) -> torch.Tensor:
    """16 bytes of the SHA-256 of a token-id sequence (as int32), as a uint8 tensor."""
    data = torch.tensor(ids, dtype=torch.int32).numpy().tobytes()
    return torch.frombuffer(bytearray(hashlib.sha256(data).digest()[:16]), dtype=torch.uint8)


def pair_digests(ids: list[list[int]], starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Digests [n, 16] of each example's prompt ids and of its response ids."""
    if not ids:
        return torch.zeros((0, 16), dtype=torch.uint8), torch.zeros((0, 16), dtype=torch.uint8)
    prompts = torch.stack([token_digest(seq[:start]) for seq, start in zip(ids, starts, strict=True)])
    responses = torch.stack([token_digest(seq[start:]) for seq, start in zip(ids, starts, strict=True)])
    return prompts, responses


def _cache_shard(model, tokenizer, prompt, rows, first_index, settings, fmt, desc: str = "cache") -> dict:
    if settings["targets"] == "teacher":
        outputs = generate_translations(
            model,
            tokenizer,
            prompt,
            [r["source"] for r in rows],
            settings["batch_size"],
            settings["max_new_tokens"],
            desc=f"{desc} translate",
        )
        rows = [{**r, "target": o["hypothesis"]} for r, o in zip(rows, outputs, strict=True)]
    ids, starts, kept, dropped = encode_rows(rows, tokenizer, prompt, settings["max_length"])
    prompt_digest, response_digest = pair_digests(ids, starts)
    generator = shard_generator(settings.get("seed", 0), first_index)
    try:
        token_rows = cache_rows(model, ids, starts, settings, fmt, tokenizer.pad_token_id, generator, desc)
        if not all(
            torch.isfinite(t).all() for n, t in token_rows.items() if t.is_floating_point() and n != "tail_logmass"
        ):
            raise NonFiniteTeacher("non-finite cached values")  # e.g. fp16 overflow of the stored values
    except NonFiniteTeacher as e:
        raise RuntimeError(
            f"{desc}: the teacher gave non-finite values ({e}) on training examples {first_index}.."
            f"{first_index + len(rows) - 1} (NaN weights, or fp16 overflow): nothing of this shard is cached"
        ) from None
    return {
        "example_index": torch.tensor([first_index + i for i in kept], dtype=torch.int64),
        "lengths": torch.tensor([len(s) for s in ids], dtype=torch.int64),
        "response_start": torch.tensor(starts, dtype=torch.int64),
        "input_ids": torch.tensor([t for s in ids for t in s], dtype=torch.int32),
        "prompt_digest": prompt_digest,
        "response_digest": response_digest,
        **token_rows,
        "dropped_too_long": torch.tensor([dropped], dtype=torch.int64),
    }


def cache_key_parts(settings: dict, prompt: Prompt, model, tokenizer, train_file: Path) -> dict:
    """What the entry depends on: the shared parts (cache.teacher_key_parts) and the method's settings."""
    method = settings["method"]
    if method == "topk":
        # top-k log-probabilities (teacher logits minus the row's log-sum-exp) in value_dtype
        own = {"top_k": settings["top_k"], "value_dtype": settings["value_dtype"], "values": "logprob"}
    else:
        own = {"draws": settings["draws"], "temperature": float(settings["temperature"]), "seed": settings["seed"]}
        own["sampler"] = SAMPLER  # how the draws are made: a change of it is a new entry, never a reused one
    return teacher_key_parts(
        CACHE_KINDS[method],
        model,
        tokenizer,
        train_file,
        method=method,
        ids="packed",  # bit-packed token ids (kdsweep.core.bitpack)
        prompt=prompt.template,
        marker=prompt.marker,
        **own,
        **{k: settings[k] for k in ("max_length", "targets", "shard_size")},
        **({"max_new_tokens": settings["max_new_tokens"]} if settings["targets"] == "teacher" else {}),
    )


def cache_teacher_lm(
    teacher_path: str,
    tokenizer_path: str,
    data_dir: str | Path,
    store: str | Path,
    pointer_out: str | Path,
    spec: CacheTeacherLMSpec,
) -> dict:
    """Cache the teacher's rows of the configured method on the train split, shard by shard
    (resuming a killed job at its first missing shard; an unchanged entry is reused). Packing
    changes the batches' layout, not the values (up to float rounding, which may change a draw
    of a sampled cache): not part of the key."""
    max_length = spec.max_length
    train_file = Path(data_dir) / "train.jsonl"
    tokenizer = load_lm_tokenizer(tokenizer_path)
    prompt = make_prompt(tokenizer, spec.prompt)
    settings = {"max_length": max_length, "packing": spec.packing, "method": "topk", "seed": 0, **spec.cache}
    rows = read_jsonl(train_file)
    # Before the teacher is loaded: a max_length that leaves no pair would cache nothing.
    check_a_pair_fits(rows, tokenizer, prompt, max_length, train_file, responses=settings["targets"] == "reference")
    model = load_causal_lm(teacher_path).to(device()).eval()
    vocab = model.config.vocab_size
    if settings["method"] == "topk" and settings["top_k"] > vocab:  # a hub or trained teacher (local ones: config)
        raise ValueError(
            f"translation.teacher.cache.top_k: {settings['top_k']} is larger than the vocabulary of the teacher "
            f"{teacher_path} ({vocab} tokens); top_k = {vocab} caches every token"
        )
    fmt = format_from_settings(settings, vocab)
    entry = CacheEntry(store, cache_key_parts(settings, prompt, model, tokenizer, train_file))
    check = cache_shard_check(fmt)
    reused = entry.reuse(check)  # a complete entry is verified first: damaged shards are rebuilt
    if reused:
        log.info("teacher cache %s is up to date, not recomputed", entry.dir)
    else:

        def shard(start: int, stop: int, label: str) -> dict[str, torch.Tensor]:
            return _cache_shard(model, tokenizer, prompt, rows[start:stop], start, settings, fmt, f"cache {label}")

        num_shards = entry.fill(len(rows), settings["shard_size"], shard, check)
        info = {"rows": len(rows), "teacher_path": str(teacher_path), "teacher_vocab_size": vocab}
        entry.finish(num_shards, {**info, **cache_summary(entry, num_shards, fmt)})
    write_pointer(pointer_out, entry, reused)
    return entry.manifest()


def cache_summary(entry: CacheEntry, num_shards: int, fmt: CacheFormat) -> dict:
    """Examples, tokens, dropped pairs, bytes per token and the method's own means per token
    (top-k: the captured probability mass; sampled: distinct ids and effective sample size)."""
    examples = tokens = dropped = 0
    sums: dict[str, float] = {}
    for index in range(num_shards):
        shard = entry.read_shard(index)
        examples += len(shard["lengths"])
        tokens += len(shard[next(iter(fmt.dtypes()))])  # one row per response token
        dropped += int(shard["dropped_too_long"][0])
        for name, value in fmt.summary(shard).items():
            sums[name] = sums.get(name, 0.0) + value
    return {
        "examples": examples,
        "response_tokens": tokens,
        "dropped_too_long": dropped,
        "method": fmt.method,
        "bytes_per_token": bytes_per_token(fmt),
        **{f"mean_{name}": value / max(tokens, 1) for name, value in sums.items()},
    }


# What else a shard must hold: token ids within the vocabulary (checked from their extremes).
IN_VOCABULARY = ("input_ids",)


class CacheScan:
    """The value check of a cache shard of format `fmt`, fed whole tensors or chunks of rows (a
    ShardScan: CacheEntry.scan_shard streams a shard through it in bounded memory): the examples'
    lengths account for every token id and token row, the format's row rules hold (finite
    values, log-masses <= 0, draw counts summing to the draws, packed ids in the teacher's
    vocabulary: cache_format.py), and every token id lies in the vocabulary. A rule's fast look
    (extremes) runs on every chunk; the row-wise pass only on a chunk that fails it, to count and
    name the rows."""

    def __init__(self, fmt: CacheFormat):
        self.fmt, self.vocab_size = fmt, fmt.vocab_size
        self.rules = fmt.rules()

    def begin(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.small: dict[str, list[torch.Tensor]] = {"lengths": [], "response_start": []}
        self.bad = {what: 0 for what, *_ in self.rules}
        self.first: dict[str, int | None] = {what: None for what, *_ in self.rules}
        self.extremes: dict[str, tuple[int, int]] = {}

    def feed(self, name: str, chunk: torch.Tensor, first_row: int) -> None:
        if name in self.small:
            self.small[name].append(chunk.clone())
        if not len(chunk):
            return
        for what, tensor, passes, bad_rows in self.rules:
            if tensor == name and (passes is None or not passes(chunk)):
                bad = bad_rows(chunk)
                self.bad[what] += int(bad.sum())
                if self.first[what] is None and bad.any():
                    self.first[what] = first_row + int(bad.nonzero()[0])
        if name in IN_VOCABULARY:
            low, high = int(chunk.min()), int(chunk.max())
            if name in self.extremes:
                low, high = min(low, self.extremes[name][0]), max(high, self.extremes[name][1])
            self.extremes[name] = (low, high)

    def problem(self) -> str | None:
        lengths, starts = (torch.cat(self.small[n]) for n in ("lengths", "response_start"))
        rows, ids = int((lengths - starts).sum()), self.shapes["input_ids"][0]
        token_rows = {name: self.shapes[name][0] if name in self.shapes else None for name in self.fmt.dtypes()}
        if int(lengths.sum()) != ids or any(n != rows for n in token_rows.values()):
            have = ", ".join(f"{n} {'missing' if r is None else r}" for n, r in token_rows.items())
            return (
                f"{ids} token ids and token rows ({have}) do not match the examples' lengths "
                f"({int(lengths.sum())} ids, {rows} response tokens)"
            )
        for what, *_ in self.rules:
            if rows and self.bad[what]:
                first = self.first[what]
                where = f" (the first: row {first})" if first is not None else ""
                return f"{what} in {self.bad[what]} of {rows} token rows{where}"
        for name in IN_VOCABULARY:
            if name in self.extremes:
                low, high = self.extremes[name]
                if low < 0 or high >= self.vocab_size:
                    return f"{name} holds {low if low < 0 else high}, outside the teacher's vocabulary [0, {self.vocab_size})"
        return None


class CacheCheck:
    """cache_shard_check's check: called on a shard's tensors (in memory), or `scan()` for
    CacheEntry.scan_shard, which streams a shard through the same rules."""

    def __init__(self, fmt: CacheFormat):
        self.fmt = fmt

    def scan(self) -> CacheScan:
        return CacheScan(self.fmt)

    def __call__(self, shard: dict[str, torch.Tensor]) -> str | None:
        scan = self.scan()
        scan.begin({name: tuple(t.shape) for name, t in shard.items()})
        for name, t in shard.items():
            scan.feed(name, t, 0)
        return scan.problem()


def cache_shard_check(fmt: CacheFormat) -> CacheCheck:
    """The value check of a cache shard (CacheScan), run before a shard is reused or trained on."""
    return CacheCheck(fmt)


def entry_format(entry: CacheEntry) -> CacheFormat:
    """The format of a complete entry (its key and the teacher's vocabulary in its manifest)."""
    return cache_format(entry.key_parts, entry.manifest()["teacher_vocab_size"])


def read_cache(entry: CacheEntry) -> tuple[list[list[int]], list[int], list[dict], list[int]]:
    """Every cached example: (input_ids, response_starts, teacher rows as training items hold
    them (cache_format decode), example_index). Each shard's checksums and values are checked
    first (CacheDamaged)."""
    fmt = entry_format(entry)
    ids, starts, teacher, index = [], [], [], []
    check = cache_shard_check(fmt)
    for shard_index in range(entry.manifest()["num_shards"]):
        shard = entry.read_checked(shard_index, check)
        flat, row = shard["input_ids"].tolist(), 0
        offset = 0
        for length, start in zip(shard["lengths"].tolist(), shard["response_start"].tolist(), strict=True):
            ids.append(flat[offset : offset + length])
            starts.append(start)
            n = length - start
            teacher.append(fmt.decode({name: shard[name][row : row + n] for name in fmt.dtypes()}))
            offset, row = offset + length, row + n
        index += shard["example_index"].tolist()
    return ids, starts, teacher, index


def check_cache_alignment(
    entry: CacheEntry, rows: list[dict], tokenizer, prompt: Prompt, check_responses: bool = True
) -> None:
    """The distill stage's own tokenization of every cached example (rows: the training split)
    must give the ids the cache was built from: each example's prompt digest, and its response
    digest when the responses are the data's references (not the teacher's translations). A count
    check would pass a shifted or re-tokenized sequence; a digest does not."""
    for shard_index in range(entry.manifest()["num_shards"]):
        shard = entry.read_shard(shard_index, ("example_index", "prompt_digest", "response_digest"))
        if "prompt_digest" not in shard:
            raise RuntimeError(f"{entry.shard_path(shard_index)}: a cache without token digests; rebuild the cache")
        for i, example in enumerate(shard["example_index"].tolist()):
            row = rows[example]
            ids, start = encode_pair(tokenizer, prompt, row["source"], row["target"])
            parts = [("prompt", ids[:start], shard["prompt_digest"][i])]
            if check_responses:
                parts.append(("response", ids[start:], shard["response_digest"][i]))
            for name, own, cached in parts:
                if not torch.equal(token_digest(own), cached):
                    raise RuntimeError(
                        f"{entry.shard_path(shard_index)}: training example {example} (line {example + 1} of the "
                        f"training split) tokenizes to other {name} ids than the teacher cache holds: the student's "
                        "tokenizer or prompt differs from the cache's; rebuild the cache with this tokenizer and prompt"
                    )
