"""Evidential classifier (Sensoy, Kaplan & Kandemir, NeurIPS 2018): a Dirichlet over classes.

The backbone's outputs become non-negative evidence e [B, K]; ``alpha = e + 1`` parametrises
Dir(p | alpha), ``S = sum_j alpha_j`` is its strength, ``alpha / S`` the expected probabilities and
``u = K / S`` the vacuity ("uncertainty mass", 1 with no evidence).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EVIDENCE_FUNCTIONS",
    "DirichletUncertainty",
    "Evidential",
    "check_alpha",
    "dirichlet_uncertainty",
    "evidence",
]

EvidenceKind = Literal["relu", "exp", "softplus"]
EVIDENCE_FUNCTIONS: tuple[str, ...] = ("relu", "exp", "softplus")


def evidence(logits: torch.Tensor, kind: EvidenceKind = "relu") -> torch.Tensor:
    """Non-negative evidence from logits, as the reference code (EDL ``losses.py``) defines it.

    ``relu``: max(z, 0) (the paper's default); ``exp``: exp(clamp(z, -10, 10)); ``softplus``:
    log(1 + e^z).
    """
    if kind == "relu":
        return F.relu(logits)
    if kind == "exp":
        return torch.exp(torch.clamp(logits, -10.0, 10.0))
    if kind == "softplus":
        return F.softplus(logits)
    raise ValueError(f"unknown evidence function {kind!r}; use one of {EVIDENCE_FUNCTIONS}.")


class Evidential(nn.Module):
    """A backbone whose logits are read as Dirichlet evidence: ``alpha(x) = evidence(z(x)) + 1``.

    The backbone runs in whatever train/eval mode it is in (callers choose; nothing is toggled).

    Args:
        backbone: a classifier returning logits [B, K].
        evidence: ``"relu"`` (default, as in the paper), ``"exp"`` or ``"softplus"``.

    Shapes: ``x`` [B, C, H, W] in [0, 1] -> ``alpha`` [B, K], every entry >= 1.
    """

    def __init__(self, backbone: nn.Module, evidence: EvidenceKind = "relu") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}.")
        if evidence not in EVIDENCE_FUNCTIONS:
            raise ValueError(
                f"unknown evidence function {evidence!r}; use one of {EVIDENCE_FUNCTIONS}."
            )
        self.backbone = backbone
        self.evidence = evidence

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """Dirichlet concentration [B, K] for images ``x`` [B, C, H, W]."""
        logits = self.backbone(x)
        if logits.dim() != 2:
            raise RuntimeError(
                f"the backbone must return logits [B, K], got shape {tuple(logits.shape)}."
            )
        return evidence(logits, self.evidence) + 1.0

    forward = alpha

    def extra_repr(self) -> str:
        return f"evidence={self.evidence!r}"


class DirichletUncertainty(NamedTuple):
    """Uncertainties of Dir(alpha), each a tensor [B]; entropies in nats, vacuity in (0, 1]."""

    total: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    vacuity: torch.Tensor


def check_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Check that ``alpha`` is a finite, positive [B, K] concentration with K >= 2."""
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise TypeError(
            f"alpha must be a floating-point tensor [B, K], got "
            f"{type(alpha).__name__ if not isinstance(alpha, torch.Tensor) else alpha.dtype}."
        )
    if alpha.dim() != 2 or alpha.shape[0] == 0 or alpha.shape[1] < 2:
        raise ValueError(
            f"alpha must have shape [B, K] with B >= 1 and K >= 2, got {tuple(alpha.shape)}."
        )
    finite, positive = torch.stack([torch.isfinite(alpha).all(), (alpha > 0).all()]).tolist()
    if not (finite and positive):
        raise ValueError(
            "alpha must be finite and > 0 (alpha = evidence + 1 >= 1 for an Evidential model); "
            "got NaN/Inf or non-positive values."
        )
    return alpha


def dirichlet_uncertainty(alpha: torch.Tensor) -> DirichletUncertainty:
    """Entropy decomposition and vacuity of Dir(alpha); differentiable w.r.t. ``alpha``.

    With S = sum_j alpha_j and p_hat = alpha / S (Malinin & Gales 2018, eqs. for Dirichlet
    prior networks; Sensoy et al. 2018 for u):

    - total     = H(p_hat), entropy of the expected categorical;
    - aleatoric = E_{p ~ Dir(alpha)}[H(p)] = -sum_j p_hat_j (psi(alpha_j + 1) - psi(S + 1));
    - epistemic = total - aleatoric, the mutual information between label and p (>= 0; clamped
      at 0 against float rounding);
    - vacuity   = K / S.

    Args:
        alpha: [B, K] concentrations, > 0.
    """
    check_alpha(alpha)
    strength = alpha.sum(-1, keepdim=True)
    p_hat = alpha / strength
    total = torch.special.entr(p_hat).sum(-1)
    aleatoric = -(p_hat * (torch.digamma(alpha + 1) - torch.digamma(strength + 1))).sum(-1)
    epistemic = (total - aleatoric).clamp_min(0.0)
    vacuity = alpha.shape[-1] / strength.squeeze(-1)
    return DirichletUncertainty(total, aleatoric, epistemic, vacuity)
