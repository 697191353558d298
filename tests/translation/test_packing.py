"""Sequence packing of translation batches: rows within capacity, and the packed batch giving
the padded batch's losses, gradients and teacher top-k (no attention between packed pairs)."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdsweep.core.losses import TopkKD, chunked_token_losses
from kdsweep.translation.batching import TranslationCollator, pack_rows, response_hidden_states, restore_item_order
from kdsweep.translation.cache_format import TopkFormat
from kdsweep.translation.prompt import IGNORE_INDEX
from kdsweep.translation.teacher import teacher_rows

V, K = 97, 5
LENGTHS = [(23, 15), (7, 3), (31, 25), (12, 4), (5, 2), (18, 11), (9, 8), (26, 6)]  # (length, response start)


def test_pack_rows_first_fit_decreasing_within_capacity():
    lengths = [10, 3, 7, 8, 2, 5]
    rows = pack_rows(lengths, 12)
    assert rows == [[0, 4], [3, 1], [2, 5]]  # 10+2, 8+3, 7+5
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert pack_rows([20, 4], 12) == [[0], [1]]  # longer than the capacity: a row of its own


def model(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).float()


def items(with_topk: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for length, start in LENGTHS:
        item = {"input_ids": torch.randint(1, V, (length,), generator=g).tolist(), "response_start": start}
        if with_topk:
            item["topk_logprobs"] = torch.randn(length - start, K, generator=g).log_softmax(-1) - 0.1
            item["topk_indices"] = torch.randperm(V, generator=g)[:K].expand(length - start, K).clone()
            item["topk_tail"] = torch.full((length - start,), math.log(1 - math.exp(-0.1)))
        out.append(item)
    return out


def loss_and_grads(lm, batch):
    lm.zero_grad()
    hidden, targets = response_hidden_states(lm, lm, batch)
    rows = {key: batch[key] for key in ("topk_logprobs", "topk_indices", "topk_tail")}
    ce, kd = chunked_token_losses(
        hidden, lm.get_output_embeddings(), targets, rows, TopkKD(1.0, "jsd", "bucket"), chunk_size=16
    )
    (0.5 * ce.mean() + 0.5 * kd.mean()).backward()
    return torch.stack([ce.mean(), kd.mean()]).detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_the_padded_losses_and_gradients(attn):
    lm = model(attn)
    padded = TranslationCollator(0)(items())
    packed = TranslationCollator(0, pack_length=40)(items())
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["input_ids"].numel() < 0.75 * padded["input_ids"].numel()
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()
    losses, grads = loss_and_grads(lm, padded)
    packed_losses, packed_grads = loss_and_grads(lm, packed)
    torch.testing.assert_close(packed_losses, losses, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The same rows without their position ids attend across pairs: the check above would see it.
    crossed = {k: v for k, v in packed.items() if k != "position_ids"}
    assert (loss_and_grads(lm, crossed)[0] - losses).abs().max() > 1e-4  # packed: within 1e-5


def test_packed_teacher_topk_in_item_order_equals_padded():
    lm = model("sdpa").eval()
    batch_items = items(with_topk=False)
    fmt = TopkFormat(K, V, "float16")
    padded = fmt.decode(teacher_rows(lm, TranslationCollator(0)(batch_items), fmt, chunk_size=16))
    packed_batch = TranslationCollator(0, pack_length=40)(batch_items)
    assert packed_batch["order"].tolist() != list(range(len(batch_items)))  # the test reorders
    rows = teacher_rows(lm, packed_batch, fmt, chunk_size=16)
    packed = dict(zip(rows, restore_item_order(packed_batch, batch_items, *rows.values()), strict=True))
    unpacked = fmt.decode(packed)
    torch.testing.assert_close(unpacked["topk_logprobs"], padded["topk_logprobs"], rtol=1e-3, atol=1e-3)  # fp16
    assert (unpacked["topk_indices"] == padded["topk_indices"]).float().mean() > 0.99  # near-ties may swap
    torch.testing.assert_close(unpacked["topk_tail"], padded["topk_tail"], rtol=1e-4, atol=1e-5)  # tail log-mass


def test_packed_teacher_rows_follow_the_packed_order():
    batch_items = items()
    packed = TranslationCollator(0, pack_length=40)(batch_items)
    for key in ("topk_logprobs", "topk_indices", "topk_tail"):
        expected = torch.cat([batch_items[i][key] for i in packed["order"].tolist()])
        assert torch.equal(packed[key], expected)
    mask = packed["labels"][:, 1:] != IGNORE_INDEX
    targets = packed["labels"][:, 1:][mask]
    expected_targets = [t for i in packed["order"].tolist() for t in batch_items[i]["input_ids"][LENGTHS[i][1] :]]
    assert targets.tolist() == expected_targets
