"""Entropy decomposition of a sampled posterior predictive: total = aleatoric + epistemic.

For S posterior samples theta^s with class probabilities g^s = softmax(z^s) and mean prediction
g_bar = (1/S) sum_s g^s (Depeweg et al. 2018; UA-Backprop, Wang et al. CVPR 2023, section 3.1):

- total       U_t = H(g_bar)                       entropy of the posterior predictive
- aleatoric   U_a = (1/S) sum_s H(g^s)             expected entropy of one sample
- epistemic   U_e = U_t - U_a                      mutual information I(y; theta | x) >= 0

All in nats. ``H(p) = -sum_i p_i log p_i`` with ``0 log 0 = 0`` (no epsilon, unlike CLUE's 1e-10).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Uncertainty", "decompose", "decompose_logits", "predictive_probs"]


class Uncertainty(NamedTuple):
    """Total, aleatoric and epistemic uncertainty per image, each a tensor [B] in nats."""

    total: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor


def _check_samples(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [S, B, C], got {type(t).__name__}.")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {t.dtype}.")
    if t.dim() != 3:
        raise ValueError(
            f"{what} must have shape [S, B, C] (posterior samples, batch, classes), got shape "
            f"{tuple(t.shape)}. A single deterministic prediction [B, C] is S = 1: use "
            f"{what}.unsqueeze(0)."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} has no samples or an empty batch (shape {tuple(t.shape)}).")
    if t.shape[2] < 2:
        raise ValueError(f"{what} needs C >= 2 classes, got shape {tuple(t.shape)}.")


def decompose(probs: torch.Tensor) -> Uncertainty:
    """Decompose the uncertainty of S sampled categorical predictions.

    Args:
        probs: [S, B, C] class probabilities of S posterior samples (each row sums to 1).

    Returns:
        :class:`Uncertainty` with ``total``, ``aleatoric``, ``epistemic`` [B] in nats. Epistemic is
        clamped at 0: mathematically U_t >= U_a (Jensen, entropy is concave), so only float rounding
        can make the difference negative, e.g. -1e-7 when all samples agree.

    Raises:
        ValueError: wrong shape, fewer than 2 classes, NaN/Inf or negative probabilities, or rows
            that do not sum to 1 (logits passed by mistake: use :func:`decompose_logits`).
    """
    _check_samples(probs, "probs")
    tol = max(1e-3, 10 * torch.finfo(probs.dtype).eps)
    finite, nonneg, normalised = torch.stack(
        [
            torch.isfinite(probs).all(),
            (probs >= 0).all(),
            ((probs.sum(-1) - 1).abs() <= tol).all(),
        ]
    ).tolist()
    if not finite:
        raise ValueError("probs contains NaN or Inf values; the model's output is not finite.")
    if not (nonneg and normalised):
        raise ValueError(
            "probs must be probabilities: non-negative, each [s, b, :] row summing to 1. "
            "Got values outside that (are these logits? use decompose_logits(logits))."
        )
    # torch.special.entr(p) = -p log p with entr(0) = 0, so an exact 0 gives no NaN.
    total = torch.special.entr(probs.mean(0)).sum(-1)
    aleatoric = torch.special.entr(probs).sum(-1).mean(0)
    return Uncertainty(total, aleatoric, (total - aleatoric).clamp_min(0.0))


def decompose_logits(logits: torch.Tensor) -> Uncertainty:
    """Same values as ``decompose(logits.softmax(-1))``, computed in log space.

    ``log g^s = log_softmax(z^s)`` and ``log g_bar = logsumexp_s(log g^s) - log S``, so every
    ``p log p`` term is formed from a finite log-probability: values and gradients stay finite
    even when a softmax underflows to exactly 0 (logit gaps of ~100 or more), which is what
    gradient-based attribution of U needs.

    Args:
        logits: [S, B, C] logits of S posterior samples.

    Returns:
        :class:`Uncertainty` [B] each, nats; differentiable w.r.t. ``logits``. Epistemic is clamped
        at 0 (float rounding only), so its gradient is that of ``total - aleatoric`` wherever it is
        positive or exactly 0.

    Raises:
        ValueError: wrong shape, fewer than 2 classes, or NaN/Inf logits.
    """
    _check_samples(logits, "logits")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or Inf values; the model's output is not finite.")
    log_p = torch.log_softmax(logits, dim=-1)
    aleatoric = -(log_p.exp() * log_p).sum(-1).mean(0)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(logits.shape[0])
    total = -(log_mean.exp() * log_mean).sum(-1)
    return Uncertainty(total, aleatoric, (total - aleatoric).clamp_min(0.0))


def predictive_probs(logits: torch.Tensor) -> torch.Tensor:
    """Posterior predictive ``g_bar = mean_s softmax(z^s)``: logits [S, B, C] -> probs [B, C]."""
    _check_samples(logits, "logits")
    return torch.softmax(logits, dim=-1).mean(0)
