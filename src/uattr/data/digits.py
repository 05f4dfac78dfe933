"""Digits: scikit-learn's 1,797 8x8 handwritten digits (works offline, nothing to download)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from uattr.data.base import ImageDataModule, ImageTensorDataset
from uattr.data.perturbations import Perturbation
from uattr.data.splits import stratified_split

__all__ = ["Digits"]


class Digits(ImageDataModule):
    """scikit-learn's 8x8 digits (``load_digits``: 1,797 images, values 0..16), scaled to [0, 1].

    Images are optionally resized with bilinear interpolation (``align_corners=False``, no
    antialiasing) to ``resize_to x resize_to``; the default 28 lets MNIST-sized models run on them.

    ``image_size`` is a class attribute defaulting to 28 (the default ``resize_to``), readable
    before construction, AND an instance attribute set in ``__init__`` to ``resize_to`` (or 8 when
    ``resize_to`` is None). Code linking it into a model must read it from the instance when
    ``resize_to`` is not the default.

    The split is stratified per class: class ``c`` with ``n_c`` images gives ``round(f * n_c)`` to
    val and test and the rest to train (all of it when the fractions sum to 1, else at most
    ``round(f_train * n_c)``); it is fixed by ``split_seed`` alone.

    Args:
        split: ``(train, val, test)`` fractions, non-negative, summing to at most 1.
        resize_to: output side in pixels, or None to keep 8x8.
        split_seed: seed of the split.
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the train-loader shuffling.
        perturbation: applied to val and test images (see :mod:`uattr.data.perturbations`).
        pin_memory: pin batches in page-locked memory.
    """

    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(
        self,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        resize_to: int | None = 28,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        perturbation: Perturbation | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, perturbation, pin_memory)
        split = tuple(float(f) for f in split)
        if len(split) != 3 or split[0] <= 0 or min(split) < 0 or sum(split) > 1 + 1e-9:
            raise ValueError(
                "Digits split must be three fractions (train > 0, val >= 0, test >= 0) summing to "
                f"at most 1, got {split}; e.g. (0.8, 0.1, 0.1)."
            )
        if resize_to is not None and resize_to < 1:
            raise ValueError(f"resize_to must be a positive int or None, got {resize_to}.")
        self.split = split
        self.resize_to = resize_to
        self.split_seed = split_seed
        self.image_size = 8 if resize_to is None else resize_to

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().div_(16).unsqueeze(1)
        if self.resize_to is not None and self.resize_to != 8:
            size = (self.resize_to, self.resize_to)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            # Bilinear weights are convex, so values stay in [0, 1] up to rounding.
            images = images.clamp_(0.0, 1.0)
        labels = torch.from_numpy(bunch.target).long()
        parts = stratified_split(labels, self.split, self.num_classes, self.split_seed)
        train, val, test = (ImageTensorDataset(images[idx], labels[idx]) for idx in parts)
        return train, val, test
