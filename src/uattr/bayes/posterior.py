"""One entry point to the predictive distribution and uncertainties of any model kind.

Attribution and metric code call these instead of dispatching on the model themselves:

- a *sampling posterior* (anything with a ``sample_logits(x) -> [S, B, K]`` method: MCDropout,
  DeepEnsemble) -> entropy decomposition of its S samples (:func:`decompose_logits`);
- an *evidential* model (:class:`Evidential`, or anything with an ``alpha(x) -> [B, K]`` method)
  -> Dirichlet uncertainties (:func:`dirichlet_uncertainty`), the only kind with ``"vacuity"``;
- any other ``nn.Module`` returning logits [B, K] -> one sample (S = 1): total = aleatoric =
  entropy of its softmax, epistemic = 0.

Nothing here changes train/eval flags: posterior wrappers set their own modes for the call and
restore them; evidential and plain models are evaluated as they are (callers pick eval mode).
Everything is differentiable w.r.t. ``x``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from uattr.bayes.evidential import DirichletUncertainty, Evidential, dirichlet_uncertainty
from uattr.bayes.uncertainty import Uncertainty, decompose_logits, predictive_probs
from uattr.common import EVIDENTIAL_UNCERTAINTY_KINDS, UNCERTAINTY_KINDS, check_images

__all__ = [
    "EVIDENTIAL_UNCERTAINTY_KINDS",
    "UNCERTAINTY_KINDS",
    "check_uncertainty_kind",
    "is_evidential",
    "is_sampling",
    "model_uncertainties",
    "posterior_kind",
    "predict",
    "predictive_distribution",
    "sample_logits",
    "uncertainty",
]

PosteriorKind = Literal["sampling", "evidential", "deterministic"]


def is_evidential(model: nn.Module) -> bool:
    """An :class:`Evidential` model, or any module with a callable ``alpha(x)`` method."""
    return isinstance(model, Evidential) or callable(getattr(model, "alpha", None))


def is_sampling(model: nn.Module) -> bool:
    """A module with a callable ``sample_logits(x) -> [S, B, K]`` (MCDropout, DeepEnsemble)."""
    return callable(getattr(model, "sample_logits", None))


def posterior_kind(model: nn.Module) -> PosteriorKind:
    """``"evidential"``, ``"sampling"`` or ``"deterministic"`` (checked in that order)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if is_evidential(model):
        return "evidential"
    if is_sampling(model):
        return "sampling"
    return "deterministic"


def check_uncertainty_kind(model: nn.Module, kind: str) -> str:
    """Return ``kind`` if ``model`` has it; else raise a ValueError naming the valid kinds."""
    evidential = is_evidential(model)
    valid = EVIDENTIAL_UNCERTAINTY_KINDS if evidential else UNCERTAINTY_KINDS
    if kind == "vacuity" and not evidential:
        raise ValueError(
            f"uncertainty kind 'vacuity' (K / S of a Dirichlet) exists only for evidential models; "
            f"{type(model).__name__} is not one. Use one of {UNCERTAINTY_KINDS}."
        )
    if not isinstance(kind, str) or kind not in valid:
        raise ValueError(f"unknown uncertainty kind {kind!r}; use one of {valid}.")
    return kind


def sample_logits(model: nn.Module, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """Posterior logit samples [S, B, K]: a sampling posterior's S samples, or a plain model's
    logits as S = 1.

    ``copies``: the forward returns ``copies * B`` rows per sample because a hook inside the model
    makes copies of every image (the IBA bottleneck); the result is then [S, copies * B, K].

    Raises:
        ValueError: for an evidential model, which has a Dirichlet instead of logit samples.
    """
    kind = posterior_kind(model)
    if kind == "evidential":
        raise ValueError(
            f"{type(model).__name__} is evidential: it predicts a Dirichlet alpha [B, K], not "
            "logit samples. Use model.alpha(x), predictive_distribution or model_uncertainties."
        )
    if kind == "sampling":
        logits = model.sample_logits(x)
        if logits.dim() != 3 or logits.shape[1] != copies * x.shape[0]:
            raise RuntimeError(
                f"{type(model).__name__}.sample_logits must return [S, B, K] with B = "
                f"{copies * x.shape[0]}, got shape {tuple(logits.shape)}."
            )
        return logits
    check_images(x, getattr(model, "in_channels", None), name=f"{type(model).__name__} inputs")
    logits = model(x)
    rows = copies * x.shape[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RuntimeError(
            f"{type(model).__name__} must return logits [B, K] with B = {rows}, got {shape}."
        )
    return logits.unsqueeze(0)


def _alpha(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    check_images(x, getattr(model, "in_channels", None), name=f"{type(model).__name__} inputs")
    alpha = model.alpha(x)
    if alpha.dim() != 2 or alpha.shape[0] != x.shape[0]:
        raise RuntimeError(
            f"{type(model).__name__}.alpha must return [B, K] with B = {x.shape[0]}, got shape "
            f"{tuple(alpha.shape)}."
        )
    return alpha


def predict(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, Uncertainty | DirichletUncertainty]:
    """Predictive probabilities [B, K] and all uncertainties ([B] each) from one forward.

    Probabilities are the posterior mean: ``mean_s softmax(z^s)`` for logit samples, ``alpha / S``
    for an evidential model. Uncertainties are :class:`Uncertainty` (nats) or, for an evidential
    model, :class:`DirichletUncertainty` (nats; vacuity in (0, 1]).
    """
    if posterior_kind(model) == "evidential":
        alpha = _alpha(model, x)
        return alpha / alpha.sum(-1, keepdim=True), dirichlet_uncertainty(alpha)
    logits = sample_logits(model, x)
    return predictive_probs(logits), decompose_logits(logits)


def predictive_distribution(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean class probabilities [B, K] (``alpha / S`` for an evidential model)."""
    if posterior_kind(model) == "evidential":
        alpha = _alpha(model, x)
        return alpha / alpha.sum(-1, keepdim=True)
    return predictive_probs(sample_logits(model, x))


def model_uncertainties(model: nn.Module, x: torch.Tensor) -> Uncertainty | DirichletUncertainty:
    """Every uncertainty of ``model`` at ``x`` from one forward, each [B]."""
    if posterior_kind(model) == "evidential":
        return dirichlet_uncertainty(_alpha(model, x))
    return decompose_logits(sample_logits(model, x))


def uncertainty(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """One uncertainty [B] of ``model`` at images ``x`` [B, C, H, W]; differentiable w.r.t. ``x``.

    Args:
        model: a sampling posterior, an evidential model or a plain classifier (see module doc).
        x: images [B, C, H, W] in [0, 1].
        kind: ``"total"``, ``"aleatoric"``, ``"epistemic"``, or ``"vacuity"`` (evidential only).

    Raises:
        ValueError: unknown kind (the message lists the valid ones), or ``"vacuity"`` for a
            non-evidential model. The kind is checked before any forward pass.
    """
    check_uncertainty_kind(model, kind)
    return getattr(model_uncertainties(model, x), kind)
