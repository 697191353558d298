"""Sampled KD (kdsweep.core.losses.sample_teacher_tokens, sampled_kd; issue 17, not wired into the
caches yet): over many independent caches, the mean gradient of the sampled loss equals the dense
forward-KL gradient (kd_kl, F.kl_div over the whole vocabulary) within a statistical bound, at T = 1
and T = 2; the top-k loss's gradient does not (the control)."""

import pytest
import torch

from kdsweep.core.losses import kd_kl, sample_teacher_tokens, sampled_kd, topk_kd

V, ROWS, DRAWS, CACHES = 50, 4, 12, 4000


def logits(seed: int, scale: float) -> torch.Tensor:
    return torch.randn(ROWS, V, generator=torch.Generator().manual_seed(seed)) * scale


def dense_gradient(student, teacher, temperature):
    s = student.clone().requires_grad_(True)
    kd_kl(s, teacher, temperature, reduction="none").sum().backward()
    return s.grad


def per_cache_gradients(student, loss_of_batch):
    """Gradients [CACHES, ROWS, V]: one student copy per cache, the losses of each copy's rows summed."""
    s = student.expand(CACHES, ROWS, V).clone().requires_grad_(True)
    loss_of_batch(s.reshape(CACHES * ROWS, V)).sum().backward()
    return s.grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_mean_sampled_gradient_is_the_dense_gradient_and_the_topk_one_is_not(temperature):
    teacher, student = logits(1, 3.0), logits(2, 1.0)
    dense = dense_gradient(student, teacher, temperature)
    # CACHES independent caches of DRAWS tokens per row (one generator: independent draws)
    ids, counts = sample_teacher_tokens(
        teacher.repeat(CACHES, 1), DRAWS, temperature, torch.Generator().manual_seed(int(10 * temperature))
    )
    grads = per_cache_gradients(student, lambda s: sampled_kd(s, ids, counts, temperature))
    mean = grads.mean(0)
    # The standard error of a mean of CACHES gradients, from the teacher alone: a token's count is
    # Binomial(DRAWS, p), and its gradient coordinate T * (q - count / DRAWS).
    p = torch.softmax(teacher / temperature, -1)
    stderr = temperature * (p * (1 - p) / DRAWS).sqrt() / CACHES**0.5
    z = (mean - dense).abs() / stderr.clamp_min(1e-12)
    assert z.max() < 5.0, f"max z {z.max():.2f}"  # 200 coordinates: |z| >= 5 by chance ~ 1e-4
    assert torch.allclose(mean, dense, atol=6 * stderr.max().item())
    # the control: top-5 (renormalized, its tail ignored) is biased well beyond that bound
    top = torch.log_softmax(teacher, -1).topk(5, dim=-1)
    topk = dense_gradient_of(lambda s: topk_kd(s, top.values, top.indices, temperature), student)
    assert ((topk - dense).abs() / stderr.clamp_min(1e-12)).max() > 20.0
    rel = lambda g: ((g - dense).norm() / dense.norm()).item()  # noqa: E731
    print(f"T={temperature}: relative gradient error, sampled mean {rel(mean):.4f}, top-5 {rel(topk):.4f}")
    assert rel(mean) < 0.02 and rel(topk) > 0.08


def dense_gradient_of(loss, student):
    s = student.clone().requires_grad_(True)
    loss(s).sum().backward()
    return s.grad


def test_draws_are_counted_once_per_distinct_token_and_rebuild_identically():
    teacher = logits(3, 2.0)
    ids, counts = sample_teacher_tokens(teacher, DRAWS, 1.0, torch.Generator().manual_seed(7))
    assert ids.shape == counts.shape == (ROWS, DRAWS)
    assert counts.sum(-1).tolist() == [DRAWS] * ROWS
    for row_ids, row_counts in zip(ids, counts, strict=True):
        kept = row_ids[row_counts > 0]
        assert kept.unique().numel() == kept.numel() and torch.equal(kept, kept.sort().values)
        assert (row_counts[row_counts.numel() - (row_counts == 0).sum() :] == 0).all()  # padding last
    again = sample_teacher_tokens(teacher, DRAWS, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], ids) and torch.equal(again[1], counts)


def test_one_certain_token_gives_the_cross_entropy_of_that_token():
    """A teacher that puts all its mass on one token: every draw is that token, and the loss is
    the student's cross-entropy on it (torch's own), times T^2."""
    teacher = torch.full((ROWS, V), -1e4)
    teacher[torch.arange(ROWS), torch.tensor([3, 7, 7, 49])] = 10.0
    student = logits(4, 1.0)
    ids, counts = sample_teacher_tokens(teacher, DRAWS, 2.0, torch.Generator().manual_seed(0))
    expected = torch.nn.functional.cross_entropy(student / 2.0, torch.tensor([3, 7, 7, 49]), reduction="none") * 4
    assert torch.allclose(sampled_kd(student, ids, counts, 2.0), expected)


def test_draws_invert_the_float64_cumulative_distribution_at_llama3_size():
    """inverse_cdf at V = 128,256 on peaked rows picks, for 20,000 uniforms per row, the token a
    float64 cumulative sum picks (written out here) every time; a plain fp32 cumulative sum (the
    control) picks another for a share of them: its tail tokens are never drawn."""
    from kdsweep.core.losses import inverse_cdf

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 128_256, generator=g) * 3
    probs = torch.softmax(logits, -1)
    u = torch.rand(4, 20_000, generator=g, dtype=torch.float64).float()
    cdf64 = probs.double().cumsum(-1)
    expected = torch.searchsorted(cdf64, u.double() * cdf64[:, -1:], right=True)
    assert torch.equal(inverse_cdf(probs, u), expected)
    cdf32 = probs.cumsum(-1)
    control = torch.searchsorted(cdf32, u * cdf32[:, -1:], right=True).clamp(max=128_255)
    assert (control != expected).float().mean() > 1e-4  # the test can tell fp32 from float64
    odd = probs[:, :1000] / probs[:, :1000].sum(-1, keepdim=True)  # a vocabulary that is no multiple of 256
    cdf_odd = odd.double().cumsum(-1)
    assert torch.equal(inverse_cdf(odd, u), torch.searchsorted(cdf_odd, u.double() * cdf_odd[:, -1:], right=True))
