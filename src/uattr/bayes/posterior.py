"""One entry point to the predictive distribution and uncertainties of any model kind.

Attribution and metric code call these instead of dispatching on the model themselves:

- a *sampling posterior* (:class:`~uattr.bayes.contract.SamplingPosterior`: anything with a
  ``sample_logits(x) -> [S, B, K]`` method, e.g. MCDropout, DeepEnsemble) -> entropy decomposition
  of its S samples (:func:`decompose_logits`);
- an *evidential* model (:class:`~uattr.bayes.contract.DirichletPosterior`: :class:`Evidential`,
  or anything with an ``alpha(x) -> [B, K]`` method) -> Dirichlet uncertainties
  (:func:`dirichlet_uncertainty`), the only kind with ``"vacuity"``;
- any other ``nn.Module`` returning logits [B, K] -> one sample (S = 1): total = aleatoric =
  entropy of its softmax, epistemic = 0.

Nothing here changes train/eval flags: posterior wrappers set their own modes for the call and
restore them; evidential and plain models are evaluated as they are (callers pick eval mode).
Everything is differentiable w.r.t. ``x``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeGuard

import torch
from torch import nn

from uattr.bayes.contract import DirichletPosterior, SamplingPosterior
from uattr.bayes.evidential import DirichletUncertainty, dirichlet_uncertainty
from uattr.bayes.uncertainty import Uncertainty, decompose_logits, predictive_probs
from uattr.common import EVIDENTIAL_UNCERTAINTY_KINDS, UNCERTAINTY_KINDS, check_images

__all__ = [
    "EVIDENTIAL_UNCERTAINTY_KINDS",
    "UNCERTAINTY_KINDS",
    "check_uncertainty_kind",
    "checked_output",
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


def is_evidential(model: nn.Module) -> TypeGuard[DirichletPosterior]:
    """A :class:`~uattr.bayes.contract.DirichletPosterior` with a callable ``alpha(x) -> [B, K]``
    (an :class:`~uattr.bayes.evidential.Evidential` model, or any module with that method).

    The one rule for "is this model evidential" in the package: attribution and metric code ask
    this (or :func:`posterior_kind`) instead of looking for attributes themselves.
    """
    return isinstance(model, DirichletPosterior) and callable(model.alpha)


def is_sampling(model: nn.Module) -> TypeGuard[SamplingPosterior]:
    """A :class:`~uattr.bayes.contract.SamplingPosterior` with a callable
    ``sample_logits(x) -> [S, B, K]`` (MCDropout, DeepEnsemble)."""
    return isinstance(model, SamplingPosterior) and callable(model.sample_logits)


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
    rows = copies * x.shape[0]
    if kind == "sampling":
        return checked_output(model.sample_logits(x), model, ".sample_logits", "[S, B, K]", rows)
    check_images(x, getattr(model, "in_channels", None), name=f"{type(model).__name__} inputs")
    return checked_output(model(x), model, "", "logits [B, K]", rows).unsqueeze(0)


def checked_output(out: Any, model: nn.Module, call: str, form: str, rows: int) -> torch.Tensor:
    """``out`` if it is a tensor of the shape ``form`` names (its B dimension = ``rows``); else
    a RuntimeError naming the model's method ``call`` and what it returned."""
    dims = form[form.index("[") + 1 : -1].split(", ")
    if (
        not isinstance(out, torch.Tensor)
        or out.dim() != len(dims)
        or out.shape[dims.index("B")] != rows
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(
            f"{type(model).__name__}{call} must return {form} with B = {rows}, got shape {shape}."
        )
    return out


def _alpha(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    check_images(x, getattr(model, "in_channels", None), name=f"{type(model).__name__} inputs")
    return checked_output(model.alpha(x), model, ".alpha", "[B, K]", x.shape[0])


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
