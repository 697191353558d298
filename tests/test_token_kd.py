"""Token-level KD from a top-k cache: exact at k = V, bounded error at small k, temperature,
and the chunked computation equal to the plain one (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from kdflow.losses import chunked_token_losses, kd_kl, topk_kd

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


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_sparse_equals_dense_when_k_is_the_vocabulary(kind, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(7, V) * 3, torch.randn(7, V) * 3
    top = teacher.topk(V, dim=-1)
    sparse = topk_kd(student, top.values, top.indices, temperature, kind)
    torch.testing.assert_close(sparse, dense(student, teacher, temperature, kind), rtol=1e-5, atol=1e-6)


def test_forward_kl_matches_the_classification_kd_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(5, V), torch.randn(5, V)
    top = teacher.topk(V, dim=-1)
    sparse = topk_kd(student, top.values, top.indices, 2.0).mean()
    torch.testing.assert_close(sparse, kd_kl(student, teacher, 2.0), rtol=1e-5, atol=1e-6)


def test_small_k_error_is_bounded_by_the_tail_on_a_peaked_teacher():
    torch.manual_seed(2)
    vocab, k = 32000, 16
    teacher = torch.randn(64, vocab)
    teacher[:, :8] += 14.0  # a trained LM: a few tokens hold almost all the mass
    student = teacher + torch.randn(64, vocab) * 1.5
    top = teacher.topk(k, dim=-1)
    tail = 1 - (top.values - teacher.logsumexp(-1, keepdim=True)).exp().sum(-1)
    assert tail.mean() < 0.01 and tail.max() < 0.02  # top-16 of 32000 holds > 98 % of the mass
    d = dense(student, teacher, 1.0, "forward_kl")
    s = topk_kd(student, top.values, top.indices, 1.0)
    # KL(p_hat || q) - KL(p || q) = m/(1-m) * sum_S p log(p/q) - log(1-m) - sum_tail p log(p/q),
    # with m the tail mass: every term vanishes with m.
    p = F.softmax(teacher, -1)
    log_ratio = F.log_softmax(teacher, -1) - F.log_softmax(student, -1)
    in_top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, top.indices, True)
    head_kl = (p * log_ratio * in_top).sum(-1)
    tail_kl = (p * log_ratio * ~in_top).sum(-1)
    bound = tail / (1 - tail) * head_kl.abs() - torch.log1p(-tail) + tail_kl.abs()
    assert ((s - d).abs() <= bound + 1e-5).all()
    assert ((s - d).abs() / d).mean() < 0.01


def test_temperature_softens_the_renormalized_top_k():
    teacher = torch.tensor([[4.0, 2.0, 0.0, -50.0]])
    student = torch.zeros(1, 4)
    top = teacher.topk(3, dim=-1)
    for t in (1.0, 3.0):
        p_hat = F.softmax(top.values / t, -1)  # the teacher target at T
        log_q = F.log_softmax(student / t, -1).gather(-1, top.indices)
        expected = t**2 * (p_hat * (p_hat.log() - log_q)).sum(-1)
        torch.testing.assert_close(topk_kd(student, top.values, top.indices, t), expected)
    assert F.softmax(top.values / 3.0, -1)[0, 0] < F.softmax(top.values, -1)[0, 0]


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_chunked_losses_equal_unchunked_values_and_gradients(kind):
    torch.manual_seed(3)
    head = torch.nn.Linear(16, V, bias=False)
    hidden = torch.randn(11, 16, requires_grad=True)
    targets = torch.randint(0, V, (11,))
    t_logits = torch.randn(11, V) * 2
    top = t_logits.topk(8, dim=-1)
    results = []
    for chunk in (3, 1000):
        head.zero_grad()
        hidden.grad = None
        ce, kd = chunked_token_losses(hidden, head, targets, top.values.half(), top.indices.int(), 2.0, kind, chunk)
        (0.5 * ce + 0.5 * kd).backward()
        results.append((ce.detach(), kd.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    logits = head(hidden).float()
    torch.testing.assert_close(results[1][0], F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-6)
