"""A random attribution: the floor every attribution-quality metric must beat."""

from __future__ import annotations

import torch

from uattr.attribution.base import Attribution, Target


class RandomMap(Attribution):
    """Uniform random maps [B, H, W], seeded and independent of the model and of the pixels.

    The map at batch position b depends only on (``seed``, b, the batch shape), so two calls on
    batches of one shape agree; the same image at another position gets another map (callbacks
    that need a map per dataset index seed per index instead). Used as the "random map" row of the
    blurring, localisation and degradation tables.
    """

    def __init__(self, model: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = seed

    def attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(x.shape[0], *x.shape[2:], generator=generator).to(x.device)
