"""Per-channel input normalisation as an affine layer with an explicit bias."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``y = (x - mean) / std`` per channel, written as ``y = weight * x + bias``.

    Models normalise inside ``forward`` so that images stay in [0, 1] pixels (``x * grad`` and
    blurring then act on pixels). The layer stores ``weight = 1 / std`` and ``bias = -mean / std``
    as buffers [C]: the bias is an implicit bias of the network, and full-gradient methods
    (FullGrad, UA-Backprop) must count it, like a BatchNorm's folded bias, for completeness.

    Shapes: ``x`` [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive in every channel, got {list(std)}.")
        std_t = torch.tensor(list(std), dtype=torch.float32)
        self.register_buffer("weight", 1.0 / std_t)
        self.register_buffer("bias", -torch.tensor(list(mean), dtype=torch.float32) / std_t)

    @property
    def num_channels(self) -> int:
        return self.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"expected images [B, {self.num_channels}, H, W] with values in [0, 1], "
                f"got shape {tuple(x.shape)}. Check the data module's channel count."
            )
        return x * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        mean = (-self.bias / self.weight).tolist()
        std = (1.0 / self.weight).tolist()
        return f"mean={[round(m, 4) for m in mean]}, std={[round(s, 4) for s in std]}"
