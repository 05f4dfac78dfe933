"""A posterior's raw output and what follows from it, for code that hooks into the forward pass.

:func:`forward_posterior` runs one forward of any model kind and returns its raw output: logit
samples [S, N, K] (a sampling posterior; a plain classifier as S = 1) or a Dirichlet alpha [N, K]
(an evidential model). The other functions read that output, so a caller that changes the forward
(the IBA bottleneck makes noisy copies of every image inside the model) runs it once and derives
the predictive log-probabilities and uncertainties from the same tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from uattr.bayes.evidential import dirichlet_uncertainty
from uattr.bayes.posterior import checked_output, is_evidential, sample_logits
from uattr.bayes.uncertainty import decompose_logits
from uattr.modes import evaluating

__all__ = [
    "forward_posterior",
    "log_predictive",
    "module_device",
    "posterior_uncertainty",
    "predicted_class",
]


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (else first buffer); the CPU if it has none."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def forward_posterior(model: nn.Module, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """One forward of any model kind: logits [S, N, K] (a sampling posterior, or a plain model as
    S = 1) or, for an evidential model, the Dirichlet alpha [N, K]; N = ``copies * B`` when a hook
    inside the model makes ``copies`` copies of each of the B images ``x`` (else N = B)."""
    if is_evidential(model):
        return checked_output(model.alpha(x), model, ".alpha", "[B, K]", copies * x.shape[0])
    return sample_logits(model, x, copies)


def log_predictive(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """log of the posterior predictive [N, K] from :func:`forward_posterior`'s output ``out``.

    ``log mean_s softmax(z^s)`` (computed with logsumexp, finite even where a softmax underflows)
    for logit samples [S, N, K]; ``log(alpha / sum alpha)`` for an evidential model's alpha [N, K].
    """
    if is_evidential(model):
        return torch.log(out) - torch.log(out.sum(-1, keepdim=True))
    return torch.logsumexp(torch.log_softmax(out, -1), 0) - math.log(out.shape[0])


def posterior_uncertainty(model: nn.Module, out: torch.Tensor, kind: str) -> torch.Tensor:
    """Uncertainty ``kind`` [N] (nats; vacuity in (0, 1] for evidential models) from
    :func:`forward_posterior`'s output ``out``."""
    if is_evidential(model):
        return getattr(dirichlet_uncertainty(out), kind)
    return getattr(decompose_logits(out), kind)


def predicted_class(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """argmax of the posterior predictive [B] at images ``x`` [B, C, H, W] (the default class
    target), evaluated in eval mode (every train/eval flag restored) without gradients."""
    with evaluating(model), torch.no_grad():
        return log_predictive(model, forward_posterior(model, x)).argmax(-1)
