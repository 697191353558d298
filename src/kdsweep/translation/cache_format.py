"""What a translation teacher cache stores per response token, one class per method
(`translation.teacher.cache.method`), each computing its rows from the teacher's full fp32 logits,
decoding them for training, and checking them:

- TopkFormat ("topk"): the k most likely tokens' log-probabilities at T = 1 (`topk_logprobs`,
  logits minus the row's log-sum-exp, in value_dtype), their ids (`topk_ids`, bit-packed), the
  log of the mass outside them (`tail_logmass`, fp32, from the full row) and the log-sum-exp
  (`lse`). The KD term: kdsweep.core.losses.topk_kd (biased: it drops the tail).
- SampledFormat ("sampled"): `draws` tokens drawn from the teacher at the sampling temperature T,
  kept as the row's distinct ids in increasing order (`sample_ids`, bit-packed) with how often each
  was drawn (`sample_counts`, bit-packed in the bits that hold `draws`), padded to `draws` slots
  with count 0, and the teacher's entropy at T (`entropy`, fp32, from the full row), which makes
  the loss value a KL estimate. The KD term: kdsweep.core.losses.sampled_kd, an unbiased estimate
  of the forward KL at T (and of its gradient); distillation at another temperature is refused.
  No log-sum-exp: without the drawn tokens' logits it determines nothing the loss could use.

Ids are packed row by row in bits_for(vocab_size) bits (kdsweep.core.bitpack: 17 for Llama-3's
128,256 tokens), so rows stay byte ranges of the shard (memory-mapped slicing, chunked checks).
Each sampled row's draws invert the teacher's cumulative distribution at uniforms of its own:
`uniforms(rows, generator)` draws them for a shard's rows in the examples' order from a generator
the cache seeds per shard, so the draws do not depend on the batches a row is computed in (batch
size, packing, chunk size), and a shard rebuilt (after a kill, or a damaged shard) or a whole
cache rebuilt with its seed is the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdsweep.core.bitpack import bits_for, pack_rows, packed_size, unpack_rows
from kdsweep.core.losses import sample_teacher_tokens, teacher_entropy

METHODS = ("topk", "sampled")
VALUE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# A rule of a shard's token rows: (what is wrong, the tensor, whether a chunk passes from a fast
# look (None: always check rows), the bad rows of a chunk [rows] as a bool tensor).
RowRule = tuple[str, str, Callable[[torch.Tensor], bool] | None, Callable[[torch.Tensor], torch.Tensor]]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.min()) and torch.isfinite(t.max()))


def _pack(ids: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.from_numpy(pack_rows(ids.cpu().numpy(), bits))


def _unpack(packed: torch.Tensor, bits: int, m: int) -> torch.Tensor:
    return torch.from_numpy(unpack_rows(packed.numpy(), bits, m))


@dataclass
class TopkFormat:
    top_k: int
    vocab_size: int
    value_dtype: str = "float16"
    method = "topk"

    @property
    def index_bits(self) -> int:
        return bits_for(self.vocab_size)

    def dtypes(self) -> dict[str, torch.dtype]:
        return {
            "topk_logprobs": VALUE_DTYPES[self.value_dtype],
            "topk_ids": torch.uint8,
            "tail_logmass": torch.float32,
            "lse": torch.float32,
        }

    def widths(self) -> dict[str, int]:
        """Elements per token row of the 2-d tensors (the others hold one value per row)."""
        return {"topk_logprobs": self.top_k, "topk_ids": packed_size(self.top_k, self.index_bits)}

    def uniforms(self, rows: int, generator: torch.Generator) -> None:
        return None  # nothing is drawn

    def encode(self, logits: torch.Tensor, uniforms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The rows of fp32 logits [n, V] (overwritten: the tail's sum masks the top-k in place)."""
        lse = torch.logsumexp(logits, dim=-1)
        top = logits.topk(self.top_k, dim=-1)
        tail = torch.logsumexp(logits.scatter_(-1, top.indices, float("-inf")), dim=-1) - lse
        return {
            "topk_logprobs": (top.values - lse[:, None]).to(VALUE_DTYPES[self.value_dtype]),
            "topk_ids": _pack(top.indices, self.index_bits),
            "tail_logmass": tail,
            "lse": lse,
        }

    def decode(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training item's teacher rows (the keys TokenKD reads)."""
        return {
            "topk_logprobs": rows["topk_logprobs"].clone(),
            "topk_indices": _unpack(rows["topk_ids"], self.index_bits, self.top_k),
            "topk_tail": rows["tail_logmass"].clone(),
        }

    def rules(self) -> list[RowRule]:
        return [
            ("non-finite top-k log-probabilities", "topk_logprobs", _finite, lambda t: ~torch.isfinite(t).all(-1)),
            ("positive top-k log-probabilities", "topk_logprobs", lambda t: bool(t.max() <= 0), lambda t: (t > 0).any(-1)),
            ("a NaN or positive tail log-mass", "tail_logmass", lambda t: bool(t.max() <= 0), lambda t: t.isnan() | (t > 0)),
            ("a non-finite log-sum-exp", "lse", _finite, lambda t: ~torch.isfinite(t)),
            ("top-k ids outside the teacher's vocabulary", "topk_ids", None, self._outside),
        ]  # fmt: skip

    def _outside(self, packed: torch.Tensor) -> torch.Tensor:
        return (_unpack(packed, self.index_bits, self.top_k) >= self.vocab_size).any(-1)

    def summary(self, shard: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums over a shard's rows for the manifest: the probability mass the top-k captures."""
        return {"captured_mass": shard["topk_logprobs"].float().exp().sum().item()}


@dataclass
class SampledFormat:
    draws: int
    temperature: float
    vocab_size: int
    method = "sampled"

    @property
    def index_bits(self) -> int:
        return bits_for(self.vocab_size)

    @property
    def count_bits(self) -> int:
        return bits_for(self.draws + 1)  # 0 (a padding slot) .. draws

    def dtypes(self) -> dict[str, torch.dtype]:
        return {"sample_ids": torch.uint8, "sample_counts": torch.uint8, "entropy": torch.float32}

    def widths(self) -> dict[str, int]:
        """Elements per token row of the 2-d tensors (the others hold one value per row)."""
        return {
            "sample_ids": packed_size(self.draws, self.index_bits),
            "sample_counts": packed_size(self.draws, self.count_bits),
        }

    def uniforms(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """The uniforms [rows, draws] of `rows` token rows, in their order (see the module doc)."""
        return torch.rand(rows, self.draws, generator=generator)

    def encode(self, logits: torch.Tensor, uniforms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The rows of fp32 logits [n, V], drawing at `uniforms` [n, draws] (None: fresh ones)."""
        ids, counts = sample_teacher_tokens(logits, self.draws, self.temperature, uniforms=uniforms)
        return {
            "sample_ids": _pack(ids, self.index_bits),
            "sample_counts": _pack(counts, self.count_bits),
            "entropy": teacher_entropy(logits, self.temperature),
        }

    def decode(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "sample_ids": _unpack(rows["sample_ids"], self.index_bits, self.draws),
            "sample_counts": _unpack(rows["sample_counts"], self.count_bits, self.draws),
            "teacher_entropy": rows["entropy"].clone(),
        }

    def rules(self) -> list[RowRule]:
        return [
            ("draw counts that do not sum to the draws", "sample_counts", None, self._bad_counts),
            ("sampled ids outside the teacher's vocabulary", "sample_ids", None, self._outside),
            ("a teacher entropy outside [0, log V]", "entropy", self._entropy_passes, self._bad_entropy),
        ]

    def _bad_entropy(self, t: torch.Tensor) -> torch.Tensor:
        return ~((t >= 0) & (t <= math.log(self.vocab_size) + 1e-3))  # NaN and inf fail

    def _entropy_passes(self, t: torch.Tensor) -> bool:
        return not bool(self._bad_entropy(torch.stack([t.min(), t.max()])).any())

    def _bad_counts(self, packed: torch.Tensor) -> torch.Tensor:
        return _unpack(packed, self.count_bits, self.draws).sum(-1) != self.draws

    def _outside(self, packed: torch.Tensor) -> torch.Tensor:
        return (_unpack(packed, self.index_bits, self.draws) >= self.vocab_size).any(-1)

    def summary(self, shard: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums over a shard's rows: distinct ids, and the Kish effective sample size of the
        counts, (sum c)^2 / sum c^2 (draws when every draw is distinct, 1 when all are one id)."""
        counts = _unpack(shard["sample_counts"], self.count_bits, self.draws).double()
        return {
            "distinct_ids": (counts > 0).sum().item(),
            "effective_sample_size": (counts.sum(-1) ** 2 / (counts**2).sum(-1)).sum().item(),
        }


CacheFormat = TopkFormat | SampledFormat


def cache_format(key_parts: dict, vocab_size: int) -> CacheFormat:
    """The format of a cache entry, from its key (entries of kdsweep before issue 17 have no
    `method`: their shards hold int32 ids and are not read; the new key rebuilds them)."""
    method = key_parts.get("method")
    if method == "topk":
        return TopkFormat(key_parts["top_k"], vocab_size, key_parts["value_dtype"])
    if method == "sampled":
        return SampledFormat(key_parts["draws"], key_parts["temperature"], vocab_size)
    raise ValueError(
        f"a teacher cache without a known method ({method!r}; one of {METHODS}): written by a kdsweep from before "
        "sampled caches, with int32 ids; rebuild it with: snakemake --forcerun cache_teacher_lm <your usual options>"
    )


def format_from_settings(cache: dict, vocab_size: int) -> CacheFormat:
    """The format translation.teacher.cache asks for."""
    if cache.get("method", "topk") == "sampled":
        return SampledFormat(cache["draws"], float(cache["temperature"]), vocab_size)
    return TopkFormat(cache["top_k"], vocab_size, cache["value_dtype"])


def bytes_per_token(fmt: CacheFormat) -> int:
    """The bytes of one response token's rows in a shard."""
    widths = fmt.widths()
    return sum(widths.get(n, 1) * d.itemsize for n, d in fmt.dtypes().items())


def empty_rows(fmt: CacheFormat) -> dict[str, torch.Tensor]:
    """The format's tensors for no token rows (a batch or shard whose pairs were all dropped)."""
    widths = fmt.widths()
    return {n: torch.zeros((0, *([widths[n]] if n in widths else [])), dtype=d) for n, d in fmt.dtypes().items()}
