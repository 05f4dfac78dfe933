"""FullGrad (Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
NeurIPS 2019, arXiv 1905.00780), for class scores and for uncertainties.

Saliency (eq. 6 of the paper; ``FullGrad.saliency`` in idiap/fullgrad-saliency):

    S(x) = psi(grad_x f ⊙ x) + sum_{l spatial} sum_c psi(grad_{b_l} f ⊙ b_l)_c

with psi = abs, then per image min-max over all channels and positions of that term
(``(t - min) / (max - min + 1e-6)``), then bilinear upsampling (``align_corners=True``) to the
image size; the input term and every 4-D bias term (conv, BatchNorm folded, ``Normalize``) are
summed over channels. ``nn.Linear`` bias terms have no spatial extent: they enter the
completeness check (:func:`full_gradient_decomposition`) but not the map, as in the reference.

f is :func:`~uattr.attribution.base.explained_output`: the class score (the mean logit over the
posterior samples; the backbone logit of an evidential model), an uncertainty in nats (the
FullGrad baseline of Wang et al.'s UA-Backprop comparison; U is not piecewise linear, so
completeness does not hold for it) or a callable target's value. A posterior's samples share
one set of biases, so a layer's bias gradient is summed over the S samples before psi (the
gradient w.r.t. the shared bias map).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from uattr.attribution.base import (
    Attribution,
    Target,
    TargetFn,
    differentiable_output,
    resolve_target,
)
from uattr.attribution.bias_gradients import (
    BiasOutput,
    capture_bias_outputs,
    gradients,
    upsample,
)
from uattr.attribution.conv_input_grad import small_input_conv_gradients
from uattr.bayes.posterior import check_uncertainty_kind
from uattr.common import check_images
from uattr.modes import evaluating

__all__ = ["FullGrad", "FullGradientDecomposition", "full_gradient_decomposition"]

#: The reference's ``_postProcess`` epsilon.
_EPS = 1e-6


class FullGradientDecomposition(NamedTuple):
    """``output == input_term + sum(bias_terms.values())`` for a piecewise-linear model.

    Attributes:
        output: f(x) [B], the explained scalar.
        input_term: ``sum(grad_x f ⊙ x)`` [B].
        bias_terms: ``sum(grad_{h_l} f ⊙ b_l)`` [B] per biased layer call, by qualified name
            (summed over posterior samples), including ``nn.Linear`` layers.
    """

    output: torch.Tensor
    input_term: torch.Tensor
    bias_terms: dict[str, torch.Tensor]

    @property
    def reconstruction(self) -> torch.Tensor:
        """``input_term + sum of bias_terms`` [B]; equals ``output`` when completeness holds."""
        total = self.input_term
        for term in self.bias_terms.values():
            total = total + term
        return total


def _fold_samples(grad: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A site gradient [N, ...] over N = P*B sample-major rows -> [B, ...] summed over samples
    (P = S, or 1 for a layer before MCDropout's first dropout, run once for all samples)."""
    n = grad.shape[0]
    if n % batch:
        raise RuntimeError(
            f"layer {name} saw {n} rows, not a multiple of the batch size {batch}; full-gradient "
            "attribution needs batch-first layers with sample-major posterior rows."
        )
    return grad.reshape(n // batch, batch, *grad.shape[1:]).sum(0)


def _full_gradients(
    model: nn.Module, x: torch.Tensor, target: str | torch.Tensor | TargetFn
) -> tuple[torch.Tensor, torch.Tensor, list[BiasOutput], list[torch.Tensor]]:
    """f(x) [B], grad_x f [B, C, H, W], the sites and their per-image bias gradients, one backward.

    Expects eval mode and gradients enabled; ``x`` is detached here.
    """
    if isinstance(target, str):
        check_uncertainty_kind(model, target)
    leaf = x.detach().requires_grad_(True)
    with small_input_conv_gradients(model), capture_bias_outputs(model) as sites:
        output = differentiable_output(model, leaf, target)
    grad_x, site_grads = gradients(
        output, leaf, sites, torch.ones_like(output), batched=False, retain_graph=False
    )
    folded = [_fold_samples(g, x.shape[0], s.name) for s, g in zip(sites, site_grads, strict=True)]
    return output.detach(), grad_x, list(sites), folded


def full_gradient_decomposition(
    model: nn.Module, x: torch.Tensor, target: Target
) -> FullGradientDecomposition:
    """The full-gradient decomposition of the explained output (Srinivas & Fleuret 2019, eq. 2).

    For a class target and a model that is piecewise linear for fixed posterior samples (ReLU,
    max/avg-pooling, fixed dropout masks, eval-mode BatchNorm), ``output == reconstruction`` up to
    float rounding: every bias (conv, linear, folded BatchNorm, ``Normalize``) is counted. Runs in
    eval mode (flags restored) with gradients enabled, also under ``no_grad`` / ``inference_mode``.

    Args:
        model: posterior wrapper, evidential model or plain classifier.
        x: images [B, C, H, W].
        target: class indices LongTensor[B] (or an int; ``None``: the predicted class), an
            uncertainty kind, or a callable ``(model, x) -> [B]``.

    Returns:
        :class:`FullGradientDecomposition`, detached tensors [B].
    """
    check_images(x, name="full_gradient_decomposition inputs")
    with evaluating(model), torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        target = resolve_target(model, x, target)
        output, grad_x, sites, site_grads = _full_gradients(model, x, target)
        input_term = (grad_x * x).flatten(1).sum(1)
        bias_terms = {
            site.name: site.contribution(g).detach()
            for site, g in zip(sites, site_grads, strict=True)
        }
    return FullGradientDecomposition(output, input_term.detach(), bias_terms)


def _post_process(term: torch.Tensor) -> torch.Tensor:
    """FullGrad's psi on [B, C, h, w]: abs, per-image min-max over (C, h, w), then the channel sum,
    [B, h, w]. Summing before upsampling is exact (upsampling is linear and keeps constants).

    Not :func:`uattr.common.minmax_scale`: the reference divides by ``max - min + 1e-6`` (so a
    constant term is 0, and a tiny range is not blown up to [0, 1]) and sums the channels first.
    """
    a = term.abs()
    flat = a.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return (a.sum(1) - a.shape[1] * lo) / (hi - lo + _EPS)


class FullGrad(Attribution):
    """FullGrad saliency [B, H, W] (>= 0) of a class score or an uncertainty.

    One forward with hooks on every biased layer and one backward to the input and all biased
    layer outputs. The map sums the post-processed input-gradient term and the post-processed bias
    term of every spatial layer (conv / BatchNorm / ``Normalize``; see the module docstring).

    Args:
        model: a posterior wrapper (``MCDropout``, ``DeepEnsemble``), an ``Evidential`` model or a
            plain classifier. BatchNorm layers must have running statistics.
    """

    label: ClassVar[str] = "FullGrad"
    accepts_callable: ClassVar[bool] = True

    def attribute(self, x: torch.Tensor, target: str | torch.Tensor | TargetFn) -> torch.Tensor:
        _, grad_x, sites, site_grads = _full_gradients(self.model, x, target)
        size = (x.shape[-2], x.shape[-1])
        maps = _post_process(grad_x * x)
        for site, g in zip(sites, site_grads, strict=True):
            if site.spatial:
                maps = maps + upsample(_post_process(g * site.bias_view()), size)
        return maps
