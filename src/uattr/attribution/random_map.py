"""A random attribution: the floor every attribution-quality metric must beat."""

from __future__ import annotations

from typing import ClassVar

import torch

from uattr.attribution.base import Attribution, TargetFn

__all__ = ["RandomMap"]


class RandomMap(Attribution):
    """Uniform random maps [B, H, W], seeded and independent of the model and of the pixels.

    The map at batch position b depends only on (``seed``, b, the batch shape), so two calls on
    batches of one shape agree; the same image at another position gets another map (callbacks
    that need a map per dataset index seed per index instead). Any target is accepted (and
    checked) and ignored. Used as the "random map" row of the blurring, localisation and
    degradation tables.
    """

    label: ClassVar[str] = "Random map"
    class_dependent: ClassVar[bool] = False
    accepts_callable: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = seed

    def attribute(self, x: torch.Tensor, target: str | torch.Tensor | TargetFn) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(x.shape[0], *x.shape[2:], generator=generator).to(x.device)
