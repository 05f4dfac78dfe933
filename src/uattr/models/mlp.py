"""A small multi-layer perceptron on flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from uattr.models.normalize import Normalize


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear.

    Args:
        num_classes: K, the number of logits.
        in_channels, input_size: image shape [in_channels, input_size, input_size].
        hidden: widths of the hidden layers.
        dropout: drop probability after each hidden layer.
        mean, std: per-channel normalisation inside the model (defaults: MNIST statistics).

    Shapes: ``x`` [B, in_channels, input_size, input_size] in [0, 1] -> logits [B, num_classes].
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.25,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = Normalize(
            mean if mean is not None else [0.1307] * in_channels,
            std if std is not None else [0.3081] * in_channels,
        )
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(x))
