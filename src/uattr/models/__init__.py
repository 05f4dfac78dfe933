"""Plain ``nn.Module`` backbones. Images in [0, 1]; normalisation happens inside each model."""

from uattr.models.lenet import LeNet5
from uattr.models.mlp import MLP
from uattr.models.normalize import Normalize
from uattr.models.resnet import CifarResNet18

__all__ = ["CifarResNet18", "LeNet5", "MLP", "Normalize"]
