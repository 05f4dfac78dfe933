"""The contract every attribution method follows, and what it explains (its *target*)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import nn

from uattr.modes import evaluating
from uattr.common import check_images

__all__ = [
    "Attribution",
    "Target",
    "UncertaintyKind",
    "check_target",
    "class_score",
    "differentiable_output",
    "explained_output",
]

UncertaintyKind = Literal["total", "aleatoric", "epistemic", "vacuity"]
Target = UncertaintyKind | torch.Tensor
_KINDS = ("total", "aleatoric", "epistemic", "vacuity")


def check_target(target: Target, batch_size: int) -> Target:
    """Validate ``target``: an uncertainty kind (str) or class indices LongTensor[B]."""
    if isinstance(target, str):
        if target not in _KINDS:
            raise ValueError(
                f"unknown target {target!r}: use one of {', '.join(_KINDS)} (an uncertainty) "
                "or a LongTensor[B] of class indices."
            )
        return target
    if isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.long, torch.int):
        raise TypeError(
            f"target must be an uncertainty kind ({', '.join(_KINDS)}) or a LongTensor[B] of "
            f"classes, got {type(target).__name__}"
            f"{'' if not isinstance(target, torch.Tensor) else f' of dtype {target.dtype}'}."
        )
    if target.shape != (batch_size,):
        raise ValueError(
            f"class target must have shape [B] = [{batch_size}], got {tuple(target.shape)}."
        )
    return target.long()


def class_score(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The score of class ``target`` [B] that class attributions explain, shape [B].

    A posterior wrapper with ``sample_logits`` scores the mean logit over its S fixed samples (a
    linear function of the per-sample logits, so completeness of each sample carries over); an
    evidential model scores its backbone's logit (the pre-evidence activation); any other module
    scores its logit.
    """
    if hasattr(model, "sample_logits"):
        logits = model.sample_logits(x).mean(0)
    elif hasattr(model, "alpha") and hasattr(model, "backbone"):
        logits = model.backbone(x)
    else:
        logits = model(x)
    if target.max() >= logits.shape[-1] or target.min() < 0:
        raise ValueError(
            f"class target out of range: the model has {logits.shape[-1]} classes, "
            f"got classes {target.min().item()}..{target.max().item()}."
        )
    return logits.gather(1, target.to(logits.device)[:, None]).squeeze(1)


def explained_output(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """The scalar per image [B] that an attribution of ``target`` explains (differentiable in x).

    An uncertainty kind gives that uncertainty of the posterior (nats, fixed posterior samples, so a
    deterministic function of ``x``); class indices give :func:`class_score`.
    """
    if isinstance(target, str):
        from uattr.bayes.posterior import uncertainty

        return uncertainty(model, x, target)
    return class_score(model, x, target)


def differentiable_output(model: nn.Module, leaf: torch.Tensor, target: Target) -> torch.Tensor:
    """:func:`explained_output` [N] of the rows ``leaf`` [N, C, H, W], checked to be one value per
    row that autograd can differentiate w.r.t. ``leaf``.

    Raises:
        RuntimeError: another shape, or an output detached from the input inside the model.
    """
    y = explained_output(model, leaf, target)
    if y.shape != (leaf.shape[0],):
        raise RuntimeError(
            f"the explained output must have shape [N] = [{leaf.shape[0]}], got {tuple(y.shape)}."
        )
    if not y.requires_grad:
        raise RuntimeError(
            "the explained output does not depend on the input through autograd (is it detached "
            "inside the model?); gradient attributions need a differentiable model."
        )
    return y


class Attribution(ABC):
    """Base class: ``method(x [B, C, H, W], target) -> maps [B, H, W]``.

    ``__call__`` validates the input and the target, evaluates the model in eval mode (posterior
    wrappers apply their fixed dropout masks / members themselves) and restores every submodule's
    train/eval flag afterwards, enables gradients even under ``torch.no_grad`` or
    ``torch.inference_mode`` callers (on a clone of ``x``), and checks that the maps are finite.
    Subclasses implement :meth:`attribute`, which runs with gradients enabled.

    Args:
        model: a posterior wrapper (``MCDropout``, ``DeepEnsemble``), an ``Evidential`` model or a
            plain classifier returning logits [B, K].
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        self.model = model

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        check_images(x, name=f"{self.name} inputs")
        target = check_target(target, x.shape[0])
        with evaluating(self.model), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            if isinstance(target, torch.Tensor):
                target = target.clone()
            maps = self.attribute(x, target)
        if maps.shape != (x.shape[0], *x.shape[2:]):
            raise RuntimeError(
                f"{self.name} returned maps of shape {tuple(maps.shape)}, expected [B, H, W] = "
                f"{(x.shape[0], *x.shape[2:])}."
            )
        if not torch.isfinite(maps).all():
            raise RuntimeError(
                f"{self.name} produced NaN/Inf maps; the model's output or its gradient is not "
                "finite for these inputs."
            )
        return maps.detach()

    @abstractmethod
    def attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """Maps [B, H, W] for ``x`` [B, C, H, W] (a fresh leaf; gradients are enabled)."""
