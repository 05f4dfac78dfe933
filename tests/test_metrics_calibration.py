"""Calibration metrics: known answers, decomposability, reset, agreement with torchmetrics."""

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from uattr.metrics import (
    BrierScore,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)


def _random_probs(n=64, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, k, generator=g).mul(2).softmax(-1)
    target = torch.randint(0, k, (n,), generator=g)
    return probs, target


def test_perfect_one_hot_predictor_scores_zero():
    target = torch.tensor([0, 2, 1, 2])
    probs = torch.nn.functional.one_hot(target, 3).float()
    assert NegativeLogLikelihood()(probs, target).item() == pytest.approx(0.0, abs=1e-12)
    assert BrierScore()(probs, target).item() == pytest.approx(0.0, abs=1e-12)


def test_uniform_predictor():
    k = 7
    probs = torch.full((10, k), 1.0 / k)
    target = torch.arange(10) % k
    # -log(1/K) = ln K; Brier = (1 - 1/K)^2 + (K - 1)/K^2 = 1 - 1/K.
    assert negative_log_likelihood(probs, target).item() == pytest.approx(math.log(k), rel=1e-6)
    assert brier_score(probs, target).item() == pytest.approx(1 - 1 / k, rel=1e-6)


def test_confidently_wrong_is_clamped_not_infinite():
    probs = torch.tensor([[1.0, 0.0]])
    nll = negative_log_likelihood(probs, torch.tensor([1]))
    assert nll.item() == pytest.approx(-math.log(1e-12))


def test_against_naive_formulas():
    probs, target = _random_probs()
    nll = -sum(math.log(probs[i, target[i]].item()) for i in range(len(target))) / len(target)
    brier = sum(
        sum((probs[i, j].item() - float(j == target[i])) ** 2 for j in range(probs.shape[1]))
        for i in range(len(target))
    ) / len(target)
    assert NegativeLogLikelihood()(probs, target).item() == pytest.approx(nll, rel=1e-6)
    assert BrierScore()(probs, target).item() == pytest.approx(brier, rel=1e-6)


@pytest.mark.parametrize("cls", [NegativeLogLikelihood, BrierScore])
def test_two_updates_equal_one_and_reset(cls):
    probs, target = _random_probs()
    whole = cls()(probs, target)
    m = cls()
    m.update(probs[:20], target[:20])
    m.update(probs[20:], target[20:])
    assert torch.allclose(m.compute(), whole)
    m.reset()
    m.update(probs[:5], target[:5])
    assert torch.allclose(m.compute(), cls()(probs[:5], target[:5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_function_is_the_metric_on_one_batch_to_the_bit(dtype):
    # Both run the same _update and _compute, so they cannot drift apart.
    probs, target = _random_probs(n=500, k=10, seed=4)
    probs = probs.to(dtype)
    for fn, cls in ((negative_log_likelihood, NegativeLogLikelihood), (brier_score, BrierScore)):
        got = fn(probs, target)
        assert got.dtype == torch.float64
        assert torch.equal(got, cls()(probs, target)), fn.__name__


def test_ece_of_a_calibrated_predictor_is_zero():
    # Confidence c on class 0, right with frequency exactly c (each level falls in its own bin).
    probs, target = [], []
    k = 4
    for c in (0.4, 0.6, 0.8, 1.0):
        for i in range(10):
            probs.append([c] + [(1 - c) / (k - 1)] * (k - 1))
            target.append(0 if i < round(c * 10) else 1)
    probs, target = torch.tensor(probs), torch.tensor(target)
    assert expected_calibration_error(probs, target).item() == pytest.approx(0.0, abs=1e-6)
    ece = ExpectedCalibrationError(num_classes=k)
    ece.update(probs, target)
    assert ece.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_ece_is_torchmetrics_and_overconfidence_is_seen():
    probs, target = _random_probs(n=200, k=3, seed=3)
    want = multiclass_calibration_error(probs, target, num_classes=3, n_bins=15)
    assert torch.allclose(expected_calibration_error(probs, target), want)
    # Always 90% sure and right half the time: ECE = 0.4.
    probs = torch.tensor([[0.9, 0.1]] * 10)
    target = torch.tensor([0, 1] * 5)
    assert expected_calibration_error(probs, target).item() == pytest.approx(0.4, abs=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="probabilities"):
        NegativeLogLikelihood().update(torch.randn(3, 2) * 5, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="classes"):
        BrierScore().update(torch.full((2, 2), 0.5), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        BrierScore().update(torch.full((2,), 0.5), torch.tensor([0, 1]))
