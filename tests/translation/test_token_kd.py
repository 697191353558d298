"""Token-level KD from a top-k cache against the dense loss computed over the full vocabulary:
exact at k = V for every kind and tail option, a student whose mass sits outside the top-k gets a
large loss (negative controls), bounded error at small k, and the chunked computation equal to
the plain one (values and gradients)."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.core.losses import TAIL_OPTIONS, TOKEN_KD_LOSSES, TopkKD, chunked_token_losses, kd_kl, topk_kd

V = 50


def dense(student, teacher, temperature, kind):
    """The dense divergences written out over the full vocabulary, times T^2."""
    log_p = F.log_softmax(teacher / temperature, -1)
    log_q = F.log_softmax(student / temperature, -1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        d = (p * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        d = (q * (log_q - log_p)).sum(-1)
    else:
        m = (p + q) / 2
        d = 0.5 * (p * (log_p - m.log())).sum(-1) + 0.5 * (q * (log_q - m.log())).sum(-1)
    return d * temperature**2


def cached_topk(teacher, k):
    """What the cache stores: the top-k log-probabilities at T = 1, their ids and the log of the
    tail's mass (the other V - k tokens)."""
    log_p = F.log_softmax(teacher.float(), -1)
    top = log_p.topk(k, dim=-1)
    return top.values, top.indices, log_p.scatter(-1, top.indices, float("-inf")).logsumexp(-1)


@pytest.mark.parametrize("tail", TAIL_OPTIONS)
@pytest.mark.parametrize("kind", TOKEN_KD_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_sparse_equals_dense_when_k_is_the_vocabulary(kind, tail, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(7, V) * 3, torch.randn(7, V) * 3
    logprobs, indices, tail_mass = cached_topk(teacher, V)
    sparse = topk_kd(student, logprobs, indices, temperature, kind, tail, tail_mass)
    torch.testing.assert_close(sparse, dense(student, teacher, temperature, kind), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", TOKEN_KD_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_bucket_is_exact_when_one_token_is_left_out(kind, temperature):
    """With k = V - 1 the bucket is exactly the one token outside the top-k, at every T."""
    torch.manual_seed(6)
    student, teacher = torch.randn(7, V) * 3, torch.randn(7, V) * 3
    logprobs, indices, tail_mass = cached_topk(teacher, V - 1)
    sparse = topk_kd(student, logprobs, indices, temperature, kind, "bucket", tail_mass)
    torch.testing.assert_close(sparse, dense(student, teacher, temperature, kind), rtol=1e-4, atol=1e-5)


def test_forward_kl_matches_the_classification_kd_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(5, V), torch.randn(5, V)
    sparse = topk_kd(student, *cached_topk(teacher, V)[:2], 2.0).mean()
    torch.testing.assert_close(sparse, kd_kl(student, teacher, 2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", TAIL_OPTIONS)
@pytest.mark.parametrize("kind", TOKEN_KD_LOSSES)
def test_student_mass_outside_the_top_k_gets_a_large_loss(kind, tail):
    """Negative control: the student has the teacher's ratios inside the top-8 but 90 % of its
    mass on one token outside it. Renormalizing the student over the top-k (what reverse KL and
    JSD once did) gives it zero loss; the full-vocabulary normalizer must not."""
    torch.manual_seed(4)
    k = 8
    teacher = torch.randn(16, V)
    teacher[:, :k] += 9.0  # the top-8 holds ~99.8 % of the teacher's mass
    logprobs, indices, tail_mass = cached_topk(teacher, k)
    good = teacher.clone()  # the teacher itself: the best a student can do
    bad = teacher.clone()
    outside = bad[:, :k].logsumexp(-1) + math.log(9.0)  # one outside token with 9x the top-k's mass
    bad[:, k] = outside
    bad_loss = topk_kd(bad, logprobs, indices, 1.0, kind, tail, tail_mass)
    good_loss = topk_kd(good, logprobs, indices, 1.0, kind, tail, tail_mass)
    renormalized = F.log_softmax(bad.gather(-1, indices), -1) - F.log_softmax(logprobs, -1)
    assert renormalized.abs().max() < 1e-4  # inside the top-k the ratios are right: a renormalized loss is ~0
    assert (bad_loss > 0.4).all(), bad_loss  # forward KL >= log 10 = 2.3, reverse KL 0.67, JSD 0.52 (ignore)
    assert (bad_loss > 50 * good_loss.abs().max()).all(), (bad_loss, good_loss)
    assert (dense(bad, teacher, 1.0, kind) > 0.4).all()  # the dense loss agrees that this student is bad


def peaked(seed=2, tokens=64, vocab=32000, noise=1.5):
    """LM-like rows: a few tokens hold almost all the teacher's mass; the student is the teacher
    plus noise (a partly trained student)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(tokens, vocab, generator=g)
    teacher[:, :8] += 14.0
    student = teacher + torch.randn(tokens, vocab, generator=g) * noise
    return student, teacher


def test_forward_kl_at_small_k_is_bounded_by_the_tail_on_a_peaked_teacher():
    student, teacher = peaked()
    logprobs, indices, _ = cached_topk(teacher, 16)
    tail = 1 - logprobs.exp().sum(-1)
    assert tail.mean() < 0.01 and tail.max() < 0.02  # top-16 of 32000 holds > 98 % of the mass
    d = dense(student, teacher, 1.0, "forward_kl")
    s = topk_kd(student, logprobs, indices, 1.0)
    # KL(p_hat || q) - KL(p || q) = m/(1-m) * sum_S p log(p/q) - log(1-m) - sum_tail p log(p/q),
    # with m the tail mass: every term vanishes with m.
    p = F.softmax(teacher, -1)
    log_ratio = F.log_softmax(teacher, -1) - F.log_softmax(student, -1)
    in_top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, indices, True)
    head_kl = (p * log_ratio * in_top).sum(-1)
    tail_kl = (p * log_ratio * ~in_top).sum(-1)
    bound = tail / (1 - tail) * head_kl.abs() - torch.log1p(-tail) + tail_kl.abs()
    assert ((s - d).abs() <= bound + 1e-5).all()
    assert ((s - d).abs() / d).mean() < 0.01


def _tail_masses(student, teacher, indices):
    in_top = torch.zeros_like(teacher, dtype=torch.bool).scatter_(-1, indices, True)
    p, q = F.softmax(teacher, -1), F.softmax(student, -1)
    return p, q, in_top, (p * ~in_top).sum(-1), (q * ~in_top).sum(-1)


def test_reverse_kl_at_small_k_within_its_bounds_of_the_dense_loss():
    student, teacher = peaked()
    logprobs, indices, tail_mass = cached_topk(teacher, 16)
    d = dense(student, teacher, 1.0, "reverse_kl")
    p, q, in_top, p_tail, q_tail = _tail_masses(student, teacher, indices)
    log_ratio = F.log_softmax(student, -1) - F.log_softmax(teacher, -1)  # log q/p
    # bucket: the chain rule of KL splits the dense loss into the (k+1)-category KL and the tail's
    # conditional KL, weighted by the student's tail mass: dense = bucket + Q_t KL(q_t || p_t).
    tail_kl = (q * ~in_top * (log_ratio - (q_tail / p_tail).log()[:, None])).sum(-1) / q_tail
    bucket = topk_kd(student, logprobs, indices, 1.0, "reverse_kl", "bucket", tail_mass)
    torch.testing.assert_close(bucket + q_tail * tail_kl, d, rtol=1e-4, atol=1e-5)
    assert (bucket <= d + 1e-5).all()  # coarse-graining never increases a divergence
    # ignore: |dense - ignore| <= |sum_tail q log(q/p)| + Q_S |log P_S| + Q_t (from its definition).
    ignore = topk_kd(student, logprobs, indices, 1.0, "reverse_kl", "ignore")
    bound = (q * ~in_top * log_ratio).sum(-1).abs() + (1 - q_tail) * (1 - p_tail).log().abs() + q_tail
    assert ((ignore - d).abs() <= bound + 1e-5).all()
    # On this peaked teacher (tail < 2 %) both are within 3 % of the dense loss on average.
    for sparse in (bucket, ignore):
        assert ((sparse - d).abs() / d).mean() < 0.03, ((sparse - d).abs() / d).mean()


def test_jsd_at_small_k_within_its_bounds_of_the_dense_loss():
    student, teacher = peaked()
    logprobs, indices, tail_mass = cached_topk(teacher, 16)
    d = dense(student, teacher, 1.0, "jsd")
    _, _, _, p_tail, q_tail = _tail_masses(student, teacher, indices)
    # bucket: the dense JSD's tail terms are each <= ln 2 (p + q) / 2 and the bucket's >= 0, so
    # 0 <= dense - bucket <= ln 2 (P_t + Q_t) / 2.
    bucket = topk_kd(student, logprobs, indices, 1.0, "jsd", "bucket", tail_mass)
    assert (bucket <= d + 1e-6).all()
    assert (d - bucket <= math.log(2) * (p_tail + q_tail) / 2 + 1e-6).all()
    # ignore: sqrt(JSD) is a metric and JSD(p, p_hat) <= ln 2 TV(p, p_hat) = ln 2 P_t, so
    # |sqrt(dense) - sqrt(ignore)| <= sqrt(ln 2 P_t).
    ignore = topk_kd(student, logprobs, indices, 1.0, "jsd", "ignore")
    assert ((ignore.sqrt() - d.sqrt()).abs() <= (math.log(2) * p_tail).sqrt() + 1e-5).all()
    for sparse in (bucket, ignore):
        assert ((sparse - d).abs() / d).mean() < 0.03, ((sparse - d).abs() / d).mean()


@pytest.mark.parametrize("kind", TOKEN_KD_LOSSES)
def test_bucket_is_closer_to_dense_than_ignore_at_t1(kind):
    """A teacher with a heavier tail (top-16 of 1000 holds ~70-90 %): the bucket keeps the tail's
    exact mass, ignore drops it."""
    student, teacher = peaked(seed=5, tokens=128, vocab=1000, noise=1.0)
    teacher[:, :8] -= 9.0
    logprobs, indices, tail_mass = cached_topk(teacher, 16)
    d = dense(student, teacher, 1.0, kind)
    errors = {
        tail: (topk_kd(student, logprobs, indices, 1.0, kind, tail, tail_mass) - d).abs().mean()
        for tail in TAIL_OPTIONS
    }
    assert errors["bucket"] < errors["ignore"], errors


@pytest.mark.parametrize("tail", TAIL_OPTIONS)
@pytest.mark.parametrize("kind", TOKEN_KD_LOSSES)
def test_chunked_losses_equal_unchunked_values_and_gradients(kind, tail):
    torch.manual_seed(3)
    head = torch.nn.Linear(16, V, bias=False)
    hidden = torch.randn(11, 16, requires_grad=True)
    targets = torch.randint(0, V, (11,))
    logprobs, indices, tail_mass = cached_topk(torch.randn(11, V) * 2, 8)
    results = []
    for chunk in (3, 1000):
        head.zero_grad()
        hidden.grad = None
        rows = {"topk_logprobs": logprobs.half(), "topk_indices": indices.int(), "topk_tail": tail_mass}
        ce, kd = chunked_token_losses(hidden, head, targets, rows, TopkKD(2.0, kind, tail), chunk)
        (0.5 * ce.sum() + 0.5 * kd.sum()).backward()
        results.append((ce.detach(), kd.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    logits = head(hidden).float()
    torch.testing.assert_close(results[1][0], F.cross_entropy(logits, targets, reduction="none"), rtol=1e-5, atol=1e-6)
    expected_kd = topk_kd(logits, logprobs.half(), indices, 2.0, kind, tail, tail_mass)
    torch.testing.assert_close(results[1][1], expected_kd.detach(), rtol=1e-5, atol=1e-6)
