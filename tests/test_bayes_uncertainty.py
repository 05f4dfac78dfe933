"""Entropy decomposition of sampled predictions: known answers and identities."""

import math

import pytest
import torch

from uattr.bayes import Uncertainty, decompose, decompose_logits, predictive_probs


def _random_logits(s=6, b=5, c=4, seed=0, dtype=torch.float64):
    return torch.randn(s, b, c, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3


def test_identical_samples_have_no_epistemic_uncertainty():
    logits = _random_logits(s=1).expand(7, -1, -1)
    u = decompose(logits.softmax(-1))
    # All samples agree: the mutual information is 0, so total == aleatoric.
    torch.testing.assert_close(u.total, u.aleatoric)
    assert torch.all(u.epistemic.abs() <= 1e-12)
    assert torch.all(decompose_logits(logits).epistemic.abs() <= 1e-12)


def test_uniform_probabilities_give_log_c():
    c = 7
    u = decompose(torch.full((3, 2, c), 1.0 / c))
    torch.testing.assert_close(u.total, torch.full((2,), math.log(c)))
    torch.testing.assert_close(u.aleatoric, torch.full((2,), math.log(c)))
    torch.testing.assert_close(u.epistemic, torch.zeros(2), atol=1e-6, rtol=0)


def test_confident_disagreeing_samples_are_purely_epistemic_and_exact_zeros_give_no_nan():
    # Two one-hot samples that disagree: each has entropy 0, their mean is uniform over 2 classes.
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    u = decompose(probs)
    torch.testing.assert_close(u.total, torch.tensor([math.log(2)]))
    torch.testing.assert_close(u.aleatoric, torch.tensor([0.0]))
    torch.testing.assert_close(u.epistemic, torch.tensor([math.log(2)]))


def test_random_inputs_satisfy_bounds_and_sum():
    logits = _random_logits(s=10, b=50, c=5, seed=1)
    u = decompose(logits.softmax(-1))
    assert isinstance(u, Uncertainty)
    assert all(t.shape == (50,) for t in u)
    assert torch.all(u.epistemic >= 0)
    assert torch.all(u.total <= math.log(5) + 1e-12)
    torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)


def test_decompose_logits_equals_decompose():
    logits = _random_logits(seed=2)
    for a, b in zip(decompose(logits.softmax(-1)), decompose_logits(logits), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_decompose_logits_is_exact_and_has_finite_gradients_for_huge_logit_gaps():
    # softmax underflows to exactly 0 here; the log-space path must still give finite grads.
    logits = torch.tensor([[[0.0, 1000.0, -1000.0]], [[1000.0, 0.0, 0.0]]], requires_grad=True)
    u = decompose_logits(logits)
    torch.testing.assert_close(u.total.detach(), torch.tensor([math.log(2)]))
    torch.testing.assert_close(u.aleatoric.detach(), torch.tensor([0.0]))
    for kind in u:
        (grad,) = torch.autograd.grad(kind.sum(), logits, retain_graph=True)
        assert torch.isfinite(grad).all()


def test_gradients_match_between_probability_and_logit_paths():
    logits = _random_logits(seed=3).requires_grad_()
    g1 = torch.autograd.grad(decompose(logits.softmax(-1)).epistemic.sum(), logits)[0]
    g2 = torch.autograd.grad(decompose_logits(logits).epistemic.sum(), logits)[0]
    torch.testing.assert_close(g1, g2)


def test_predictive_probs_is_mean_softmax():
    logits = _random_logits(seed=4)
    p = predictive_probs(logits)
    torch.testing.assert_close(p, logits.softmax(-1).mean(0))
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(4, 3), r"\[S, B, C\]"),
        (torch.ones(2, 3, 1), "C >= 2"),
        (torch.full((2, 3, 4), float("nan")), "NaN"),
        (torch.randn(2, 3, 4), "logits"),  # logits passed to decompose by mistake
    ],
)
def test_decompose_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        decompose(bad)


def test_decompose_logits_rejects_non_finite_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN or Inf"):
        decompose_logits(torch.tensor([[[0.0, float("inf")]]]))
    with pytest.raises(ValueError, match=r"\[S, B, C\]"):
        decompose_logits(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        decompose_logits(torch.zeros(1, 2, 3, dtype=torch.long))
