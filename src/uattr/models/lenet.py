"""LeNet-5 with dropout, for 28x28 (MNIST-like) or 32x32 (CIFAR-like) images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from uattr.models.normalize import Normalize


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU, max-pooling and dropout before each hidden FC layer.

    conv1 (5x5, pad 2) -> ReLU -> pool -> conv2 (5x5) -> ReLU -> pool -> [dropout] -> fc1 -> ReLU ->
    [dropout] -> fc2 -> ReLU -> [dropout] -> fc3. ReLUs are not in-place so forward hooks on biased
    layers see their true outputs (FullGrad, UA-Backprop).

    Args:
        num_classes: K, the number of logits.
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        input_size: image height = width in pixels (28 or 32; any size >= 16 works).
        dropout: drop probability of every ``nn.Dropout`` (the MC-dropout posterior uses them).
        mean, std: per-channel normalisation applied inside the model (defaults: MNIST statistics).

    Shapes: ``x`` [B, in_channels, input_size, input_size] in [0, 1] -> logits [B, num_classes].
    """

    #: the last convolutional block: the default layer of Grad-CAM-style methods
    cam_layer = "conv2"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        dropout: float = 0.25,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if input_size < 16:
            raise ValueError(
                f"LeNet5 needs images of at least 16x16 pixels, got input_size={input_size}."
            )
        mean = mean if mean is not None else [0.1307] * in_channels
        std = std if std is not None else [0.3081] * in_channels
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((input_size // 2) - 4) // 2
        self.flatten = nn.Flatten()
        self.drop0 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.drop0(self.flatten(x))
        x = self.drop1(self.relu3(self.fc1(x)))
        x = self.drop2(self.relu4(self.fc2(x)))
        return self.fc3(x)
