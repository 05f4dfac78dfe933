"""Evidential losses (Sensoy, Kaplan & Kandemir, NeurIPS 2018), as in the reference code (EDL).

Every loss takes ``alpha`` [B, K] (Dirichlet concentrations, alpha = evidence + 1) and ``target``
LongTensor[B] of class indices (y = one-hot), computes one value per sample and averages over the
batch (``reduction="mean"``, as ``torch.mean`` in the reference) or returns the [B] values
(``reduction="none"``). With S = sum_j alpha_j:

- :func:`edl_mse_loss` (paper eq. 5):
  sum_j (y_j - alpha_j/S)^2 + alpha_j (S - alpha_j) / (S^2 (S+1))
- :func:`edl_log_loss` (eq. 3, negative log of the expected likelihood):
  sum_j y_j (log S - log alpha_j)
- :func:`edl_digamma_loss` (eq. 4, expected cross-entropy): sum_j y_j (psi(S) - psi(alpha_j))
- :func:`kl_uniform_dirichlet`: KL(Dir(alpha_tilde) || Dir(1)), alpha_tilde = y + (1 - y) alpha,
  the regulariser that removes misleading evidence, weighted by :func:`annealing_coefficient`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = [
    "EDL_LOSS_KINDS",
    "EvidentialLoss",
    "annealing_coefficient",
    "edl_digamma_loss",
    "edl_log_loss",
    "edl_mse_loss",
    "kl_uniform_dirichlet",
]

Reduction = Literal["mean", "none"]
EDL_LOSS_KINDS: tuple[str, ...] = ("mse", "log", "digamma")


def _one_hot(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validate ``alpha`` [B, K] and ``target`` [B] (one device sync) and return y [B, K]."""
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise TypeError(
            "alpha must be a floating-point tensor [B, K], got "
            f"{alpha.dtype if isinstance(alpha, torch.Tensor) else type(alpha).__name__}."
        )
    if alpha.dim() != 2 or alpha.shape[0] == 0 or alpha.shape[1] < 2:
        raise ValueError(
            f"alpha must have shape [B, K] with B >= 1 and K >= 2, got {tuple(alpha.shape)}."
        )
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.long, torch.int):
        raise TypeError(
            "target must be a LongTensor[B] of class indices, got "
            f"{target.dtype if isinstance(target, torch.Tensor) else type(target).__name__}."
        )
    if target.shape != alpha.shape[:1]:
        raise ValueError(
            f"target must have shape [B] = [{alpha.shape[0]}] (class indices), got "
            f"{tuple(target.shape)}."
        )
    k = alpha.shape[1]
    target = target.to(device=alpha.device, dtype=torch.long)
    finite, positive, in_range = torch.stack(
        [
            torch.isfinite(alpha).all(),
            (alpha > 0).all(),
            ((target >= 0) & (target < k)).all(),
        ]
    ).tolist()
    if not (finite and positive):
        raise ValueError(
            "alpha must be finite and > 0 (alpha = evidence + 1 >= 1); got NaN/Inf or "
            "non-positive values."
        )
    if not in_range:
        raise ValueError(
            f"target classes must be in [0, {k - 1}], got {target.min().item()}.."
            f"{target.max().item()}."
        )
    return torch.zeros_like(alpha).scatter_(1, target[:, None], 1.0)


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


def edl_mse_loss(
    alpha: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Expected squared error under Dir(alpha) (eq. 5): squared bias of p_hat plus its variance."""
    return _reduce(_mse(alpha, _one_hot(alpha, target)), reduction)


def _mse(alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    strength = alpha.sum(-1, keepdim=True)
    p_hat = alpha / strength
    err = ((y - p_hat) ** 2).sum(-1)
    var = (alpha * (strength - alpha) / (strength * strength * (strength + 1))).sum(-1)
    return err + var


def edl_log_loss(
    alpha: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Negative log of the expected likelihood (eq. 3): ``log S - log alpha_y``."""
    return _reduce(_log(alpha, _one_hot(alpha, target)), reduction)


def _log(alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    strength = alpha.sum(-1, keepdim=True)
    return (y * (torch.log(strength) - torch.log(alpha))).sum(-1)


def edl_digamma_loss(
    alpha: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Expected cross-entropy under Dir(alpha) (eq. 4): ``psi(S) - psi(alpha_y)``."""
    return _reduce(_digamma(alpha, _one_hot(alpha, target)), reduction)


def _digamma(alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    strength = alpha.sum(-1, keepdim=True)
    return (y * (torch.digamma(strength) - torch.digamma(alpha))).sum(-1)


def kl_uniform_dirichlet(
    alpha: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """KL(Dir(alpha_tilde) || Dir(1, ..., 1)) with the target's evidence removed.

    ``alpha_tilde = y + (1 - y) * alpha`` (reference code: ``(alpha - 1) * (1 - y) + 1``), so only
    evidence for wrong classes is penalised. Closed form, with A = sum_j alpha_tilde_j:
    ``lnGamma(A) - sum_j lnGamma(alpha_tilde_j) - lnGamma(K)
    + sum_j (alpha_tilde_j - 1)(psi(alpha_tilde_j) - psi(A))``.
    """
    return _reduce(_kl(alpha, _one_hot(alpha, target)), reduction)


def _kl(alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = alpha.shape[1]
    tilde = y + (1 - y) * alpha
    total = tilde.sum(-1, keepdim=True)
    kl = (
        torch.lgamma(total).squeeze(-1)
        - torch.lgamma(tilde).sum(-1)
        - math.lgamma(k)
        + ((tilde - 1) * (torch.digamma(tilde) - torch.digamma(total))).sum(-1)
    )
    return kl


def annealing_coefficient(epoch: int, annealing_step: int = 10) -> float:
    """KL weight ``lambda_t = min(1, epoch / annealing_step)``; epoch is 0-based (no KL at epoch 0).

    ``annealing_step = 10`` is hard-coded in the reference ``train.py``.
    """
    if annealing_step <= 0:
        raise ValueError(f"annealing_step must be > 0, got {annealing_step}.")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (0-based), got {epoch}.")
    return min(1.0, epoch / annealing_step)


_DATA_TERMS = {"mse": _mse, "log": _log, "digamma": _digamma}


class EvidentialLoss(nn.Module):
    """``mean_b [data term + annealing_coefficient(epoch) * KL(Dir(alpha_tilde) || Dir(1))]``.

    Args:
        kind: the data term: ``"mse"`` (eq. 5, the reference default), ``"log"`` (eq. 3) or
            ``"digamma"`` (eq. 4).
        annealing_step: epochs until the KL weight reaches 1.

    ``forward(alpha [B, K], target LongTensor[B], epoch: int) -> scalar``.
    """

    def __init__(
        self, kind: Literal["mse", "log", "digamma"] = "mse", annealing_step: int = 10
    ) -> None:
        super().__init__()
        if kind not in _DATA_TERMS:
            raise ValueError(f"unknown evidential loss {kind!r}; use one of {EDL_LOSS_KINDS}.")
        if annealing_step <= 0:
            raise ValueError(f"annealing_step must be > 0, got {annealing_step}.")
        self.kind = kind
        self.annealing_step = annealing_step

    def forward(self, alpha: torch.Tensor, target: torch.Tensor, epoch: int) -> torch.Tensor:
        coef = annealing_coefficient(epoch, self.annealing_step)
        y = _one_hot(alpha, target)
        data = _DATA_TERMS[self.kind](alpha, y)
        if coef == 0.0:
            return data.mean()
        return (data + coef * _kl(alpha, y)).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, annealing_step={self.annealing_step}"
