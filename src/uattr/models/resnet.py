"""CIFAR-style ResNet-18 (3x3 stem, no max-pool) with dropout before the classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet18

from uattr.models.normalize import Normalize

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) adapted to 32x32 images, built from torchvision's blocks.

    Changes to torchvision's ImageNet model: the 7x7/stride-2 stem and its max-pool become a
    3x3/stride-1 conv (the usual CIFAR variant), a ``nn.Dropout`` sits before ``fc`` (the MC-dropout
    posterior), and every ReLU is made non-in-place so forward hooks on conv/BN layers see their
    true outputs (FullGrad, UA-Backprop). Submodule names follow torchvision (``layer4`` is the
    usual Grad-CAM layer).

    Args:
        num_classes: K, the number of logits.
        in_channels: image channels.
        dropout: drop probability before ``fc``.
        mean, std: per-channel normalisation inside the model (defaults: CIFAR-10 statistics).

    Shapes: ``x`` [B, in_channels, H, W] in [0, 1] -> logits [B, num_classes].
    """

    #: the last convolutional block: the default layer of Grad-CAM-style methods
    cam_layer = "layer4"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = Normalize(
            mean if mean is not None else CIFAR10_MEAN[:in_channels],
            std if std is not None else CIFAR10_STD[:in_channels],
        )
        base = resnet18(weights=None, num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = base.bn1
        self.relu = nn.ReLU()
        self.layer1, self.layer2 = base.layer1, base.layer2
        self.layer3, self.layer4 = base.layer3, base.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = base.fc
        for module in self.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))
