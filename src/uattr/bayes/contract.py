"""The posterior contract: what a model must provide to be explained as a posterior.

Two structural types (``typing.Protocol``, checked at runtime with ``isinstance``), so any module
with the method qualifies, not only this package's classes:

- :class:`SamplingPosterior`: ``sample_logits(x [B, C, H, W]) -> [S, B, K]`` logit samples
  (``MCDropout``, ``DeepEnsemble``); sample s must be the same function of x on every call, so
  uncertainties are deterministic and differentiable in x;
- :class:`DirichletPosterior`: ``alpha(x [B, C, H, W]) -> [B, K]`` Dirichlet concentrations, every
  entry >= 1 (``Evidential``). A Dirichlet posterior that also has a ``backbone`` module (whose
  logits become the evidence) has its class scores explained on those pre-evidence logits.

Any other ``nn.Module`` returning logits [B, K] is a one-sample posterior (S = 1). Code that
dispatches on the kind uses :func:`uattr.bayes.posterior.is_evidential` /
:func:`~uattr.bayes.posterior.is_sampling` / :func:`~uattr.bayes.posterior.posterior_kind`,
which also require the method to be callable (an ``nn.Module`` attribute named ``alpha`` that is a
parameter does not make a model evidential).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["DirichletPosterior", "SamplingPosterior"]


@runtime_checkable
class SamplingPosterior(Protocol):
    """A posterior given by S fixed samples of the logits."""

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit samples [S, B, K] for images ``x`` [B, C, H, W]; differentiable in ``x``."""
        ...


@runtime_checkable
class DirichletPosterior(Protocol):
    """A posterior given by one Dirichlet distribution over the class probabilities."""

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """Dirichlet concentrations [B, K] (>= 1) for images ``x`` [B, C, H, W]."""
        ...
