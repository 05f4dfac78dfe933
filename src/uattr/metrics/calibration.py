"""Calibration of predictive distributions: NLL, Brier score, expected calibration error (ECE).

All three take posterior-mean class probabilities ``probs`` [B, K] (e.g.
:func:`uattr.bayes.posterior.predictive_distribution`; alpha / S for evidential models) and class
indices ``target`` [B]. As in torchmetrics, each metric class and its function share one private
``_update`` (a batch -> float64 sum and count) and ``_compute`` (sum / count), so they cannot drift.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification import multiclass_calibration_error

from uattr.metrics._common import check_labels

__all__ = [
    "BrierScore",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
]


def _check_probs(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point() or probs.dim() != 2:
        raise ValueError(
            f"probs must be a float tensor of class probabilities [B, K], got "
            f"{getattr(probs, 'shape', type(probs).__name__)}."
        )
    if probs.shape[0] == 0:
        raise ValueError("probs is an empty batch; nothing to score.")
    if not torch.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            "probs must be finite probabilities in [0, 1] (pass softmax outputs, not logits)."
        )
    target = check_labels(target, probs.shape[0], probs.shape[1]).to(probs.device)
    return probs, target


def _nll_update(probs: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, int]:
    """(sum_b -log max(p_b[y_b], eps) in nats as a float64 scalar, B) of one batch."""
    probs, target = _check_probs(probs, target)
    p = probs.gather(1, target[:, None]).squeeze(1).double()
    return -p.clamp_min(eps).log().sum(), probs.shape[0]


def _brier_update(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum_b sum_k (p_bk - y_bk)^2 as a float64 scalar, B) of one batch, y one-hot.

    Per-sample sums first, then their sum, so that sum / B is the mean of the per-sample scores
    to the bit.
    """
    probs, target = _check_probs(probs, target)
    onehot = torch.nn.functional.one_hot(target, probs.shape[1]).to(probs.dtype)
    return (probs - onehot).double().pow(2).sum(1).sum(), probs.shape[0]


def _mean_compute(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """The mean over samples: ``total / count``."""
    return total / count


def negative_log_likelihood(
    probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Mean negative log-likelihood -(1/B) sum_b log p_b[y_b] in nats; p is clamped at ``eps``.

    ``probs`` [B, K], ``target`` [B] -> float64 scalar. The clamp (default 1e-12, a choice) keeps
    a confidently wrong prediction finite (27.6 nats). The functional form of
    :class:`NegativeLogLikelihood`.
    """
    return _mean_compute(*_nll_update(probs, target, eps))


def brier_score(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of sum_k (p_k - y_k)^2, y one-hot (Brier 1950, multiclass; in [0, 2]).

    ``probs`` [B, K], ``target`` [B] -> float64 scalar. The functional form of
    :class:`BrierScore`.
    """
    return _mean_compute(*_brier_update(probs, target))


def expected_calibration_error(
    probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15, norm: str = "l1"
) -> torch.Tensor:
    """Top-label ECE (Guo et al. 2017): torchmetrics' ``multiclass_calibration_error``.

    Confidence = max_k p_k, binned into ``n_bins`` equal-width bins on [0, 1] (default 15, as
    torchmetrics and Guo et al.); ECE = sum over bins of (bin size / N) |accuracy - confidence|.
    """
    probs, target = _check_probs(probs, target)
    return multiclass_calibration_error(
        probs, target, num_classes=probs.shape[1], n_bins=n_bins, norm=norm
    )


class NegativeLogLikelihood(Metric):
    """Mean negative log-likelihood of the true class, in nats (lower is better).

    ``update(probs [B, K], target [B])``; ``compute()`` -> scalar. Probabilities are clamped at
    ``eps`` (default 1e-12, a choice) before the log. A perfect one-hot predictor scores 0; the
    uniform distribution over K classes scores ln K.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, eps: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        total, count = _nll_update(probs, target, self.eps)
        self.nll_sum += total
        self.count += count

    def compute(self) -> torch.Tensor:
        return _mean_compute(self.nll_sum, self.count)


class BrierScore(Metric):
    """Multiclass Brier score: mean over samples of sum_k (p_k - y_k)^2 (lower is better; [0, 2]).

    ``update(probs [B, K], target [B])``; ``compute()`` -> scalar. Uses the sum over classes, not
    the mean (Brier 1950; TorchUncertainty's default), so a uniform prediction over K classes scores
    1 - 1/K.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("brier_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        total, count = _brier_update(probs, target)
        self.brier_sum += total
        self.count += count

    def compute(self) -> torch.Tensor:
        return _mean_compute(self.brier_sum, self.count)


class ExpectedCalibrationError(MulticlassCalibrationError):
    """Top-label expected calibration error: torchmetrics' ``MulticlassCalibrationError`` as is.

    ``ExpectedCalibrationError(num_classes, n_bins=15, norm="l1")``; ``update(probs [B, K],
    target [B])``; ``compute()`` -> scalar. Equal-width confidence bins on [0, 1] (15 by default,
    as Guo et al. 2017). Inputs outside [0, 1] are treated as logits and softmaxed by torchmetrics,
    so pass probabilities. This subclass only exists to give the metric its common name here.
    """
